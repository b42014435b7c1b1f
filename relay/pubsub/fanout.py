"""Live delivery of accepted events to the open subscriptions of their community.

Delivery never waits: each connection has a bounded outbox, and a connection whose outbox
is full is told so and dropped, so one slow client never slows the others.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol

from relay.events.model import Event


class Sink(Protocol):
    def deliver(self, event: Event, raw: str) -> None:
        """Queue the event for every matching subscription; must not block."""


class Fanout:
    """The in-process fan-out: one registry of connections per community."""

    def __init__(self) -> None:
        self._sinks: dict[int, set[Sink]] = defaultdict(set)

    def register(self, community_id: int, sink: Sink) -> None:
        self._sinks[community_id].add(sink)

    def unregister(self, community_id: int, sink: Sink) -> None:
        sinks = self._sinks.get(community_id)
        if sinks is not None:
            sinks.discard(sink)
            if not sinks:
                del self._sinks[community_id]

    def publish(self, community_id: int, event: Event, raw: str) -> None:
        for sink in list(self._sinks.get(community_id, ())):
            sink.deliver(event, raw)

    def connection_count(self) -> int:
        return sum(len(s) for s in self._sinks.values())
