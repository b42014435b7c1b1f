"""Side effects of accepting an event, with cancellation-safe compensation.

A handler does its work step by step and registers an undo for each step that must not
outlive a failure. Unless the handler commits, the undos run in reverse order when it
leaves, however it leaves: an error, a refusal, a client disconnect, the ingest deadline
or shutdown. They run in a shielded cancel scope with their own timeout, so cancellation
never leaves half a side effect behind, and a stuck backend never holds shutdown forever.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

import trio

from relay.events.model import Event

log = logging.getLogger(__name__)

DEFAULT_COMPENSATION_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: bool
    message: str


@dataclass(frozen=True, slots=True)
class Handled:
    verdict: Verdict
    # Events to fan out once everything is committed: the event itself and companions.
    publish: tuple[tuple[Event, str], ...] = field(default=())


class SideEffect(Protocol):
    async def __call__(self, community_id: int, event: Event, raw: str) -> Handled:
        """Store the event together with its side effects, or neither."""


class Compensation:
    def __init__(self, timeout: float = DEFAULT_COMPENSATION_SECONDS) -> None:
        self.timeout = timeout
        self._undo: list[tuple[str, Callable[[], Awaitable[object]]]] = []

    def push(self, name: str, undo: Callable[[], Awaitable[object]]) -> None:
        self._undo.append((name, undo))

    def commit(self) -> None:
        """Everything is durable: nothing is undone from here on."""
        self._undo.clear()

    async def __aenter__(self) -> Compensation:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._undo:
            return
        with trio.move_on_after(self.timeout) as scope:
            scope.shield = True
            while self._undo:
                name, undo = self._undo.pop()
                try:
                    await undo()
                except Exception:
                    log.exception("compensation step %r failed", name)
        if scope.cancelled_caught:
            log.error("compensation did not finish within %.1f s", self.timeout)
