"""The conformance probe: the relay refuses an object store that does not honour
conditional writes, since two pushes could then fork a repository.

Phases: sequential write/read round trips; an If-Match race (N writers on one pointer,
exactly one may win, R rounds); an If-None-Match race (exactly one create); an ETag round
trip (a CAS with the token just read must win on a quiet store). Calls that never got an
HTTP answer (transport errors, the per-operation timeout) are dropped and counted; any
other unexpected answer fails the probe. The whole probe has a deadline.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import trio

from relay.errors import OperatorError
from relay.git import model
from relay.git.objectstore import (
    CasResult,
    GitObjects,
    LostRace,
    ObjectStore,
    StoreError,
    TransportError,
    Won,
)
from relay.progress import Progress

T = TypeVar("T")
PROBE_PREFIX = "probe/"


class ProbeFailed(OperatorError):
    pass


class _Dropped(Exception):
    """The call got no HTTP answer within the per-operation timeout."""


@dataclass
class PhaseReport:
    name: str
    ok: bool
    detail: str


@dataclass
class ProbeReport:
    phases: list[PhaseReport] = field(default_factory=list)
    transport_drops: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.phases) and all(p.ok for p in self.phases)

    def render(self) -> str:
        lines = [f"object store conformance probe: {'PASSED' if self.ok else 'FAILED'}"]
        for phase in self.phases:
            lines.append(f"  [{'ok' if phase.ok else 'FAIL'}] {phase.name}: {phase.detail}")
        lines.append(f"  transport drops: {self.transport_drops}; took {self.seconds:.2f} s")
        return "\n".join(lines)


class Probe:
    def __init__(
        self,
        store: ObjectStore,
        *,
        writers: int = 32,
        rounds: int = 3,
        op_timeout: float = 30.0,
        deadline: float = 300.0,
        progress: Progress | None = None,
    ) -> None:
        if writers < 2 or rounds < 1:
            raise ValueError("the probe needs at least 2 writers and 1 round")
        self.store = store
        self.objects = GitObjects(store)
        self.writers = writers
        self.rounds = rounds
        self.op_timeout = op_timeout
        self.deadline = deadline
        self.report = ProbeReport()
        # Counts store calls (answered or dropped), naming the phase they belong to.
        self.progress = progress
        self._phase = ""

    async def _op(self, call: Callable[[], Awaitable[T]]) -> T:
        """One store call; a call that never got an HTTP answer is counted and dropped."""
        try:
            with trio.move_on_after(self.op_timeout):
                try:
                    return await call()
                except TransportError as exc:
                    self.report.transport_drops += 1
                    raise _Dropped(str(exc)) from exc
            self.report.transport_drops += 1
            raise _Dropped(f"no answer within {self.op_timeout} s")
        finally:
            if self.progress is not None:
                drops = self.report.transport_drops
                self.progress.advance(1, f"{self._phase}, {drops} dropped")

    async def run(self) -> ProbeReport:
        started = time.monotonic()
        phases = (
            ("sequential", self._sequential),
            ("if_match_race", self._if_match_race),
            ("if_none_match_race", self._if_none_match_race),
            ("etag_round_trip", self._etag_round_trip),
        )
        with trio.move_on_after(self.deadline) as overall:
            for name, phase in phases:
                self._phase = name
                try:
                    detail = await phase()
                except (ProbeFailed, StoreError, _Dropped) as exc:
                    self.report.phases.append(PhaseReport(name, False, str(exc)))
                    break
                self.report.phases.append(PhaseReport(name, True, detail))
        if overall.cancelled_caught:
            self.report.phases.append(
                PhaseReport("deadline", False, f"the probe took longer than {self.deadline} s")
            )
        self.report.seconds = time.monotonic() - started
        return self.report

    async def _put_nth(self, key: str, bodies: list[bytes], token: str, i: int) -> CasResult:
        return await self.store.put(key, bodies[i], token)

    async def _delete_quietly(self, key: str) -> None:
        with trio.move_on_after(self.op_timeout) as cleanup:
            cleanup.shield = True
            with contextlib.suppress(StoreError):
                await self.store.delete(key)

    async def _sequential(self) -> str:
        written: list[str] = []
        try:
            for _ in range(self.rounds):
                data = secrets.token_bytes(64)
                # Removed afterwards once written (a write that never answered is not
                # waited for again: the probe keeps its deadline).
                written.append(
                    await self._op(partial(self.objects.put_immutable, PROBE_PREFIX, data))
                )
                key = written[-1]
                read = await self._op(partial(self.objects.get_verified, key, 1024))
                if read != data:
                    raise ProbeFailed("bytes read back differ from the bytes written")
            return f"{self.rounds} write/read round trips"
        finally:  # a probe leaves nothing behind (it runs at every start of every pod)
            for key in written:
                await self._delete_quietly(key)

    async def _race(
        self, write: Callable[[int], Awaitable[CasResult]]
    ) -> tuple[list[tuple[int, Won]], int]:
        """Run the writers at once; returns the winners and how many lost."""
        winners: list[tuple[int, Won]] = []
        losers = 0

        async def one(i: int) -> None:
            nonlocal losers
            try:
                result = await self._op(lambda: write(i))
            except _Dropped:
                return
            if isinstance(result, Won):
                winners.append((i, result))
            elif isinstance(result, LostRace):
                losers += 1

        async with trio.open_nursery() as nursery:
            for i in range(self.writers):
                nursery.start_soon(one, i)
        if len(winners) + losers < 2:
            raise ProbeFailed("fewer than two writers got an answer; the race proves nothing")
        return winners, losers

    async def _if_match_race(self) -> str:
        key = f"{PROBE_PREFIX}pointer-{secrets.token_hex(8)}"
        try:
            seeded = await self._op(lambda: self.store.put(key, b"seed", None))
            if not isinstance(seeded, Won):
                raise ProbeFailed("creating a fresh probe pointer lost a race nobody ran")
            token = seeded.token
            for round_ in range(self.rounds):
                bodies = [f"round {round_} writer {i}".encode() for i in range(self.writers)]
                winners, _losers = await self._race(
                    partial(self._put_nth, key, bodies, token)
                )
                if len(winners) != 1:
                    raise ProbeFailed(
                        f"round {round_}: {len(winners)} of {self.writers} If-Match writers "
                        "won; exactly one may (the store does not honour If-Match)"
                    )
                winner, won = winners[0]
                found = await self._op(lambda: self.store.get(key, 1024))
                if found is None or found.body != bodies[winner]:
                    raise ProbeFailed(f"round {round_}: the stored body is not the winner's")
                token = won.token
            return f"{self.rounds} rounds of {self.writers} writers, one winner each"
        finally:
            await self._delete_quietly(key)

    async def _if_none_match_race(self) -> str:
        data = secrets.token_bytes(64)
        key = f"{PROBE_PREFIX}inm-race/{model.sha256_hex(data)}"
        created: list[bool] = []
        try:
            return await self._inm_race(key, data, created)
        finally:
            if any(created):
                await self._delete_quietly(key)

    async def _inm_race(self, key: str, data: bytes, created: list[bool]) -> str:
        winners, losers = await self._race(lambda i: self.store.put(key, data, None))
        created.append(bool(winners))
        if len(winners) != 1:
            raise ProbeFailed(
                f"{len(winners)} of {self.writers} If-None-Match creates succeeded; exactly one "
                "may (the store does not honour If-None-Match)"
            )
        found = await self._op(lambda: self.store.get(key, 1024))
        if found is None or found.body != data:
            raise ProbeFailed("the created object does not read back")
        return f"one create, {losers} refused"

    async def _etag_round_trip(self) -> str:
        key = f"{PROBE_PREFIX}pointer-{secrets.token_hex(8)}"
        try:
            await self._op(lambda: self.store.put(key, b"first", None))
            found = await self._op(lambda: self.store.get(key, 1024))
            if found is None:
                raise ProbeFailed("a pointer just written reads as absent")
            result = await self._op(lambda: self.store.put(key, b"second", found.token))
            if not isinstance(result, Won):
                raise ProbeFailed(
                    f"a CAS with the token just read ({found.token!r}) lost on a quiet store"
                )
            return "the revision token round-trips"
        finally:
            await self._delete_quietly(key)
