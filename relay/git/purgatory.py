"""GRASP purgatory: events accepted now and served once the git data they describe arrives.

A maintainer's kind 30618 whose branches and tags the hosted repository does not hold yet,
and a pull request (1618) or PR update (1619) whose tip is not at `refs/nostr/<its id>`,
are answered `OK true` with PURGATORY_MESSAGE and kept in Postgres (`git_purgatory`), not
in `events`: no REQ sees them. The push that makes them true releases them (stored, then
fanned out to every pod) on whichever pod it lands; the reconciler releases any a failed
release left behind, and removes what waited longer than RELAY_GIT_PURGATORY_SECONDS.
Being in Postgres, purgatory is shared by every pod and survives restarts.

The same window bounds pull-request refs pushed ahead of their event: a `refs/nostr/<id>`
whose PR event has not arrived by then is removed from the repository (`git_pr_refs`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import trio

from relay.events import kinds
from relay.events.ingest import ANSWERS
from relay.events.model import Event, parse_event
from relay.events.side_effects import Handled, Verdict
from relay.git import grasp, model
from relay.git.maintainers import HostedRepo, Repos
from relay.git.objectstore import GitObjects, StoreError, Won
from relay.protocol.filters import Filter
from relay.store.db import Connection, Database, DatabaseError
from relay.store.events import EventStore, Saved

log = logging.getLogger(__name__)

DEFAULT_PURGATORY_SECONDS = 30 * 60
# How often each pod releases what a push left waiting and drops what waited too long (or
# as often as the purgatory window, when that is shorter).
SWEEP_SECONDS = 30.0
Publish = Callable[[int, Event, str], None]
WAITING = Verdict(True, grasp.PURGATORY_MESSAGE)


@dataclass(frozen=True, slots=True)
class Held:
    event: Event
    raw: str


def _held(rows: list[Any]) -> list[Held]:
    return [Held(parse_event(orjson.loads(row["raw"])), row["raw"]) for row in rows]


class Purgatory:
    """The `git_purgatory` table."""

    def __init__(self, db: Database, seconds: float = DEFAULT_PURGATORY_SECONDS) -> None:
        self.db = db
        self.seconds = seconds

    async def hold(self, community_id: int, repo: HostedRepo, event: Event, raw: str) -> None:
        async def insert(conn: Connection) -> None:
            await conn.execute(
                "INSERT INTO git_purgatory (community_id, event_id, owner_pubkey, repo_id, kind,"
                " author, created_at, raw, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8,"
                " now() + make_interval(secs => $9)) ON CONFLICT DO NOTHING",
                community_id, event.id, repo.owner, repo.repo_id, event.kind, event.pubkey,
                event.created_at, raw, float(self.seconds),
            )  # fmt: skip

        await self.db.run(insert)

    async def waiting(self, community_id: int, repo_id: str, kind: int | None = None) -> list[Held]:
        """Unexpired events waiting for the repository (of one kind, if given)."""

        async def fetch(conn: Connection) -> list[Any]:
            rows = await conn.fetch(
                "SELECT raw FROM git_purgatory WHERE community_id = $1 AND repo_id = $2"
                " AND ($3::integer IS NULL OR kind = $3) AND expires_at > now()"
                " ORDER BY created_at, event_id",
                community_id, repo_id, kind,
            )  # fmt: skip
            return list(rows)

        return _held(await self.db.run(fetch))

    async def by_ids(self, community_id: int, event_ids: list[str]) -> list[Held]:
        async def fetch(conn: Connection) -> list[Any]:
            rows = await conn.fetch(
                "SELECT raw FROM git_purgatory WHERE community_id = $1"
                " AND event_id = ANY($2::text[]) AND expires_at > now()",
                community_id, event_ids,
            )  # fmt: skip
            return list(rows)

        return _held(await self.db.run(fetch)) if event_ids else []

    async def remove(self, community_id: int, event_ids: list[str]) -> None:
        async def delete(conn: Connection) -> None:
            await conn.execute(
                "DELETE FROM git_purgatory WHERE community_id = $1 AND event_id = ANY($2::text[])",
                community_id, event_ids,
            )  # fmt: skip

        if event_ids:
            await self.db.run(delete)

    async def repos_waiting(self) -> list[tuple[int, str]]:
        """(community, repo id) of every repository with unexpired events waiting."""

        async def fetch(conn: Connection) -> list[Any]:
            return list(
                await conn.fetch(
                    "SELECT DISTINCT community_id, repo_id FROM git_purgatory"
                    " WHERE expires_at > now()"
                )
            )

        return [(row["community_id"], row["repo_id"]) for row in await self.db.run(fetch)]

    async def track_pr_refs(
        self, community_id: int, repo: HostedRepo, event_ids: list[str]
    ) -> None:
        """PR refs just pushed with no PR event known yet: removed unless one arrives."""

        async def insert(conn: Connection) -> None:
            await conn.executemany(
                "INSERT INTO git_pr_refs (community_id, repo_id, event_id, owner_pubkey)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                [(community_id, repo.repo_id, i, repo.owner) for i in event_ids],
            )

        if event_ids:
            await self.db.run(insert)

    async def overdue_pr_refs(self) -> list[tuple[int, str, str, str]]:
        """(community, owner, repo id, event id) of PR refs older than the window."""

        async def fetch(conn: Connection) -> list[Any]:
            rows = await conn.fetch(
                "SELECT community_id, owner_pubkey, repo_id, event_id FROM git_pr_refs"
                " WHERE pushed_at <= now() - make_interval(secs => $1)"
                " ORDER BY community_id, repo_id LIMIT 1000",
                float(self.seconds),
            )
            return list(rows)

        return [
            (r["community_id"], r["owner_pubkey"], r["repo_id"], r["event_id"])
            for r in await self.db.run(fetch)
        ]

    async def forget_pr_refs(self, community_id: int, repo_id: str, event_ids: list[str]) -> None:
        async def delete(conn: Connection) -> None:
            await conn.execute(
                "DELETE FROM git_pr_refs WHERE community_id = $1 AND repo_id = $2"
                " AND event_id = ANY($3::text[])",
                community_id, repo_id, event_ids,
            )  # fmt: skip

        await self.db.run(delete)

    async def expire(self) -> int:
        """Drop what waited too long; how many went."""

        async def delete(conn: Connection) -> int:
            rows = await conn.fetch(
                "DELETE FROM git_purgatory WHERE expires_at <= now() RETURNING 1"
            )
            return len(rows)

        return await self.db.run(delete)


def satisfied(held: Held, repo: HostedRepo, refs: dict[str, str]) -> bool:
    """Whether the repository's refs now hold what a waiting event describes."""
    event = held.event
    if event.kind == kinds.REPO_STATE:
        return event.pubkey in repo.maintainers and grasp.state_claim(event).matches(refs)
    pr = grasp.pull_request(event)
    return pr is not None and refs.get(grasp.pr_ref(event.id)) == pr.tip


class GraspEvents:
    """The side effect of a user's kind 30618 and of kinds 1618/1619: store it, or hold it
    in purgatory while the hosted repository lacks the git data it describes; and release
    held events once a push brought that data."""

    def __init__(
        self,
        store: EventStore,
        repos: Repos,
        objects: GitObjects,
        purgatory: Purgatory,
        publish: Publish,
        relay_pubkey: str,
    ) -> None:
        self.store = store
        self.repos = repos
        self.objects = objects
        self.purgatory = purgatory
        self.publish = publish
        self.relay_pubkey = relay_pubkey

    async def __call__(self, community_id: int, event: Event, raw: str) -> Handled:
        repo = await self._waits_for(community_id, event)
        if repo is not None:
            await self.purgatory.hold(community_id, repo, event, raw)
            return Handled(WAITING)
        result = await self.store.save(community_id, event, raw)
        stored = result.outcome is Saved.STORED
        return Handled(ANSWERS[result.outcome], ((event, raw),) if stored else ())

    async def _waits_for(self, community_id: int, event: Event) -> HostedRepo | None:
        """The hosted repository whose git data `event` waits for; None to store it now."""
        if event.kind == kinds.REPO_STATE:
            if event.pubkey == self.relay_pubkey:
                return None
            repo = await self.repos.hosted(community_id, event.first_tag_value("d") or "")
            if repo is None or event.pubkey not in repo.maintainers:
                return None
        else:
            pr = grasp.pull_request(event)
            if pr is None:
                return None
            repo = await self._pr_repo(community_id, pr)
            if repo is None:
                return None
        refs = await self.current_refs(community_id, repo)
        return None if satisfied(Held(event, ""), repo, refs) else repo

    async def _pr_repo(self, community_id: int, pr: grasp.PullRequest) -> HostedRepo | None:
        for owner, repo_id in pr.repos:
            repo = await self.repos.hosted(community_id, repo_id)
            if repo is not None and owner in repo.maintainers:
                return repo
        return None

    async def current_refs(self, community_id: int, repo: HostedRepo) -> dict[str, str]:
        pointer = await self.objects.read_pointer(
            model.pointer_key(community_id, repo.owner, repo.repo_id)
        )
        if pointer is None:
            return {}
        return (await self.objects.get_manifest(pointer[1])).refs

    async def release(self, community_id: int, repo: HostedRepo, refs: dict[str, str]) -> int:
        """Store and fan out every waiting event of the repository that `refs` satisfy;
        how many were released."""
        ready = [
            held
            for held in await self.purgatory.waiting(community_id, repo.repo_id)
            if satisfied(held, repo, refs)
        ]
        for held in ready:
            result = await self.store.save(community_id, held.event, held.raw)
            if result.outcome is Saved.STORED:
                self.publish(community_id, held.event, held.raw)
        await self.purgatory.remove(community_id, [held.event.id for held in ready])
        if ready:
            log.info(
                "released %d events of %s/%s from purgatory", len(ready), repo.owner, repo.repo_id
            )
        return len(ready)

    async def track(
        self, community_id: int, repo: HostedRepo, created: list[str], known: dict[str, str]
    ) -> None:
        """Note the PR refs a push created (`created`) for which no PR event is known."""
        new = [
            event_id
            for ref in created
            if (event_id := grasp.pr_event_id(ref)) is not None and event_id not in known
        ]
        await self.purgatory.track_pr_refs(community_id, repo, new)

    async def drop_orphan_pr_refs(self) -> int:
        """Remove from their repositories the PR refs whose event did not arrive within the
        window (one pointer CAS per repository; a lost race waits for the next sweep); how
        many refs went."""
        overdue: dict[tuple[int, str, str], list[str]] = {}
        for community_id, owner, repo_id, event_id in await self.purgatory.overdue_pr_refs():
            overdue.setdefault((community_id, owner, repo_id), []).append(event_id)
        removed = 0
        for (community_id, owner, repo_id), event_ids in overdue.items():
            confirmed = await self.pull_request_tips(community_id, event_ids)
            orphans = [grasp.pr_ref(i) for i in event_ids if i not in confirmed]
            if orphans and not await self._remove_refs(community_id, owner, repo_id, orphans):
                continue
            removed += len(orphans)
            await self.purgatory.forget_pr_refs(community_id, repo_id, event_ids)
        return removed

    async def _remove_refs(
        self, community_id: int, owner: str, repo_id: str, refs: list[str]
    ) -> bool:
        """Drop `refs` from the repository's manifest by a pointer CAS; False on a lost race."""
        key = model.pointer_key(community_id, owner, repo_id)
        pointer = await self.objects.read_pointer(key)
        if pointer is None:
            return True
        token, digest = pointer
        manifest = await self.objects.get_manifest(digest)
        kept = {name: oid for name, oid in manifest.refs.items() if name not in refs}
        if kept == manifest.refs:
            return True
        trimmed = model.Manifest(manifest.head, kept, manifest.packs, parent=digest)
        new_digest = await self.objects.put_manifest(trimmed)
        won = isinstance(await self.objects.cas_pointer(key, new_digest, token), Won)
        if won:
            log.info("removed %d PR refs with no event from %s/%s", len(refs), owner, repo_id)
        return won

    async def sweep(self) -> int:
        """Release what a push left waiting (its release failed, or it raced the event),
        then expire the rest, and drop PR refs whose event never came; how many events
        were released."""
        released = 0
        for community_id, repo_id in await self.purgatory.repos_waiting():
            repo = await self.repos.hosted(community_id, repo_id)
            if repo is not None:
                refs = await self.current_refs(community_id, repo)
                released += await self.release(community_id, repo, refs)
        expired = await self.purgatory.expire()
        if expired:
            log.info("%d events waited in purgatory too long and were dropped", expired)
        await self.drop_orphan_pr_refs()
        return released

    async def newest_state(self, community_id: int, repo: HostedRepo) -> grasp.StateClaim | None:
        """The newest kind 30618 of the repository signed by one of its maintainers, stored
        or waiting in purgatory: the state a push without NIP-98 must match."""
        flt = Filter(
            authors=repo.maintainers,
            kinds=frozenset({kinds.REPO_STATE}),
            tags=(("d", frozenset({repo.repo_id})),),
        )
        rows = await self.store.query(community_id, (flt,), int(time.time()))
        events = [parse_event(orjson.loads(raw)) for _, raw in rows]
        events += [
            held.event
            for held in await self.purgatory.waiting(community_id, repo.repo_id, kinds.REPO_STATE)
            if held.event.pubkey in repo.maintainers
        ]
        return grasp.newest([grasp.state_claim(e) for e in events])

    async def pull_request_tips(self, community_id: int, event_ids: list[str]) -> dict[str, str]:
        """Event id to tip of the PR events (stored or waiting) among `event_ids`."""
        if not event_ids:
            return {}
        flt = Filter(ids=frozenset(event_ids), kinds=grasp.PR_KINDS)
        rows = await self.store.query(community_id, (flt,), int(time.time()))
        events = [parse_event(orjson.loads(raw)) for _, raw in rows]
        events += [held.event for held in await self.purgatory.by_ids(community_id, event_ids)]
        tips = {}
        for event in events:
            pr = grasp.pull_request(event)
            if pr is not None:
                tips[event.id] = pr.tip
        return tips


async def sweep_forever(events: GraspEvents, seconds: float = SWEEP_SECONDS) -> None:
    """Every `seconds`; a failed sweep is logged and tried again next time."""
    while True:
        await trio.sleep(seconds)
        try:
            await events.sweep()
        except (DatabaseError, StoreError, model.InvalidManifest) as exc:
            log.warning("sweeping purgatory failed: %s", exc)
