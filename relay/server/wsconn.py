"""The server side of one websocket: the upgrade, then messages over `frames`.

The connection keeps no task of its own: `get_message` reads the socket when the relay asks
for the next message (so a client that sends faster than the relay reads is held back by
TCP, not by a queue), answers pings on the way and completes a close handshake the client
starts. Sends take a lock, so the writer task and a farewell notice never interleave
frames. A protocol error in what the client sent is answered with the close frame its
code calls for (see `frames`) before the connection ends.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib

import h11
import trio

from relay.server import frames
from relay.server.http import BadRequest, Request

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RECEIVE_BYTES = 64 * 1024
# How long a closing connection waits for the client's close frame (or its EOF).
CLOSE_HANDSHAKE_SECONDS = 1.0


class ConnectionClosed(Exception):
    """The websocket is closed: by a close frame either way, or the TCP connection ended
    (ABNORMAL, 1006)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        self.reason = reason


class HandshakeRefused(BadRequest):
    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        super().__init__(status, reason)
        self.headers = headers


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest()).decode()


def check_upgrade(request: Request) -> tuple[str, bytes]:
    """(Sec-WebSocket-Accept, bytes the client sent after the head) for a valid RFC 6455
    upgrade request; HandshakeRefused otherwise."""
    if request.method != "GET":
        raise HandshakeRefused(400, "a websocket upgrade must be a GET", [])
    tokens = {t.strip().lower() for t in request.header("connection").split(",")}
    if "upgrade" not in tokens:
        raise HandshakeRefused(400, "a websocket upgrade needs Connection: Upgrade", [])
    if request.header("sec-websocket-version").strip() != "13":
        raise HandshakeRefused(
            426, "unsupported websocket version: this relay speaks 13",
            [("Sec-WebSocket-Version", "13")],
        )  # fmt: skip
    key = request.header("sec-websocket-key").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise HandshakeRefused(400, "Sec-WebSocket-Key must be 16 bytes in base64", [])
    return accept_key(key), _after_head(request)


def _after_head(request: Request) -> bytes:
    conn = request.conn
    while True:
        event = conn.next_event()
        if event is h11.PAUSED:  # the head asked for a protocol switch: the rest is frames
            return bytes(conn.trailing_data[0])
        if not isinstance(event, h11.EndOfMessage):
            raise HandshakeRefused(400, "a websocket upgrade has no body", [])


def accept_response(accept: str) -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode("ascii")


class WebSocket:
    def __init__(self, stream: trio.SocketStream, leftover: bytes, max_message_bytes: int) -> None:
        self.stream = stream
        self._reader = frames.FrameReader(max_message_bytes)
        self._reader.feed(leftover)
        self._send_lock = trio.Lock()
        # The rest of a write cancelled part-way (a slow consumer being dropped): it goes
        # out first next time, so the client never gets a cut frame followed by another.
        self._unsent = b""
        self._close_sent = False
        self._failed = False  # the client broke the protocol: its bytes are not frames
        self.closed: ConnectionClosed | None = None

    async def get_message(self) -> str | bytes:
        """The next text (str) or binary (bytes) message; ConnectionClosed when none will come."""
        while True:
            if self.closed is not None:
                raise self.closed
            try:
                event = self._reader.next()
            except frames.ProtocolError as exc:
                self._failed = True
                await self._send_close(exc.code, exc.reason)
                self.closed = ConnectionClosed(exc.code, exc.reason)
                raise self.closed from None
            if event is None:
                await self._receive()
            elif isinstance(event, frames.Message):
                return event.data
            elif isinstance(event, frames.Ping):
                await self._send_raw(frames.encode(frames.OP_PONG, event.payload))
            elif isinstance(event, frames.Close):
                # The client starts the closing handshake: echo its code, then it is over.
                echo = frames.NORMAL if event.code == frames.NO_STATUS else event.code
                await self._send_close(echo, "")
                self.closed = ConnectionClosed(event.code, event.reason)

    async def _receive(self) -> None:
        try:
            data = await self.stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.closed = ConnectionClosed(frames.ABNORMAL, "the connection was lost")
            raise self.closed
        self._reader.feed(data)

    async def send_message(self, text: str) -> None:
        await self._send_raw(frames.encode_text(text))

    async def send_messages(self, texts: list[str]) -> None:
        """Several text messages in one write."""
        await self._send_raw(b"".join(frames.encode_text(t) for t in texts))

    async def _send_raw(self, data: bytes) -> None:
        if self.closed is not None or self._close_sent:
            raise self.closed or ConnectionClosed(frames.ABNORMAL, "closing")
        async with self._send_lock:
            try:
                await self._write(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self.closed = ConnectionClosed(frames.ABNORMAL, "the connection was lost")
                raise self.closed from None

    async def _write(self, data: bytes) -> None:
        """Write whole; if cancelled part-way, keep what is left for the next write."""
        view = memoryview(self._unsent + data if self._unsent else data)
        self._unsent = b""
        sock = self.stream.socket
        try:
            while view:
                view = view[await sock.send(view) :]
        except BaseException:
            self._unsent = bytes(view)
            raise

    async def _send_close(self, code: int, reason: str) -> None:
        if self._close_sent:
            return
        self._close_sent = True
        # Shielded: the close frame is what tells the client why, and the task sending it
        # may be cancelled (the writer stops as soon as a close is under way).
        with trio.move_on_after(CLOSE_HANDSHAKE_SECONDS) as scope:
            scope.shield = True
            async with self._send_lock:
                with contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError, OSError
                ):
                    await self._write(frames.encode_close(code, reason))

    async def aclose(self, code: int = frames.NORMAL, reason: str = "") -> None:
        """Send a close frame (once) and wait, briefly, for the client to answer or leave;
        the caller then closes the TCP connection."""
        already_closed = self.closed is not None
        await self._send_close(code, reason)
        if already_closed and not self._failed:
            return  # the client's close frame came first, or the connection was lost
        if self.closed is None:
            self.closed = ConnectionClosed(code, reason)
        with trio.move_on_after(CLOSE_HANDSHAKE_SECONDS):
            await self._drain()

    async def _drain(self) -> None:
        """Read until the client's close frame or EOF, dropping messages; after a protocol
        error the bytes are not frames, so only EOF ends it."""
        while True:
            if not self._failed:
                try:
                    while (event := self._reader.next()) is not None:
                        if isinstance(event, frames.Close):
                            return
                except frames.ProtocolError:
                    self._failed = True
            try:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            if not self._failed:
                self._reader.feed(data)
