"""The ingest pipeline: rules, signature, storage, fan-out; it answers every EVENT with an OK.

`OK true` is returned only after the event is durably stored (or, for an ephemeral event,
handed to fan-out). Side-effect handlers run between storage and the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

from relay.events import rules
from relay.events.kinds import Storage, storage_class
from relay.events.model import Event
from relay.protocol.limits import Limits
from relay.pubsub.fanout import Fanout
from relay.store.db import STORE_ERRORS
from relay.store.events import EventStore, Saved

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: bool
    message: str


_ANSWERS = {
    Saved.STORED: Verdict(True, ""),
    Saved.DUPLICATE: Verdict(True, "duplicate: already have this event"),
    Saved.SUPERSEDED: Verdict(False, "duplicate: a newer version of this event is stored"),
    Saved.DELETED: Verdict(False, "blocked: this event was deleted by its author"),
}


class Ingest:
    def __init__(self, store: EventStore, fanout: Fanout, limits: Limits) -> None:
        self.store = store
        self.fanout = fanout
        self.limits = limits

    def precheck(
        self, event: Event, raw: str, authenticated: Collection[str], now: int
    ) -> str | None:
        """Every rule that needs no I/O, cheapest first; the refusal reason or None."""
        return (
            rules.check_shape_limits(event, len(raw.encode()), self.limits, now)
            or rules.check_publishable(event, authenticated)
            or rules.check_signature(event)
        )

    async def submit(
        self, community_id: int, event: Event, authenticated: Collection[str], now: int
    ) -> Verdict:
        raw = event.to_json()
        refusal = self.precheck(event, raw, authenticated, now)
        if refusal is not None:
            return Verdict(False, refusal)
        if storage_class(event.kind) is Storage.EPHEMERAL:
            self.fanout.publish(community_id, event, raw)
            return Verdict(True, "")
        try:
            result = await self.store.save(community_id, event, raw)
        except STORE_ERRORS as exc:
            log.error("storing event %s failed: %s", event.id, exc)
            return Verdict(False, "error: the event could not be stored, try again")
        if result.outcome is Saved.STORED:
            self.fanout.publish(community_id, event, raw)
        return _ANSWERS[result.outcome]
