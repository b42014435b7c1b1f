"""The bus between the worker processes of one relay (RELAY_WORKERS > 1), owned by the
supervising parent: a unix socket, one stream per worker, length-prefixed frames.

It carries three things:
- **Events** (without Redis): each worker sends every event it accepted, after it is
  stored, exactly as the Redis bridge publishes it; the hub forwards it to every *other*
  worker, which delivers it to its own subscribers. One stream per worker, forwarded in
  arrival order, so a connection's events arrive in the order they were accepted, nothing
  echoes to its origin, and nothing rolled back is ever sent (the send follows the commit).
- **Rate-limit checks**: the token buckets of client addresses live in the hub, so a
  client spread over workers meets one limit; a check that is not answered within
  SHARED_TIMEOUT_SECONDS is decided by the worker's own buckets.
- **Metrics**: a scrape on any worker asks the hub, which asks every worker for its
  exposition and answers with all of them, each sample labelled `worker="<index>"`.

Frames: 4-byte big-endian length (of what follows), 1 type byte, the payload.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import trio

from relay.events.model import Event, InvalidEvent, parse_event
from relay.protocol.limits import RateLimits, TokenBuckets

log = logging.getLogger(__name__)

QUEUE_EVENTS = 10_000
MAX_FRAME_BYTES = 64 * 1024 * 1024
CONNECT_SECONDS = 30.0
# A rate-limit check or a metrics gathering the hub does not answer in time.
SHARED_TIMEOUT_SECONDS = 0.1
GATHER_SECONDS = 2.0

HELLO, EVENT, RATE, RATE_ANSWER = b"H", b"E", b"R", b"A"
GATHER, GATHERED, EXPOSE, EXPOSITION = b"G", b"g", b"X", b"x"
_LENGTH = struct.Struct("!I")


def frame(kind: bytes, payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload) + 1) + kind + payload


class FrameReader:
    """Frames off a stream: the next one (waiting for it), or those already read whole."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.start = 0  # where the first unread frame begins

    def _complete(self) -> tuple[bytes, bytes] | None:
        """The next frame if the buffer holds all of it."""
        buffer, start = self.buffer, self.start
        if len(buffer) - start < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack_from(buffer, start)
        if not 1 <= length <= MAX_FRAME_BYTES:
            raise ValueError(f"bad frame length {length}")
        end = start + _LENGTH.size + length
        if len(buffer) < end:
            return None
        self.start = end
        body = bytes(buffer[start + _LENGTH.size : end])
        return body[:1], body[1:]

    def buffered(self) -> list[tuple[bytes, bytes]]:
        """Every frame already read whole, without waiting."""
        frames = []
        while (found := self._complete()) is not None:
            frames.append(found)
        return frames

    async def next(self) -> tuple[bytes, bytes] | None:
        """The next frame; None at the end of the stream."""
        while (found := self._complete()) is None:
            if self.start:
                del self.buffer[: self.start]
                self.start = 0
            chunk = await self.stream.receive_some(256 * 1024)
            if not chunk:
                return None
            self.buffer += chunk
        return found


class _Peer:
    """A worker's stream, as the hub holds it; writes go through one lock."""

    def __init__(self, index: int, stream: trio.abc.Stream) -> None:
        self.index = index
        self.stream = stream
        self.lock = trio.Lock()

    async def send(self, data: bytes) -> None:
        async with self.lock:
            await self.stream.send_all(data)


@dataclass
class Hub:
    """The parent's end: forwards events, keeps the shared rate limits, gathers metrics."""

    path: str
    limits: RateLimits
    carry_events: bool  # False when Redis carries them (RELAY_REDIS_URL)
    peers: dict[int, _Peer] = field(default_factory=dict)
    forwarded: int = 0
    _gathers: itertools.count[int] = field(default_factory=itertools.count)
    _waiting: dict[int, tuple[dict[int, bytes], trio.Event, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.buckets = TokenBuckets()
        self._tasks: trio.Nursery | None = None

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(self.path)
        sock.listen(256)
        listener = trio.SocketListener(sock)
        async with trio.open_nursery() as nursery:
            self._tasks = nursery
            task_status.started()
            await trio.serve_listeners(self._serve_peer, [listener], handler_nursery=nursery)

    async def _serve_peer(self, stream: trio.SocketStream) -> None:
        reader = FrameReader(stream)
        peer: _Peer | None = None
        try:
            async with stream:
                hello = await reader.next()
                if hello is None or hello[0] != HELLO:
                    return
                peer = _Peer(int(hello[1]), stream)
                self.peers[peer.index] = peer
                while (message := await reader.next()) is not None:
                    # Everything read whole so far at once: the events go on to each other
                    # worker in one write, whatever their number.
                    batch = [message, *reader.buffered()]
                    events = [frame(EVENT, p) for kind, p in batch if kind == EVENT]
                    if events and self.carry_events:
                        await self._forward(peer, b"".join(events), len(events))
                    for kind, payload in batch:
                        if kind != EVENT:
                            await self._on_frame(peer, kind, payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError) as exc:
            log.debug("worker bus stream ended: %s", exc)
        finally:
            if peer is not None and self.peers.get(peer.index) is peer:
                del self.peers[peer.index]

    async def _forward(self, origin: _Peer, data: bytes, count: int) -> None:
        for other in list(self.peers.values()):
            if other is not origin:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await other.send(data)
                    self.forwarded += count

    async def _on_frame(self, peer: _Peer, kind: bytes, payload: bytes) -> None:
        if kind == RATE:
            request_id, action, who = payload.decode().split(" ", 2)
            rate = self.limits.rate_of(action)
            allowed = self.buckets.take(action, who, rate)
            await peer.send(frame(RATE_ANSWER, f"{request_id} {int(allowed)}".encode()))
        elif kind == GATHER and self._tasks is not None:
            # Not here: the asking worker's own exposition arrives on this very stream.
            self._tasks.start_soon(self._answer_gather, peer, payload.decode())
        elif kind == EXPOSITION:
            gather_id, _, text = payload.partition(b" ")
            waiting = self._waiting.get(int(gather_id))
            if waiting is not None:
                texts, done, expected = waiting
                texts[peer.index] = text
                if len(texts) >= expected:
                    done.set()

    async def _answer_gather(self, peer: _Peer, request_id: str) -> None:
        texts = await self._gather()
        body = orjson.dumps({str(k): v.decode() for k, v in texts.items()})
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await peer.send(frame(GATHERED, request_id.encode() + b" " + body))

    async def _gather(self) -> dict[int, bytes]:
        """Every worker's metrics exposition, those that answer within GATHER_SECONDS."""
        gather_id = next(self._gathers)
        texts: dict[int, bytes] = {}
        done = trio.Event()
        peers = list(self.peers.values())
        self._waiting[gather_id] = (texts, done, len(peers))
        try:
            for peer in peers:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await peer.send(frame(EXPOSE, str(gather_id).encode()))
            with trio.move_on_after(GATHER_SECONDS):
                await done.wait()
        finally:
            del self._waiting[gather_id]
        return dict(sorted(texts.items()))


@dataclass
class WorkerBus:
    """A worker's end: a Remote for the fan-out, shared rate limits, gathered metrics."""

    path: str
    index: int
    deliver: Callable[[int, Event, str], None]
    expose: Callable[[], bytes]  # this worker's own metrics exposition
    carry_events: bool
    # Whether this worker has any subscription in a community (Fanout.listening): events of
    # a community it has none in are dropped unread.
    listening: Callable[[int], bool] = lambda _community_id: True
    # Called when the bus to the parent is lost: the parent is gone, so is the relay.
    on_lost: Callable[[], None] = lambda: None
    sent: int = 0
    received: int = 0
    dropped: int = 0
    connected: bool = False

    def __post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[bytes](QUEUE_EVENTS)
        self._ids = itertools.count()
        self._answers: dict[int, tuple[trio.Event, list[bytes]]] = {}
        self._stream: trio.SocketStream | None = None
        self._lock = trio.Lock()

    # -- Remote --------------------------------------------------------------------------------

    def send(self, community_id: int, raw: str) -> None:
        """Queue an accepted event for the other workers; never blocks the caller."""
        try:
            self._send.send_nowait(frame(EVENT, f"{community_id} {raw}".encode()))
        except trio.WouldBlock:
            self.dropped += 1
            log.warning("worker bus queue full; an event reaches only this worker")

    # -- requests to the hub ---------------------------------------------------------------------

    async def allow(self, action: str, who: str) -> bool | None:
        """The hub's verdict on a rate-limited action, or None when it did not answer."""
        answer = await self._ask(RATE, f"{action} {who}", SHARED_TIMEOUT_SECONDS)
        return None if answer is None else answer == b"1"

    async def gather_metrics(self) -> dict[int, bytes] | None:
        """Every worker's metrics exposition, by worker index; None when the hub is away."""
        answer = await self._ask(GATHER, "", GATHER_SECONDS + 1)
        if answer is None:
            return None
        return {int(k): v.encode() for k, v in orjson.loads(answer).items()}

    async def _ask(self, kind: bytes, text: str, timeout: float) -> bytes | None:
        stream = self._stream
        if stream is None:
            return None
        request_id = next(self._ids)
        done, answer = trio.Event(), list[bytes]()
        self._answers[request_id] = (done, answer)
        payload = f"{request_id} {text}".rstrip().encode()
        try:
            with trio.move_on_after(timeout):
                async with self._lock:
                    await stream.send_all(frame(kind, payload))
                await done.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        finally:
            del self._answers[request_id]
        return answer[0] if answer else None

    # -- the connection ----------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect to the hub (it is up before any worker starts), then send and receive
        until the hub goes, which only happens when the whole relay stops."""
        with trio.fail_after(CONNECT_SECONDS):
            while True:
                try:
                    stream = await trio.open_unix_socket(self.path)
                    break
                except OSError:
                    await trio.sleep(0.05)
        async with stream:
            await stream.send_all(frame(HELLO, str(self.index).encode()))
            self._stream = stream
            self.connected = True
            task_status.started()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_forever, stream)
                    await self._receive_forever(stream)
                    nursery.cancel_scope.cancel()
            finally:
                self.connected = False
                self._stream = None
        log.warning("worker %d lost its parent's bus: shutting down", self.index)
        self.on_lost()

    async def _send_forever(self, stream: trio.SocketStream) -> None:
        """Send queued events until the stream breaks (the receiving side then ends too)."""
        while True:
            batch = [await self._receive.receive()]
            while len(batch) < 500:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                async with self._lock:
                    await stream.send_all(b"".join(batch))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.dropped += len(batch)
                log.warning("worker bus lost while sending: %s", exc)
                return
            self.sent += len(batch)

    async def _receive_forever(self, stream: trio.SocketStream) -> None:
        """Take the hub's frames until it closes the stream, or the stream breaks."""
        try:
            await self._receive_frames(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError) as exc:
            log.warning("worker bus lost: %s", exc)

    async def _receive_frames(self, stream: trio.SocketStream) -> None:
        reader = FrameReader(stream)
        while (message := await reader.next()) is not None:
            kind, payload = message
            if kind == EVENT:
                self._on_event(payload)
            elif kind in (RATE_ANSWER, GATHERED):
                request_id, _, answer = payload.partition(b" ")
                waiting = self._answers.get(int(request_id))
                if waiting is not None:
                    waiting[1].append(answer)
                    waiting[0].set()
            elif kind == EXPOSE:
                async with self._lock:
                    await stream.send_all(frame(EXPOSITION, payload + b" " + self.expose()))

    def _on_event(self, payload: bytes) -> None:
        community, _, rest = payload.partition(b" ")
        try:
            community_id = int(community)
            self.received += 1
            if not self.listening(community_id):
                return
            raw = rest.decode()
            event = parse_event(orjson.loads(raw))
        except (ValueError, InvalidEvent, orjson.JSONDecodeError):
            log.warning("ignoring a malformed event on the worker bus")
            return
        self.deliver(community_id, event, raw)
