"""A minimal websocket client for timing queries: frames are parsed by hand.

A relay answers a limit-500 query with 500 text frames. A general client library spends
tens of microseconds of Python on each (events, buffers, UTF-8 checks), which on this
machine is as much time as the relay needs to produce the answer. This client does the
RFC 6455 handshake, sends masked text frames, and reads the server's unmasked frames
straight out of one buffer, so the latency it reports is mostly the relay's.

It speaks only what a query needs: text frames (fragmented or not), ping (answered), pong
(ignored) and close. Loopback only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import struct

import trio

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 16 * 1024
MAX_MESSAGE = 16 * 1024 * 1024
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class WebSocketError(Exception):
    """The server broke the protocol, refused the upgrade or closed the connection."""


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(
        n, "little"
    )


def frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    key = os.urandom(4)
    return head + key + _mask(payload, key)


class RawWebSocket:
    def __init__(self, stream: trio.SocketStream, leftover: bytes) -> None:
        self.stream = stream
        self._buf = bytearray(leftover)
        self._pos = 0
        # A pong (sent by whoever is reading) must not interleave with other writes.
        self._send_lock = trio.Lock()

    @classmethod
    async def connect(
        cls, host: str, port: int, path: str = "/", host_header: str = ""
    ) -> RawWebSocket:
        stream = await trio.open_tcp_stream(host, port)
        key = base64.b64encode(os.urandom(16))
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host_header or f'{host}:{port}'}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await stream.send_all(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(4096)
            if not chunk:
                raise WebSocketError("the server closed the connection during the handshake")
            head += chunk
            if len(head) > MAX_HEAD:
                raise WebSocketError("the handshake response is too long")
        head, _, leftover = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/1.1 101"):
            raise WebSocketError(f"upgrade refused: {lines[0]}")
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        if fields.get("sec-websocket-accept") != accept:
            raise WebSocketError("wrong Sec-WebSocket-Accept")
        return cls(stream, leftover)

    async def _send(self, data: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(data)

    async def send_message(self, text: str) -> None:
        await self._send(frame(OP_TEXT, text.encode()))

    async def send_frames(self, frames: bytes) -> None:
        """Frames made beforehand with `frame`, in one write."""
        await self._send(frames)

    async def get_message(self) -> str:
        return (await self.receive()).decode()

    async def _fill(self, need: int) -> None:
        """Read until `need` bytes are buffered past the read position."""
        while len(self._buf) - self._pos < need:
            if self._pos > 1 << 20:
                del self._buf[: self._pos]
                self._pos = 0
            try:
                chunk = await self.stream.receive_some(256 * 1024)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise WebSocketError(f"the connection ended: {exc}") from None
            if not chunk:
                raise WebSocketError("the server closed the connection")
            self._buf += chunk

    async def _frame(self) -> tuple[bool, int, bytes]:
        await self._fill(2)
        b0, b1 = self._buf[self._pos], self._buf[self._pos + 1]
        if b1 & 0x80:
            raise WebSocketError("the server masked a frame")
        n, header = b1 & 0x7F, 2
        if n == 126:
            await self._fill(4)
            n, header = struct.unpack_from("!H", self._buf, self._pos + 2)[0], 4
        elif n == 127:
            await self._fill(10)
            n, header = struct.unpack_from("!Q", self._buf, self._pos + 2)[0], 10
        if n > MAX_MESSAGE:
            raise WebSocketError(f"a frame of {n} bytes")
        await self._fill(header + n)
        start = self._pos + header
        payload = bytes(self._buf[start : start + n])
        self._pos = start + n
        return bool(b0 & 0x80), b0 & 0x0F, payload

    async def receive(self) -> bytes:
        """The next text message's bytes (ping answered, pong skipped)."""
        parts: list[bytes] = []
        while True:
            fin, opcode, payload = await self._frame()
            if opcode == OP_PING:
                await self._send(frame(OP_PONG, payload))
            elif opcode == OP_PONG:
                continue
            elif opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                raise WebSocketError(f"closed by the server ({code} {payload[2:]!r})")
            elif (opcode in (OP_TEXT, OP_BINARY) and not parts) or (opcode == OP_CONT and parts):
                parts.append(payload)
                if fin:
                    return b"".join(parts)
            else:
                raise WebSocketError(f"unexpected opcode {opcode}")

    async def aclose(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._send(frame(OP_CLOSE, struct.pack("!H", 1000)))
        await self.stream.aclose()
