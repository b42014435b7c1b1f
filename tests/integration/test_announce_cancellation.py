"""Invariant 3: an announcement cancelled or failing at any await point ends consistent.

A fault-injecting wrapper (the one fake here: real Postgres and a real filesystem store
cannot be told to fail or be cancelled at an exact step) counts every awaited call the
announcement handler makes into the registry, the event store and the object store. Run N
cancels the handler's scope just before, or just after, call number N (as a client
disconnect or shutdown would), raises a backend error there, or hangs there until the
ingest deadline passes on a trio mock clock. Each time, the registry, the pointer and the
events must describe either a whole announcement or none, and the owner must be able to
announce again.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from relay.app import Relay, open_relay
from relay.events import kinds
from relay.events.ingest import Ingest, run_side_effect
from relay.git import model
from relay.git.announce import Announcements
from relay.git.objectstore import BackendError, GitObjects
from relay.git.registry import RepoRegistry
from relay.pubsub.fanout import Fanout
from relay.store.db import DatabaseError
from tests.helpers import announcement, new_key, sql
from tests.services import relay_settings

MODES = ("cancel-before", "cancel-after", "error", "hang")


class Injector:
    """Counts awaited calls and fires one fault at call number `at`."""

    def __init__(self, at: int, mode: str, scope: trio.CancelScope) -> None:
        self.at = at
        self.mode = mode
        self.scope = scope
        self.calls = 0
        self.fired = False
        self.hanging = trio.Event()

    async def around(self, call: Callable[[], Awaitable[Any]]) -> Any:
        self.calls += 1
        hit = self.calls == self.at and not self.fired
        if hit:
            self.fired = True
            if self.mode == "cancel-before":
                self.scope.cancel()
                await trio.lowlevel.checkpoint()
            elif self.mode == "error":
                raise BackendError("injected failure")
            elif self.mode == "hang":
                self.hanging.set()
                await trio.sleep_forever()
        result = await call()
        if hit and self.mode == "cancel-after":
            self.scope.cancel()
            await trio.lowlevel.checkpoint()
        return result


class Faulty:
    """Wraps an object so each of its coroutine methods goes through the injector."""

    def __init__(self, inner: Any, injector: Injector) -> None:
        self._inner = inner
        self._injector = injector

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            return await self._injector.around(lambda: attr(*args, **kwargs))

        return wrapped


@asynccontextmanager
async def relay_parts(db_url: str, tmp_path: Path) -> AsyncIterator[Relay]:
    async with open_relay(relay_settings(db_url, tmp_path)) as relay:
        yield relay


async def community_id(relay: Relay) -> int:
    found = await relay.communities.resolve("localhost")
    assert found is not None
    return found


async def end_state(relay: Relay, cid: int, owner: str, repo: str) -> dict[str, Any]:
    names = await sql(
        relay.settings.database_url or "",
        "SELECT owner_pubkey FROM git_repo_names WHERE community_id = $1 AND repo_id = $2",
        cid,
        repo,
    )
    events = await sql(
        relay.settings.database_url or "",
        "SELECT kind, encode(pubkey, 'hex') AS pubkey FROM events"
        " WHERE community_id = $1 AND coordinate_d = $2",
        cid,
        repo,
    )
    pointer = await relay.objects.read_pointer(model.pointer_key(cid, owner, repo))
    return {
        "names": [r["owner_pubkey"] for r in names],
        "announcements": sum(r["kind"] == kinds.REPO_ANNOUNCEMENT for r in events),
        "ref_states": sum(
            r["kind"] == kinds.REPO_STATE and r["pubkey"] == relay.pubkey for r in events
        ),
        "pointer": None if pointer is None else pointer[1],
    }


def assert_consistent(state: dict[str, Any], owner: str) -> bool:
    """Whole (True) or nothing (False); anything in between fails the test."""
    empty = model.EMPTY_MANIFEST.digest
    if state["announcements"]:
        assert state == {"names": [owner], "announcements": 1, "ref_states": 1, "pointer": empty}
        return True
    assert state["names"] == [] and state["ref_states"] == 0, state
    # A seeded pointer may stay behind: it names the shared empty manifest, and the next
    # announcement accepts exactly that.
    assert state["pointer"] in (None, empty), state
    return False


def faulty_handler(relay: Relay, injector: Injector) -> Announcements:
    return Announcements(
        Faulty(relay.store, injector),  # type: ignore[arg-type]
        Faulty(RepoRegistry(relay.db, 100), injector),  # type: ignore[arg-type]
        GitObjects(Faulty(relay.objects.store, injector)),  # type: ignore[arg-type]
        relay.key,
        hosts_of=Faulty(relay.communities, injector).hosts_of,
        compensation_seconds=5,
    )


@pytest.mark.parametrize("mode", ["cancel-before", "cancel-after", "error"])
async def test_fault_at_every_await_point_leaves_all_or_nothing(
    mode: str, db_url: str, tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with relay_parts(db_url, tmp_path) as relay:
        cid = await community_id(relay)
        key = new_key()
        outcomes = []
        for at in range(1, 50):
            repo = f"repo-{at}"
            event = announcement(key, repo, "localhost")
            with trio.CancelScope() as scope:
                injector = Injector(at, mode, scope)
                handler = faulty_handler(relay, injector)
                try:
                    handled = await run_side_effect(handler, cid, event, event.to_json())
                    outcomes.append(handled.verdict.accepted)
                except (BackendError, DatabaseError):
                    outcomes.append("raised")
            state = await end_state(relay, cid, event.pubkey, repo)
            whole = assert_consistent(state, event.pubkey)
            if not injector.fired:
                assert whole, "an announcement without a fault must be whole"
                break
            if whole:
                continue
            # The owner can always try again, and then it is whole.
            retry = announcement(key, repo, "localhost")
            handled = await run_side_effect(
                relay.ingest.side_effects[kinds.REPO_ANNOUNCEMENT], cid, retry, retry.to_json()
            )
            assert handled.verdict.accepted, handled.verdict
            assert assert_consistent(await end_state(relay, cid, event.pubkey, repo), event.pubkey)
        else:
            pytest.fail("the handler never finished without a fault")
        # Faults were injected at every await point before the clean run.
        assert at > 5, f"only {at - 1} await points were exercised"


async def test_ingest_deadline_compensates(
    db_url: str, tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """A step that hangs past the ingest deadline: the client gets `error:`, nothing stays."""
    async with relay_parts(db_url, tmp_path) as relay:
        cid = await community_id(relay)
        key = new_key()
        for at in (1, 2, 3, 4):
            repo = f"slow-{at}"
            event = announcement(key, repo, "localhost")
            injector = Injector(at, "hang", trio.CancelScope())
            ingest = Ingest(relay.store, Fanout(), relay.limits, timeout=30)
            ingest.side_effects[kinds.REPO_ANNOUNCEMENT] = faulty_handler(relay, injector)
            verdicts: list[Any] = []

            async def submit(
                ev: Any = event, ing: Ingest = ingest, out: list[Any] = verdicts
            ) -> None:
                out.append(await ing.submit(cid, ev, set(), ev.created_at))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(submit)
                await injector.hanging.wait()
                mock_clock.jump(31)
            assert verdicts[0].accepted is False
            assert verdicts[0].message.startswith("error:")
            state = await end_state(relay, cid, event.pubkey, repo)
            assert not assert_consistent(state, event.pubkey)
