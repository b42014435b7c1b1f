"""Readiness checks that answer in time even while a backend stalls.

A check of a stalled backend can hang past any deadline: cancelling an asyncpg query makes
asyncpg send a cancel request to the same stalled server and wait for it, and trio-asyncio
waits for that. So each check runs as a task of the prober's own nursery; a caller waits at
most READINESS_CHECK_SECONDS for its answer, and a check still running from an earlier
probe is waited on again rather than started twice (a stall never piles up checks).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger(__name__)

# Each check answers within this (the chart's readiness probe times out after 3 s).
READINESS_CHECK_SECONDS = 1.5

Check = Callable[[], Awaitable[bool]]


class Prober:
    def __init__(self, seconds: float = READINESS_CHECK_SECONDS) -> None:
        self.seconds = seconds
        self._nursery: trio.Nursery | None = None
        self._running: dict[str, trio.Event] = {}
        self._answers: dict[str, bool] = {}

    async def run(self) -> None:
        """Own the checks' tasks until cancelled (started with the relay)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def answers(self, checks: dict[str, Check]) -> dict[str, bool | None]:
        """Every check's answer, None for one that gave none in time; all at once."""
        found: dict[str, bool | None] = {}
        async with trio.open_nursery() as waiting:
            for name, check in checks.items():
                waiting.start_soon(self._answer, name, check, found)
        return found

    async def _answer(self, name: str, check: Check, found: dict[str, bool | None]) -> None:
        found[name] = None
        if self._nursery is None:  # not running: check inline, within the deadline
            with trio.move_on_after(self.seconds):
                found[name] = await _safely(name, check)
            return
        done = self._running.get(name)
        if done is None:
            done = self._running[name] = trio.Event()
            self._nursery.start_soon(self._check, name, check, done)
        with trio.move_on_after(self.seconds):
            await done.wait()
            found[name] = self._answers.get(name, False)

    async def _check(self, name: str, check: Check, done: trio.Event) -> None:
        try:
            self._answers[name] = await _safely(name, check)
        finally:
            del self._running[name]
            done.set()


async def _safely(name: str, check: Check) -> bool:
    try:
        return await check()
    except Exception as exc:  # a check that fails says no; it never takes the prober down
        log.warning("readiness check %s failed: %s", name, exc)
        return False
