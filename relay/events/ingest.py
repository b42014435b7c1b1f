"""The ingest pipeline: rules, signature, storage, side effects, fan-out; one OK per EVENT.

`OK true` is returned only after the event is durably stored and its side effects are
committed (an ephemeral event: handed to fan-out). Fan-out happens after that, so a
subscriber never sees an event that is then rolled back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection

import trio

from relay.batching import BatchTimeout
from relay.events import rules
from relay.events.kinds import Storage, storage_class
from relay.events.model import Event
from relay.events.side_effects import Handled, SideEffect, Verdict
from relay.events.verify import BatchVerifier
from relay.protocol.limits import Limits
from relay.pubsub.fanout import Fanout
from relay.store.db import DatabaseError
from relay.store.events import Coordinate, EventStore, Saved, SaveResult

log = logging.getLogger(__name__)

DEFAULT_INGEST_SECONDS = 30.0

ANSWERS = {
    Saved.STORED: Verdict(True, ""),
    Saved.DUPLICATE: Verdict(True, "duplicate: already have this event"),
    Saved.SUPERSEDED: Verdict(False, "duplicate: a newer version of this event is stored"),
    Saved.DELETED: Verdict(False, "blocked: this event was deleted by its author"),
    Saved.REFUSED: Verdict(False, "error: the event changed state while being stored, try again"),
}
STORE_FAILED = Verdict(False, "error: the event could not be stored, try again")
TIMED_OUT = Verdict(False, "error: storing the event took too long, try again")

# Called after a deletion committed, with what it removed (e.g. to drop git pointers).
AfterRemoval = Callable[[int, tuple[Coordinate, ...]], Awaitable[None]]


class Ingest:
    def __init__(
        self,
        store: EventStore,
        fanout: Fanout,
        limits: Limits,
        *,
        timeout: float = DEFAULT_INGEST_SECONDS,
    ) -> None:
        self.store = store
        self.fanout = fanout
        self.limits = limits
        self.timeout = timeout
        self.side_effects: dict[int, SideEffect] = {}
        self.validators: dict[int, Callable[[Event], str | None]] = {}
        self.after_removal: list[AfterRemoval] = []
        # The community's moderation (NIP-86 bans and allow-list): a refusal or None.
        self.moderation: Callable[[int, Event], str | None] | None = None
        # Who may write in the community (members-only ones, NIP-43): a refusal or None.
        self.access: Callable[[int, Event, Collection[str]], str | None] | None = None
        self.verifier = BatchVerifier()

    def precheck(
        self,
        event: Event,
        raw: str,
        authenticated: Collection[str],
        now: int,
        community_id: int | None = None,
    ) -> str | None:
        """Every rule but the signature, cheapest first; the refusal reason or None."""
        validator = self.validators.get(event.kind)
        banned = self.moderation(community_id, event) if self.moderation and community_id else None
        closed = (
            self.access(community_id, event, authenticated)
            if self.access and community_id
            else None
        )
        return (
            rules.check_shape_limits(event, len(raw.encode()), self.limits, now)
            or closed
            or rules.check_publishable(event, authenticated)
            or banned
            or (validator(event) if validator else None)
        )

    async def submit(
        self, community_id: int, event: Event, authenticated: Collection[str], now: int
    ) -> Verdict:
        raw = event.to_json()
        refusal = self.precheck(event, raw, authenticated, now, community_id)
        refusal = refusal or await self.verifier.check(event)
        if refusal is not None:
            return Verdict(False, refusal)
        if storage_class(event.kind) is Storage.EPHEMERAL and event.kind not in self.side_effects:
            self.fanout.publish(community_id, event, raw)
            return Verdict(True, "")
        try:
            handled = await self._handle_in_time(community_id, event, raw)
        except DatabaseError as exc:
            log.error("storing event %s failed: %s", event.id, exc)
            return STORE_FAILED
        if handled is None:
            return TIMED_OUT
        for published, published_raw in handled.publish:
            self.fanout.publish(community_id, published, published_raw)
        return handled.verdict

    async def _handle_in_time(self, community_id: int, event: Event, raw: str) -> Handled | None:
        """`_handle` within the ingest timeout; None when the time ran out.

        A regular event bound for the group commit waits there by the group's own clock: a
        cancel scope with a deadline costs about 10 µs an event, a tenth of its ingest.
        """
        group = None if event.kind in self.side_effects else self.store.group_for(event)
        if group is not None:
            try:
                result = await group.save(community_id, event, raw, self.timeout)
            except BatchTimeout:
                return None
            return await self._handled(community_id, event, raw, result)
        with trio.move_on_after(self.timeout):
            return await self._handle(community_id, event, raw)
        return None

    async def _handle(self, community_id: int, event: Event, raw: str) -> Handled:
        side_effect = self.side_effects.get(event.kind)
        if side_effect is not None:
            return await run_side_effect(side_effect, community_id, event, raw)
        result = await self.store.save(community_id, event, raw)
        return await self._handled(community_id, event, raw, result)

    async def _handled(
        self, community_id: int, event: Event, raw: str, result: SaveResult
    ) -> Handled:
        if result.removed:
            for listener in self.after_removal:
                await listener(community_id, result.removed)
        stored = result.outcome is Saved.STORED
        return Handled(ANSWERS[result.outcome], ((event, raw),) if stored else ())


async def run_side_effect(
    side_effect: SideEffect, community_id: int, event: Event, raw: str
) -> Handled:
    """Run a handler as a task of its own nursery: cancelling ingest cancels it cleanly."""
    outcome: list[Handled] = []

    async def task() -> None:
        outcome.append(await side_effect(community_id, event, raw))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(task)
    except BaseExceptionGroup as group:
        # One task: re-raise its error as itself, so callers classify it like any other.
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
            raise group.exceptions[0] from None
        raise
    return outcome[0]
