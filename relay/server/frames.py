"""RFC 6455 framing for the server side, sans-IO: bytes in, messages and replies out.

What a client sends is checked as the RFC requires of a server, and every violation is a
`ProtocolError` carrying the close code to send:

- 1002: an unmasked frame, a reserved bit set (no extension is ever negotiated), an
  unknown opcode, a 64-bit length with its top bit set, a control frame that is
  fragmented or longer than 125 bytes, a continuation with no message to continue, a new
  message inside a fragmented one, a close frame with a 1-byte body or a code a peer may
  not send (anything but 1000-1003, 1007-1014 and 3000-4999);
- 1007: a text message, or a close reason, that is not UTF-8;
- 1009: a message (all its fragments together) longer than the limit, refused as soon
  as its frame headers announce it, before its payload is buffered.

Server frames are never masked and never fragmented.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
DATA_OPCODES = (OP_CONTINUATION, OP_TEXT, OP_BINARY)
CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)
MAX_CONTROL_PAYLOAD = 125

NORMAL, GOING_AWAY, PROTOCOL_ERROR = 1000, 1001, 1002
NO_STATUS, ABNORMAL = 1005, 1006
INVALID_DATA, POLICY_VIOLATION, TOO_BIG = 1007, 1008, 1009


class ProtocolError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    data: str | bytes  # str for a text message, bytes for a binary one


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int  # NO_STATUS when the frame had no body
    reason: str


Incoming = Message | Ping | Pong | Close


def _valid_close_code(code: int) -> bool:
    """Codes a peer may put in a close frame (RFC 6455 7.4)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or (
        3000 <= code <= 4999
    )


def unmask(payload: bytes | bytearray | memoryview, key: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return b""
    repeated = (key * ((n >> 2) + 1))[:n]
    value = int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")
    return value.to_bytes(n, "little")


def _header(opcode: int, length: int) -> bytes:
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)


def encode(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked server frame."""
    return _header(opcode, len(payload)) + payload


def encode_text(text: str) -> bytes:
    return encode(OP_TEXT, text.encode())


def encode_close(code: int, reason: str = "") -> bytes:
    """A close frame; a long reason is cut to fit 125 bytes, never inside a character."""
    cut = reason.encode()[: MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore").encode()
    return encode(OP_CLOSE, struct.pack("!H", code) + cut)


class FrameReader:
    """Feed it the bytes the client sent; take the complete messages and control frames."""

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._buf = bytearray()
        self._pos = 0
        self._parts: list[bytes] = []
        self._parts_bytes = 0
        self._message_opcode: int | None = None  # of the fragmented message in progress

    def feed(self, data: bytes | bytearray) -> None:
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > 65536:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next(self) -> Incoming | None:
        """The next complete message or control frame, or None until more bytes come."""
        while True:
            buf, pos = self._buf, self._pos
            available = len(buf) - pos
            if available < 2:
                return None
            b0, b1 = buf[pos], buf[pos + 1]
            fin, opcode, length = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if b0 & 0x70:
                raise ProtocolError(PROTOCOL_ERROR, "reserved bits set")
            if not b1 & 0x80:
                raise ProtocolError(PROTOCOL_ERROR, "client frames must be masked")
            header = 2
            if length == 126:
                if available < 4:
                    return None
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                header = 4
            elif length == 127:
                if available < 10:
                    return None
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                header = 10
                if length >> 63:
                    raise ProtocolError(PROTOCOL_ERROR, "64-bit length with its top bit set")
            self._check_header(fin, opcode, length)
            if available < header + 4 + length:
                return None
            key = bytes(buf[pos + header : pos + header + 4])
            start = pos + header + 4
            payload = unmask(memoryview(buf)[start : start + length], key)
            self._pos = start + length
            event = self._frame(fin, opcode, payload)
            if event is not None:
                return event

    def _check_header(self, fin: int, opcode: int, length: int) -> None:
        if opcode in CONTROL_OPCODES:
            if not fin:
                raise ProtocolError(PROTOCOL_ERROR, "fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                raise ProtocolError(PROTOCOL_ERROR, "control frame too long")
            return
        if opcode not in DATA_OPCODES:
            raise ProtocolError(PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if opcode == OP_CONTINUATION and self._message_opcode is None:
            raise ProtocolError(PROTOCOL_ERROR, "continuation frame with no message")
        if opcode != OP_CONTINUATION and self._message_opcode is not None:
            raise ProtocolError(PROTOCOL_ERROR, "new message inside a fragmented one")
        if self._parts_bytes + length > self.max_message_bytes:
            raise ProtocolError(
                TOO_BIG, f"message longer than {self.max_message_bytes} bytes"
            )

    def _frame(self, fin: int, opcode: int, payload: bytes) -> Incoming | None:
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        if opcode == OP_CLOSE:
            return _close(payload)
        if opcode != OP_CONTINUATION:
            self._message_opcode = opcode
        if not fin:
            self._parts.append(payload)
            self._parts_bytes += len(payload)
            return None
        if self._parts:
            self._parts.append(payload)
            payload = b"".join(self._parts)
            self._parts = []
            self._parts_bytes = 0
        message_opcode, self._message_opcode = self._message_opcode, None
        if message_opcode == OP_BINARY:
            return Message(payload)
        try:
            return Message(payload.decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError(INVALID_DATA, "text message is not valid UTF-8") from None


def _close(payload: bytes) -> Close:
    if not payload:
        return Close(NO_STATUS, "")
    if len(payload) == 1:
        raise ProtocolError(PROTOCOL_ERROR, "close frame with a 1-byte body")
    code = (payload[0] << 8) | payload[1]
    if not _valid_close_code(code):
        raise ProtocolError(PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        return Close(code, payload[2:].decode("utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError(INVALID_DATA, "close reason is not valid UTF-8") from None
