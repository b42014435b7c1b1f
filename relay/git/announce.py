"""Kind 30617 repo announcements: reserve the name, establish the pointer, store the event.

Only an announcement that asks us to host it provisions anything: its `clone` tag lists
this relay's git URL of the repository (`grasp.lists_this_relay`), or the operator set
RELAY_GIT_PROVISION=any. Any other valid announcement is a plain NIP-34 event (a repository
hosted elsewhere), and so is one by a member of the holder's maintainer set (a
co-maintainer announcing the same repository): stored, reserving nothing.

For one that provisions, the event and its side effects succeed or fail together. A fresh
claim (`Reserved`) seeds the shared empty manifest strictly and publishes the initial
relay-signed 30618; a re-announcement by the owner (`AlreadyOwned`) leaves an existing
pointer untouched and publishes nothing. Only the attempt that reserved a name may release
it, and it does so whenever it does not end with the announcement stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial

from coincurve import PrivateKey

from relay.events import kinds
from relay.events.ingest import ANSWERS
from relay.events.model import Event, next_created_at
from relay.events.side_effects import Compensation, Handled, Verdict
from relay.git import grasp, model
from relay.git.maintainers import Repos
from relay.git.objectstore import GitObjects, StoreError, Won
from relay.git.refstate import build_ref_state
from relay.git.registry import (
    AlreadyOwned,
    QuotaExceeded,
    RepoRegistry,
    Reserved,
    TakenByOther,
    new_attempt,
    release_in,
)
from relay.keys import pubkey_hex
from relay.store.db import Connection
from relay.store.events import Coordinate, EventStore, Saved

log = logging.getLogger(__name__)

SEED_FAILED = Verdict(False, "error: the repository storage could not be prepared, try again")
PROVISION_LISTED = "listed"
PROVISION_ANY = "any"
PROVISION_MODES = (PROVISION_LISTED, PROVISION_ANY)
HostsOf = Callable[[int], Awaitable[frozenset[str]]]


class SeedError(Exception):
    """The pointer could not be established; the announcement fails."""


async def seed_pointer(objects: GitObjects, key: str) -> str:
    """For a fresh claim: create the pointer on the shared empty manifest; the manifest
    digest it names. A pointer that is already there is never overwritten: its key holds
    the owner and the repo id, so it is this owner's, left by a deletion whose pointer
    removal failed, and it is adopted as it is (the repository comes back as it was)."""
    empty = await objects.put_manifest(model.EMPTY_MANIFEST)
    if isinstance(await objects.cas_pointer(key, empty, None), Won):
        return empty
    current = await objects.read_pointer(key)
    if current is None:
        raise SeedError(f"{key} lost its create race and then vanished")
    if current[1] != empty:
        log.info("%s: adopting the pointer a deletion left behind", key)
    return current[1]


async def drop_empty_pointer(objects: GitObjects, key: str) -> None:
    """Remove a pointer that still names the shared empty manifest (nothing was pushed)."""
    current = await objects.read_pointer(key)
    if current is not None and current[1] == model.EMPTY_MANIFEST.digest:
        await objects.store.delete(key)


async def name_held(conn: Connection, community_id: int, *, repo_id: str, owner: str) -> bool:
    """Inside the storing transaction: the owner still holds the name (and keeps it until
    the transaction ends), so an announcement is never stored without its registry row."""
    holder = await conn.fetchval(
        "SELECT owner_pubkey FROM git_repo_names WHERE community_id = $1 AND repo_id = $2"
        " FOR SHARE",
        community_id,
        repo_id,
    )
    return bool(holder == owner)


async def ensure_pointer(objects: GitObjects, key: str) -> None:
    """Tolerant: an existing pointer, empty or not, is left alone; a missing one is seeded."""
    if await objects.read_pointer(key) is None:
        await seed_pointer(objects, key)


def announced_repo_id(event: Event) -> str:
    """The repo id of an announcement: its first `d` tag, which must be a valid repo id."""
    d = event.first_tag_value("d")
    if d is None:
        raise model.InvalidName("a repo announcement needs a d tag with the repo id")
    if model.normalize_repo_id(d) != d:
        raise model.InvalidName("the repo id in the d tag must not end in .git")
    return d


class Announcements:
    """The side effect of kind 30617, and the clean-up when an announcement is deleted."""

    def __init__(
        self,
        store: EventStore,
        registry: RepoRegistry,
        objects: GitObjects,
        relay_key: PrivateKey,
        *,
        hosts_of: HostsOf,
        provision: str = PROVISION_LISTED,
        compensation_seconds: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.registry = registry
        self.repos = Repos(store, registry)
        self.hosts_of = hosts_of
        self.provision = provision
        self.objects = objects
        self.relay_key = relay_key
        self.relay_pubkey = pubkey_hex(relay_key)
        self.compensation_seconds = compensation_seconds
        self.clock = clock

    @staticmethod
    def check(event: Event) -> str | None:
        try:
            announced_repo_id(event)
        except model.InvalidName as exc:
            return f"invalid: {exc}"
        return None

    async def __call__(self, community_id: int, event: Event, raw: str) -> Handled:
        repo_id = announced_repo_id(event)
        if not await self._asks_us(community_id, event, repo_id):
            return await self._store_plain(community_id, event, raw)
        return await self._provision(community_id, event, raw, repo_id)

    async def _asks_us(self, community_id: int, event: Event, repo_id: str) -> bool:
        if self.provision == PROVISION_ANY:
            return True
        return grasp.lists_this_relay(event, await self.hosts_of(community_id), repo_id)

    async def _store_plain(self, community_id: int, event: Event, raw: str) -> Handled:
        result = await self.store.save(community_id, event, raw)
        stored = result.outcome is Saved.STORED
        return Handled(ANSWERS[result.outcome], ((event, raw),) if stored else ())

    async def _co_maintains(self, community_id: int, repo_id: str, pubkey: str) -> bool:
        """Whether `pubkey` is in the maintainer set of the repository held under `repo_id`."""
        repo = await self.repos.hosted(community_id, repo_id)
        return repo is not None and pubkey in repo.maintainers

    async def _provision(self, community_id: int, event: Event, raw: str, repo_id: str) -> Handled:
        owner = event.pubkey
        attempt = new_attempt()
        key = model.pointer_key(community_id, owner, repo_id)
        seeded = False

        async def undo_claim() -> None:
            """Release this attempt's claim and, if that happened, the pointer it seeded."""
            released = await self.registry.release_attempt(community_id, repo_id, owner, attempt)
            if released and seeded:
                await drop_empty_pointer(self.objects, key)

        async with Compensation(self.compensation_seconds) as undo:
            # Registered before the claim is tried: cancelled with the claim made but its
            # answer not yet seen, the undo still finds and releases exactly this claim.
            undo.push("release repo name", undo_claim)
            reservation = await self.registry.reserve(community_id, repo_id, owner, attempt)
            if isinstance(reservation, TakenByOther):
                if await self._co_maintains(community_id, repo_id, owner):
                    return await self._store_plain(community_id, event, raw)
                return Handled(Verdict(False, f"blocked: repo name {repo_id} is taken"))
            if isinstance(reservation, QuotaExceeded):
                return Handled(
                    Verdict(False, f"blocked: limit of {reservation.limit} repos per pubkey")
                )
            fresh = isinstance(reservation, Reserved)
            manifest = model.EMPTY_MANIFEST
            try:
                if fresh:
                    seeded = True
                    digest = await seed_pointer(self.objects, key)
                    if digest != model.EMPTY_MANIFEST.digest:
                        manifest = await self.objects.get_manifest(digest)
                else:
                    await ensure_pointer(self.objects, key)
            except (SeedError, StoreError) as exc:
                log.error("announcement of %s/%s failed: %s", owner, repo_id, exc)
                return Handled(SEED_FAILED)
            batch = [(event, raw)]
            if fresh:
                state = await self._initial_ref_state(community_id, repo_id, owner, manifest)
                batch.append((state, state.to_json()))
            results = await self.store.save_together(
                community_id, batch, precondition=partial(name_held, repo_id=repo_id, owner=owner)
            )
            outcome = results[0].outcome
            if outcome not in (Saved.STORED, Saved.DUPLICATE):
                return Handled(ANSWERS[outcome])
            undo.commit()
        assert isinstance(reservation, Reserved | AlreadyOwned)
        if fresh:
            log.info("repo created: %s/%s in community %d", owner, repo_id, community_id)
        stored = [
            item
            for item, result in zip(batch, results, strict=True)
            if result.outcome is Saved.STORED
        ]
        return Handled(ANSWERS[outcome], tuple(stored))

    async def _initial_ref_state(
        self, community_id: int, repo_id: str, owner: str, manifest: model.Manifest
    ) -> Event:
        previous = await self.store.latest_created_at(
            community_id, self.relay_pubkey, kinds.REPO_STATE, repo_id
        )
        created_at = next_created_at(self.clock(), previous)
        return build_ref_state(
            self.relay_key,
            repo_id=repo_id,
            head=manifest.head,
            refs=manifest.refs,
            actor=owner,
            created_at=created_at,
        )

    # -- deletion of an announcement ------------------------------------------------------

    async def removed_in_transaction(
        self, conn: Connection, community_id: int, removed: tuple[Coordinate, ...]
    ) -> None:
        """Release the name and delete the relay's 30618, atomically with the deletion. Only
        the owner's announcement holds the name: a co-maintainer's, or one of a repository
        hosted elsewhere, releases nothing and leaves the repository's state alone."""
        for coordinate in removed:
            if coordinate.kind != kinds.REPO_ANNOUNCEMENT:
                continue
            if not await release_in(conn, community_id, coordinate.d, coordinate.pubkey):
                continue
            await conn.execute(
                "DELETE FROM events WHERE community_id = $1 AND pubkey = $2 AND kind = $3"
                " AND coordinate_d = $4",
                community_id,
                bytes.fromhex(self.relay_pubkey),
                kinds.REPO_STATE,
                coordinate.d,
            )

    async def removed_after_commit(
        self, community_id: int, removed: tuple[Coordinate, ...]
    ) -> None:
        """Drop the pointer of each deleted repo; objects stay for a later collection."""
        for coordinate in removed:
            if coordinate.kind != kinds.REPO_ANNOUNCEMENT:
                continue
            try:
                key = model.pointer_key(community_id, coordinate.pubkey, coordinate.d)
                if await self.objects.read_pointer(key) is None:
                    continue  # a co-maintainer's, or a repository hosted elsewhere
                await self.objects.store.delete(key)
                log.info(
                    "repo deleted: %s/%s in community %d",
                    coordinate.pubkey, coordinate.d, community_id,
                )  # fmt: skip
            except (model.InvalidName, StoreError) as exc:
                log.error("removing the pointer of deleted repo %s failed: %s", coordinate, exc)
