"""The relay-signed 30618 of each hosted repository converges to what its pointer holds.

The pointer CAS is a push's commit point; the 30618 is a notification written after it,
and that write can fail, lose a race, or never happen (a pod killed right after the CAS).
So the state is never emitted from what a push believes but from the pointer as it is now,
and again until the newest stored state and the pointer agree: two pods emitting at once
(same second, so the same created_at, a tie the lower id wins) end with the newer state,
since the loser reads the pointer back and emits again one second later. A reconciler
(at start-up and every RELAY_GIT_RECONCILE_SECONDS, on any pod) does the same for every
hosted repository, so a state that a fault left behind catches up without a new push.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import orjson
import trio
from coincurve import PrivateKey

from relay.events import kinds
from relay.events.model import Event, next_created_at, parse_event
from relay.git import model
from relay.git.objectstore import GitObjects, StoreError
from relay.git.refstate import build_ref_state, states_agree
from relay.git.registry import RepoRegistry
from relay.keys import pubkey_hex
from relay.protocol.filters import Filter
from relay.store.db import DatabaseError
from relay.store.events import EventStore, Saved

log = logging.getLogger(__name__)

# Rounds of emit-and-check one convergence may take before it leaves the rest to the
# reconciler (each round is one more writer having raced it).
MAX_ROUNDS = 5
Publish = Callable[[int, Event, str], None]
# What a convergence can fail with: it is retried later, never raised past the caller.
CONVERGE_ERRORS: tuple[type[Exception], ...] = (DatabaseError, StoreError, model.InvalidName)


class RefStates:
    def __init__(
        self,
        store: EventStore,
        objects: GitObjects,
        key: PrivateKey,
        publish: Publish,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.objects = objects
        self.key = key
        self.pubkey = pubkey_hex(key)
        self.publish = publish
        self.clock = clock
        # One convergence a repository at a time on this pod (other pods race by the loop).
        self._locks: dict[tuple[int, str, str], trio.Lock] = {}
        self.emitted = 0

    @property
    def busy(self) -> bool:
        """Whether a convergence is running on this pod."""
        return bool(self._locks)

    async def converge(self, community_id: int, owner: str, repo_id: str, actor: str) -> bool:
        """Make the newest relay-signed 30618 say what the pointer holds now; False if the
        repository has no pointer, or other writers kept it moving for MAX_ROUNDS."""
        name = (community_id, owner, repo_id)
        lock = self._locks.setdefault(name, trio.Lock())
        try:
            async with lock:
                return await self._converge(community_id, owner, repo_id, actor)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._locks.pop(name, None)

    async def _converge(self, community_id: int, owner: str, repo_id: str, actor: str) -> bool:
        key = model.pointer_key(community_id, owner, repo_id)
        for _ in range(MAX_ROUNDS):
            pointer = await self.objects.read_pointer(key)
            if pointer is None:
                return False
            manifest = await self.objects.get_manifest(pointer[1])
            newest = await self.newest(community_id, repo_id)
            if newest is not None and states_agree(newest, repo_id, manifest):
                return True
            created_at = next_created_at(self.clock(), newest.created_at if newest else None)
            state = build_ref_state(
                self.key, repo_id=repo_id, head=manifest.head, refs=manifest.refs,
                actor=actor, created_at=created_at,
            )  # fmt: skip
            raw = state.to_json()
            result = await self.store.save(community_id, state, raw)
            if result.outcome is Saved.STORED:
                self.emitted += 1
                self.publish(community_id, state, raw)
        log.warning("the ref state of %s/%s kept moving; the reconciler takes it", owner, repo_id)
        return False

    async def newest(self, community_id: int, repo_id: str) -> Event | None:
        found = await self.store.query(
            community_id,
            (
                Filter(
                    authors=frozenset({self.pubkey}),
                    kinds=frozenset({kinds.REPO_STATE}),
                    tags=(("d", frozenset({repo_id})),),
                    limit=1,
                ),
            ),
            int(self.clock()),
        )
        return parse_event(orjson.loads(found[0][1])) if found else None

    async def reconcile(self, registry: RepoRegistry) -> int:
        """Converge every hosted repository; how many could not be (they are retried on
        the next pass). Faults are logged, never raised: one repository stops no other."""
        failed = 0
        for community_id, repo_id, owner in await registry.all_names():
            try:
                if not await self.converge(community_id, owner, repo_id, owner):
                    failed += 1
            except CONVERGE_ERRORS as exc:
                failed += 1
                log.warning("reconciling the ref state of %s/%s failed: %s", owner, repo_id, exc)
        return failed


async def reconcile_forever(states: RefStates, registry: RepoRegistry, seconds: float) -> None:
    """At start-up, then every `seconds`."""
    while True:
        failed = await states.reconcile(registry)
        if failed:
            log.warning("%d repositories' ref state could not be reconciled this pass", failed)
        await trio.sleep(seconds)
