"""Refuse an oversized websocket message from its frame headers, before its payload.

trio-websocket counts a message's size as its payload arrives, so a client that announces
2^62 bytes is refused only once the relay has read `max_message_bytes` of them, and one
that announces too much and then sends nothing holds its connection open. This guard
follows the frame headers in the client's bytes and stops them at the first header that
takes its message (all its fragments together) over the limit.

It also bounds the frames of one message (`MAX_MESSAGE_FRAMES`): endless empty continuation
frames carry no payload to count, but every one is kept until the message ends.

It does not parse frames: wsproto does, after the guard. Anything else wrong with a header
(an unmasked frame, a reserved opcode, a 64-bit length with its top bit set) is left to
wsproto, which closes with the code RFC 6455 calls for. Sans-IO: bytes in, a count out.
"""

from __future__ import annotations

MESSAGE_TOO_BIG = 1009
# Frames one message may come in (RFC 6455 sets no bound; clients rarely fragment at all).
MAX_MESSAGE_FRAMES = 1024
# The longest frame header: 2 bytes, a 64-bit extended length, a 4-byte masking key.
MAX_HEADER_BYTES = 14
_CONTINUATION, _TEXT, _BINARY = 0x0, 0x1, 0x2
_LENGTH_TOP_BIT = 1 << 63


def _parse_header(head: bytes) -> tuple[int, int, int] | None:
    """(header size, opcode, payload length) of the frame that starts `head`; None when
    `head` does not hold the whole header yet."""
    if len(head) < 2:
        return None
    short = head[1] & 0x7F
    size = 2 + (4 if head[1] & 0x80 else 0)
    if short == 126:
        size += 2
        length = int.from_bytes(head[2:4], "big")
    elif short == 127:
        size += 8
        length = int.from_bytes(head[2:10], "big")
    else:
        length = short
    if len(head) < size:
        return None
    return size, head[0] & 0x0F, length


class MessageSizeGuard:
    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self.refused = False
        self._partial_header = b""
        self._payload_left = 0  # bytes of the current frame's payload still to come
        self._message_bytes = 0  # payload of the current data message so far
        self._message_frames = 0
        self.reason = ""

    def accept(self, data: bytes) -> int:
        """How many bytes of `data` may go on to the websocket parser: all of them, or the
        ones before the header that announces too much (then `refused` is set and every
        later call answers 0)."""
        if self.refused:
            return 0
        pos, end = 0, len(data)
        while pos < end:
            if self._payload_left:
                step = min(self._payload_left, end - pos)
                self._payload_left -= step
                pos += step
                continue
            head = self._partial_header + data[pos : pos + MAX_HEADER_BYTES]
            parsed = _parse_header(head)
            if parsed is None:  # the rest of `data` is the start of a header
                self._partial_header = head
                return end
            size, opcode, length = parsed
            if opcode in (_CONTINUATION, _TEXT, _BINARY):
                self.reason = self._count(opcode == _CONTINUATION, length)
                if self.reason:
                    self.refused = True
                    return pos
            pos += size - len(self._partial_header)
            self._partial_header = b""
            self._payload_left = length
        return end

    def _count(self, continuation: bool, length: int) -> str:
        """Add a data frame to its message; the refusal reason if the message is too big."""
        if continuation:
            self._message_bytes += length
            self._message_frames += 1
        else:
            self._message_bytes, self._message_frames = length, 1
        if self._message_bytes > self.max_message_bytes and not length & _LENGTH_TOP_BIT:
            return f"message longer than {self.max_message_bytes} bytes"
        if self._message_frames > MAX_MESSAGE_FRAMES:
            return f"message in more than {MAX_MESSAGE_FRAMES} frames"
        return ""
