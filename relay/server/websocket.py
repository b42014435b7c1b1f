"""One websocket connection: reads messages from its first byte, answers each in order.

The reader never races an admission check: messages are taken from trio-websocket one at
a time and each gets its answer (OK, CLOSED, NOTICE, EOSE, COUNT) before the next is
taken; trio-websocket parses only a bounded number ahead (then TCP holds the client back).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from relay.events.model import Event
from relay.events.rules import check_auth_event
from relay.events.side_effects import Verdict
from relay.protocol import messages as msg
from relay.protocol.access import AUTH_REQUIRED, NO_LONGER_A_MEMBER, asks_for_invite
from relay.protocol.session import Session
from relay.server import sync
from relay.server.outbox import Outbox
from relay.server.wsstream import WebSocketStream
from relay.store.db import DatabaseError
from relay.store.events import QueryTooExpensive

if TYPE_CHECKING:
    from relay.wiring import Relay

log = logging.getLogger(__name__)

SLOW_CONSUMER_CLOSE_CODE = 1008
GOING_AWAY_CLOSE_CODE = 1001
PIPELINED_EVENTS = 32
WRITE_BATCH_BYTES = 256 * 1024
QUERY_FAILED = "error: the query could not be run, try again"
# Not "try again": the same filters would run over the query timeout again.
QUERY_TOO_EXPENSIVE = "error: query too expensive"
# Time allowed to tell a slow consumer why it is being disconnected.
GOODBYE_SECONDS = 5.0


class LiveSink:
    """Receives fanned-out events for one connection; never blocks the publisher."""

    def __init__(self, session: Session, outbox: Outbox) -> None:
        self.session = session
        self.outbox = outbox

    def deliver(self, event: Event, raw: str, sub_ids: set[str]) -> int:
        send, queued, overflowed = self.session.route_live(
            event, raw, sub_ids, self.outbox.max_bytes
        )
        if overflowed:
            self.outbox.give_up()
            return queued
        for sub_id in send:
            if not self.outbox.offer(msg.event_frame(sub_id, raw)):
                break
            queued += 1
        return queued

    def subscription_count(self) -> int:
        return len(self.session.subscriptions)


class ClientConnection:
    def __init__(
        self,
        relay: Relay,
        ws: WebSocketConnection,
        wire: WebSocketStream,
        community_id: int,
        host: str,
        ip: str = "unknown",
        names: frozenset[str] = frozenset(),
        *,
        rate_limited: bool = True,
    ) -> None:
        self.relay = relay
        self.ws = ws
        self.wire = wire
        self.community_id = community_id
        self.ip = ip  # the client's address (a trusted proxy's header, else the peer's)
        self.rate_limited = rate_limited  # False: a loopback client (RELAY_RATE_LIMIT_LOOPBACK)
        # Cancelled on shutdown, and only while waiting for the next frame: never a frame
        # in progress (one scope for the whole read loop; a scope a frame costs time).
        self._reading = trio.CancelScope()
        self._waiting_for_frame = False
        # EVENTs of one connection are ingested concurrently, up to this many at once, by
        # worker tasks that take one EVENT after another while the client keeps sending
        # (a task an EVENT costs time) and end when none is left in flight.
        self._in_flight = 0
        self._queued: list[Event] = []  # at most PIPELINED_EVENTS; a deque costs 600 bytes
        self._workers = 0
        self._idle_workers = trio.lowlevel.ParkingLot()
        # Where the reading task waits for room in the pipeline, or for it to empty.
        self._reader_waiting = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery
        self.session = Session(host=host, limits=relay.limits, names=names)
        # For the line logged when the connection closes.
        self.opened = trio.current_time()
        self.accepted = self.refused = self.reqs = 0
        self.outbox = Outbox(relay.limits.max_outbound_bytes)
        self.sink = LiveSink(self.session, self.outbox)

    async def run(self) -> None:
        fanout = self.relay.fanout
        fanout.register(self.community_id, self.sink)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._write, nursery.cancel_scope)
                # No watcher tasks (each costs memory on every connection): an overflow
                # cancels the connection, and shutdown stops its reading, by callback.
                self.outbox.on_overflow = nursery.cancel_scope.cancel
                self.relay.connections.add(self)
                await self.outbox.put(msg.auth_challenge(self.session.challenge))
                await self._read()
                await self._events_settled()
                await self._flush()
                nursery.cancel_scope.cancel()
        finally:
            self.relay.connections.discard(self)
            fanout.unregister(self.community_id, self.sink)
            log.info(
                "connection closed: client %s on %s, %.1f s, %d events accepted, %d refused, "
                "%d REQs",
                self.ip, self.session.host, trio.current_time() - self.opened,
                self.accepted, self.refused, self.reqs,
            )  # fmt: skip
        if self.outbox.overflowed:
            self.relay.metrics.slow_consumers += 1
            await self._disconnect_slow_consumer()
        elif self.relay.shutdown.is_set():
            with trio.move_on_after(GOODBYE_SECONDS) as goodbye:
                goodbye.shield = True
                with contextlib.suppress(ConnectionClosed):
                    await self.ws.aclose(GOING_AWAY_CLOSE_CODE, "relay shutting down")

    async def _write(self, scope: trio.CancelScope) -> None:
        try:
            while True:
                batch = await self.outbox.get_many(WRITE_BATCH_BYTES)
                await self.wire.send_messages(self.ws, batch)
        except ConnectionClosed:
            scope.cancel()

    def stop_reading(self) -> None:
        """Shutdown: take no new frames; the ones in progress still get their answers (the
        read loop sees the shutdown before it waits again)."""
        if self._waiting_for_frame:
            self._reading.cancel()

    async def _flush(self) -> None:
        """Let the answers already queued reach the client before the connection ends."""
        with trio.move_on_after(GOODBYE_SECONDS):
            while self.outbox.pending_bytes and not self.outbox.overflowed:
                await trio.sleep(0.01)

    async def _disconnect_slow_consumer(self) -> None:
        log.info("disconnecting a slow consumer on %s (client %s)", self.session.host, self.ip)
        with trio.move_on_after(GOODBYE_SECONDS) as goodbye:
            goodbye.shield = True
            try:
                await self.ws.send_message(
                    msg.notice("error: too slow reading; outbound queue full, disconnecting")
                )
                await self.ws.aclose(SLOW_CONSUMER_CLOSE_CODE, "slow consumer")
            except ConnectionClosed:
                pass

    async def _read(self) -> None:
        with self._reading:
            while not self.relay.shutdown.is_set():
                self._waiting_for_frame = True
                try:
                    frame = await self.ws.get_message()
                except ConnectionClosed:
                    return
                finally:
                    self._waiting_for_frame = False
                await self._take(frame)

    async def _take(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            try:
                frame = frame.decode("utf-8")
            except UnicodeDecodeError:
                await self.outbox.put(msg.notice("invalid: message is not valid UTF-8"))
                return
        await self.handle(frame)

    async def handle(self, frame: str) -> None:
        parsed = msg.parse_client_message(frame, self.relay.limits)
        out = self.outbox
        if isinstance(parsed, msg.Refusal):
            await out.put(parsed.reply)
        elif isinstance(parsed, msg.ClientEvent):
            await self._admit(parsed.event)
            return
        # Anything else sees the effect of every EVENT this client sent before it.
        await self._events_settled()
        queries = msg.ClientReq | msg.ClientCount | msg.ClientNegOpen
        refusal = None
        if isinstance(parsed, queries):
            refusal = self.access_refusal()
            if refusal is None and not await self._allowed("req"):
                refusal = "rate-limited: slow down, too many requests"
        if refusal is not None:
            assert isinstance(parsed, queries)
            if isinstance(parsed, msg.ClientNegOpen):
                await out.put(msg.neg_err(parsed.sub_id, refusal))
            else:
                await out.put(msg.closed(parsed.sub_id, refusal))
        elif isinstance(parsed, msg.ClientNegOpen):
            await out.put(
                await sync.open_session(self.relay.store, self.community_id, self.session, parsed)
            )
        elif isinstance(parsed, msg.ClientNegMsg):
            await out.put(await sync.continue_session(self.session, parsed))
        elif isinstance(parsed, msg.ClientNegClose):
            self.session.neg_close(parsed.sub_id)
        elif isinstance(parsed, msg.ClientReq):
            await self._subscribe(parsed)
        elif isinstance(parsed, msg.ClientCount):
            try:
                n = await self.relay.store.count(
                    self.community_id, parsed.filters, int(time.time())
                )
            except QueryTooExpensive:
                await out.put(msg.closed(parsed.sub_id, QUERY_TOO_EXPENSIVE))
                return
            except DatabaseError as exc:
                log.error("COUNT failed: %s", exc)
                await out.put(msg.closed(parsed.sub_id, QUERY_FAILED))
                return
            await out.put(msg.count(parsed.sub_id, n))
        elif isinstance(parsed, msg.ClientClose):
            self._close_subscription(parsed.sub_id)
        elif isinstance(parsed, msg.ClientAuth):
            await self._authenticate(parsed.event)

    def access_refusal(self) -> str | None:
        """Why this connection may not read or write its community now (a members-only
        one: not authenticated, or not as a member), or None."""
        access = self.relay.moderation.access(self.community_id)
        return access.refusal(self.session.authenticated)

    def access_changed(self) -> None:
        """The community's members or mode changed (on any pod): a connection that may no
        longer read loses its subscriptions and negentropy sessions at once, each closed
        with the reason."""
        if self.access_refusal() is None:
            return
        reason = NO_LONGER_A_MEMBER if self.session.authenticated else AUTH_REQUIRED
        for sub_id in list(self.session.subscriptions):
            self._close_subscription(sub_id)
            self.outbox.offer(msg.closed(sub_id, reason))
        for sub_id in list(self.session.negentropy or {}):
            self.session.neg_close(sub_id)
            self.outbox.offer(msg.neg_err(sub_id, reason))

    async def _admit(self, event: Event) -> None:
        while self._in_flight >= PIPELINED_EVENTS:
            await self._reader_waiting.park()
        self._in_flight += 1
        self._queued.append(event)
        if self._idle_workers:
            self._idle_workers.unpark()
        elif self._workers < self._in_flight:
            self._workers += 1
            self._nursery.start_soon(self._work)

    async def _work(self) -> None:
        try:
            while True:
                while self._queued:
                    await self._submit(self._queued.pop(0))
                if not self._in_flight:
                    return
                await self._idle_workers.park()
        finally:
            self._workers -= 1

    async def _submit(self, event: Event) -> None:
        """One EVENT, concurrently with the client's next frames (OKs may come out of
        order, matched by id as NIP-01 intends)."""
        try:
            if not await self._allowed("event"):
                verdict = Verdict(False, "rate-limited: slow down, too many events")
            else:
                verdict = await self.relay.ingest.submit(
                    self.community_id, event, self.session.authenticated, int(time.time())
                )
            self.relay.metrics.count_verdict(verdict.accepted, verdict.message)
            if verdict.accepted:
                self.accepted += 1
            else:
                self.refused += 1
                log.debug("event %s from %s refused: %s", event.id, self.ip, verdict.message)
            await self.outbox.put(msg.ok(event.id, verdict.accepted, verdict.message))
        finally:
            self._in_flight -= 1
            if self._reader_waiting:
                self._reader_waiting.unpark()
            if self._in_flight == 0:
                self._idle_workers.unpark_all()

    async def _events_settled(self) -> None:
        while self._in_flight:
            await self._reader_waiting.park()

    async def _allowed(self, action: str) -> bool:
        """Per client address, and per authenticated pubkey as well once the client has
        AUTHed; a loopback client is not limited (RELAY_RATE_LIMIT_LOOPBACK)."""
        if not self.rate_limited:
            return True
        limiter = self.relay.limiter
        if not await limiter.allow(action, self.ip):
            return False
        for pubkey in self.session.authenticated:
            if not await limiter.allow(action, f"pubkey:{pubkey}"):
                return False
        return True

    async def _subscribe(self, req: msg.ClientReq) -> None:
        self.reqs += 1
        refusal = self.session.open(req.sub_id, req.filters)
        if refusal is not None:
            await self.outbox.put(msg.closed(req.sub_id, refusal))
            return
        self.relay.fanout.subscribe(self.community_id, self.sink, req.sub_id, req.filters)
        try:
            stored = await self.relay.store.query(
                self.community_id, req.filters, int(time.time())
            )
        except QueryTooExpensive:
            self._close_subscription(req.sub_id)
            await self.outbox.put(msg.closed(req.sub_id, QUERY_TOO_EXPENSIVE))
            return
        except DatabaseError as exc:
            log.error("REQ failed: %s", exc)
            self._close_subscription(req.sub_id)
            await self.outbox.put(msg.closed(req.sub_id, QUERY_FAILED))
            return
        for _, raw in stored:
            await self.outbox.put(msg.event_frame(req.sub_id, raw))
        invite = await self._invite_for(req)
        if invite is not None:
            await self.outbox.put(msg.event_frame(req.sub_id, invite.to_json()))
        await self.outbox.put(msg.eose(req.sub_id))
        sent = {event_id for event_id, _ in stored}
        for raw in self.session.go_live(req.sub_id, sent):
            await self.outbox.put(msg.event_frame(req.sub_id, raw))

    async def _invite_for(self, req: msg.ClientReq) -> Event | None:
        """NIP-43: a member's REQ for kind 28935 in a members-only community gets a fresh
        invite signed by the relay (not stored)."""
        access = self.relay.moderation.access(self.community_id)
        if not access.members_only or not asks_for_invite(req.filters, self.relay.pubkey):
            return None
        member = next((k for k in sorted(self.session.authenticated) if k in access.members), None)
        if member is None:
            return None
        try:
            return await self.relay.membership.member_invite(self.community_id, member)
        except DatabaseError as exc:
            log.error("making an invite failed: %s", exc)
            return None

    def _close_subscription(self, sub_id: str) -> None:
        self.session.close(sub_id)
        self.relay.fanout.unsubscribe(self.community_id, self.sink, sub_id)

    async def _authenticate(self, event: Event) -> None:
        """NIP-42. An AUTH is rate-limited as a REQ is (its signature check is work on the
        event loop), and a connection authenticates at most limits.max_auth_keys keys."""
        if not await self._allowed("req"):
            reason: str | None = "rate-limited: slow down, too many requests"
        else:
            reason = check_auth_event(
                event, self.session.challenge, self.session.hosts, int(time.time()),
                self.relay.limits,
            ) or self.session.authenticate(event.pubkey)  # fmt: skip
        await self.outbox.put(msg.ok(event.id, reason is None, reason or ""))
