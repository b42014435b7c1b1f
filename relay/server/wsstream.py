"""The byte stream under one trio-websocket connection, and the end of that connection.

trio-websocket parses and frames every message; this stream is what it reads from and
writes to, and it does four things trio-websocket leaves to the stream's owner:

- **Replay**: the listener has already read the request head (to route by Host and path);
  the stream hands those bytes to trio-websocket first, so its handshake sees the request.
- **Size before payload**: the client's bytes pass `MessageSizeGuard`, so a header that
  announces an oversized message ends the connection with 1009 at once (trio-websocket
  would count the payload as it arrives).
- **Whole frames, batched**: a write cancelled part-way (a slow consumer being dropped)
  keeps its unsent rest, which goes out before anything else, so the client never gets a
  cut frame followed by another; `send_messages` has trio-websocket frame several
  messages and writes them in one system call.
- **The close frame of a protocol error**: when wsproto finds one (invalid UTF-8 is 1007,
  an unmasked frame 1002), trio-websocket drops TCP without a close frame; RFC 6455 (7.1.7)
  wants the endpoint to send one, so `finish` does, then waits for the client's EOF.
"""

from __future__ import annotations

import contextlib
import struct

import trio
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection

from relay.server.wsguard import MESSAGE_TOO_BIG, MessageSizeGuard

# How long a closing connection waits for the client's close frame (or its EOF), and for
# what it still owes the client to be written.
CLOSE_HANDSHAKE_SECONDS = 1.0
RECEIVE_BYTES = 64 * 1024
NORMAL_CLOSURE, ABNORMAL_CLOSURE = 1000, 1006
# A server frame is never masked: its first byte is FIN and the opcode (8 for close).
_CLOSE_FRAME_FIRST_BYTE = 0x88
_CLOSE_FIRST = bytes((_CLOSE_FRAME_FIRST_BYTE,))
_EMPTY_CLOSE = bytes((_CLOSE_FRAME_FIRST_BYTE, 0))
_MAX_CLOSE_REASON_BYTES = 123
_LOST = CloseReason(ABNORMAL_CLOSURE, "the connection was lost")


def close_frame(code: int, reason: str) -> bytes:
    """A server's close frame; the reason cut to fit a control frame, between characters."""
    text = reason.encode("utf-8")[:_MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")
    payload = struct.pack("!H", code) + text.encode("utf-8")
    return bytes((_CLOSE_FRAME_FIRST_BYTE, len(payload))) + payload


class WebSocketStream(trio.abc.Stream):
    def __init__(self, stream: trio.SocketStream, raw: bytes, frames: bytes, limit: int) -> None:
        """`raw` is every byte the listener read; its last `len(frames)` bytes came after
        the request head."""
        self._stream = stream
        self._head = raw[: len(raw) - len(frames)]
        self._early = frames
        self._guard = MessageSizeGuard(limit)
        self._answered: trio.Event | None = trio.Event()
        self._pending: list[bytes] = []  # a list, not a deque: 56 bytes while empty
        self._writing = trio.Lock()
        self._holding = False
        self._close_sent = False
        self._released = False  # trio-websocket is done with the stream

    # -- what trio-websocket reads -----------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._head:
            data, self._head = self._head, b""
            return data
        if self._answered is not None:
            # Frames wsproto gets before the handshake's answer has gone out wait inside it
            # until more bytes come (which may be never): hold them back until then.
            await self._answered.wait()
            self._answered = None
        if self._early:
            data, self._early = self._early, b""
        elif self._guard.refused or self._released:
            return b""  # to trio-websocket the connection ends; `finish` ends it for real
        else:
            data = await self._receive(max_bytes or RECEIVE_BYTES)
        return data[: self._guard.accept(data)]

    async def _receive(self, max_bytes: int) -> bytes:
        # The socket itself, as writes go: an idle connection waits here for its life, and
        # SocketStream.receive_some would keep two more frames and a context manager.
        try:
            return await self._stream.socket.recv(max_bytes)
        except OSError as exc:
            raise trio.BrokenResourceError("the connection was lost") from exc

    # -- what trio-websocket writes ----------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        chunk = bytes(data)
        if self._answered is not None:
            self._answered.set()  # the first write is the answer to the handshake
        if chunk[:1] == _CLOSE_FIRST:
            self._close_sent = True
            if chunk == _EMPTY_CLOSE:  # the echo of a close without a code: say 1000
                chunk = close_frame(NORMAL_CLOSURE, "")
        self._pending.append(chunk)
        if not self._holding:
            await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """trio-websocket is done: the TCP connection is closed by `finish`, which knows
        whether a close frame is still owed."""
        self._released = True
        await trio.lowlevel.checkpoint()

    async def _flush(self) -> None:
        """Write everything pending, whole; if cancelled part-way, the rest stays first."""
        if self._writing.locked():
            await self._writing.acquire()
        else:
            self._writing.acquire_nowait()  # no checkpoint when nobody else writes
        try:
            sock = self._stream.socket
            while self._pending:
                data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
                self._pending.clear()
                view = memoryview(data)
                try:
                    while view:
                        view = view[await sock.send(view) :]
                except OSError as exc:
                    self._pending.clear()
                    raise trio.BrokenResourceError("the connection was lost") from exc
                except BaseException:
                    if view:
                        self._pending.insert(0, bytes(view))
                    raise
        finally:
            self._writing.release()

    # -- what the relay adds -----------------------------------------------------------------

    async def send_messages(self, ws: WebSocketConnection, messages: list[str]) -> None:
        """Several text messages, framed by trio-websocket, in one write."""
        if len(messages) == 1:
            await ws.send_message(messages[0])
            return
        self._holding = True
        try:
            for message in messages:
                await ws.send_message(message)
        finally:
            self._holding = False
            try:
                await self._flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ConnectionClosed(_LOST) from None

    async def finish(self, closed: CloseReason | None) -> None:
        """End the TCP connection, after the close frame of a protocol error if one is owed
        (then waiting, briefly, for the client's EOF, so unread bytes do not reset it)."""
        with trio.move_on_after(CLOSE_HANDSHAKE_SECONDS) as scope:
            scope.shield = True
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self._flush()
                failure = self._failure(closed)
                if failure is not None:
                    self._pending.append(close_frame(*failure))
                    await self._flush()
                    await self._stream.send_eof()
                    while await self._stream.receive_some(RECEIVE_BYTES):
                        pass
        await self._stream.aclose()

    def _failure(self, closed: CloseReason | None) -> tuple[int, str] | None:
        """(code, reason) of the close frame still owed to the client, if any."""
        if self._close_sent:
            return None
        if self._guard.refused:
            return MESSAGE_TOO_BIG, self._guard.reason
        if closed is None or closed.code in (NORMAL_CLOSURE, ABNORMAL_CLOSURE):
            return None
        return closed.code, closed.reason or ""
