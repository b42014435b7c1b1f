"""Live delivery of accepted events to the open subscriptions of their community.

Delivery never waits: each connection has a bounded outbox, and a connection whose outbox
is full is told so and dropped, so one slow client never slows the others.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol

from relay.events.model import Event
from relay.protocol.filters import Filter
from relay.pubsub.index import SubscriptionIndex


class Sink(Protocol):
    def deliver(self, event: Event, raw: str, sub_ids: set[str]) -> int:
        """Queue the event for those of `sub_ids` it matches; must not block.

        Returns how many subscriptions it was queued for."""

    def subscription_count(self) -> int:
        """Open subscriptions of this connection."""


class Remote(Protocol):
    def send(self, community_id: int, raw: str) -> None:
        """Hand an accepted event to the other pods; must not block."""


class Fanout:
    """One registry of local connections per community, and optionally the other pods.

    Without a remote this is the whole fan-out (one process); with Redis configured the
    bridge carries accepted events to the other pods and calls `deliver_local` with theirs.
    """

    def __init__(self) -> None:
        self._sinks: dict[int, set[Sink]] = defaultdict(set)
        # Per community: which open subscriptions an event could match.
        self._index: dict[int, SubscriptionIndex[Sink]] = {}
        self.remote: Remote | None = None
        self.deliveries = 0

    def register(self, community_id: int, sink: Sink) -> None:
        self._sinks[community_id].add(sink)

    def unregister(self, community_id: int, sink: Sink) -> None:
        sinks = self._sinks.get(community_id)
        if sinks is not None:
            sinks.discard(sink)
            if not sinks:
                del self._sinks[community_id]
        index = self._index.get(community_id)
        if index is not None:
            index.remove_holder(sink)
            self._drop_if_empty(community_id, index)

    def subscribe(
        self, community_id: int, sink: Sink, sub_id: str, filters: tuple[Filter, ...]
    ) -> None:
        """A subscription opened (or replaced one of the same id) on this connection."""
        self._index.setdefault(community_id, SubscriptionIndex()).add(sink, sub_id, filters)

    def unsubscribe(self, community_id: int, sink: Sink, sub_id: str) -> None:
        index = self._index.get(community_id)
        if index is not None:
            index.remove(sink, sub_id)
            self._drop_if_empty(community_id, index)

    def _drop_if_empty(self, community_id: int, index: SubscriptionIndex[Sink]) -> None:
        if not len(index):
            del self._index[community_id]

    def publish(self, community_id: int, event: Event, raw: str) -> None:
        """An event this pod accepted: to its own subscribers, then to the other pods."""
        self.deliver_local(community_id, event, raw)
        if self.remote is not None:
            self.remote.send(community_id, raw)

    def listening(self, community_id: int) -> bool:
        """Whether any open subscription here could match an event of the community."""
        return community_id in self._index

    def deliver_local(self, community_id: int, event: Event, raw: str) -> None:
        index = self._index.get(community_id)
        if index is None:
            return
        for sink, sub_ids in index.candidates(event).items():
            self.deliveries += sink.deliver(event, raw, sub_ids)

    def connection_count(self) -> int:
        return sum(len(s) for s in self._sinks.values())

    def subscription_count(self) -> int:
        return sum(sink.subscription_count() for s in self._sinks.values() for sink in s)
