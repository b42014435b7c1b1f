"""RFC 6455 on the wire: the relay's own websocket server, driven byte by byte over TCP.

The client here is written by hand (no websocket library) so the handshake and every frame
can be exactly what a test needs, right or wrong; server frames are decoded by hand too
(they are never masked).
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
import trio

from tests.helpers import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RelayUnderTest,
    client_frame,
    close_body,
    connect,
    text_frame,
)

WAIT = 5.0  # the longest any single step may take
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
LIMIT = 128 * 1024  # the relay's default max_message_bytes


def upgrade_request(
    *,
    method: str = "GET",
    key: str | None = RFC_KEY,
    version: str | None = "13",
    connection: str | None = "Upgrade",
    extra: tuple[str, ...] = (),
) -> bytes:
    """A websocket upgrade request head; None leaves a header out."""
    lines = [f"{method} / HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket"]
    if connection is not None:
        lines.append(f"Connection: {connection}")
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    lines += extra
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class RawClient:
    """Bytes in and out of one TCP connection, with the server's frames decoded by hand."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.eof = False

    async def _more(self) -> bool:
        if self.eof:
            return False
        data = await self.stream.receive_some(65536)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    async def read_head(self) -> tuple[int, dict[str, str]]:
        """The response status and headers (names lowercased); the rest stays buffered."""
        with trio.fail_after(WAIT):
            while b"\r\n\r\n" not in self.buf:
                assert await self._more(), f"connection closed mid-head: {bytes(self.buf)!r}"
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    async def read_to_eof(self) -> bytes:
        with trio.fail_after(WAIT):
            while await self._more():
                pass
        data, self.buf = bytes(self.buf), bytearray()
        return data

    async def read_frame(self) -> tuple[bool, int, bytes] | None:
        """(fin, opcode, payload) of the next server frame; None at EOF."""
        with trio.fail_after(WAIT):
            while True:
                frame = self._parse()
                if frame is not None:
                    return frame
                if not await self._more():
                    assert not self.buf, f"EOF inside a frame: {bytes(self.buf)!r}"
                    return None

    def _parse(self) -> tuple[bool, int, bytes] | None:
        buf = self.buf
        if len(buf) < 2:
            return None
        assert buf[0] & 0x70 == 0, "a server frame with a reserved bit"
        assert buf[1] & 0x80 == 0, "a masked server frame"
        length, pos = buf[1] & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return None
            (length,), pos = struct.unpack_from("!H", buf, 2), 4
        elif length == 127:
            if len(buf) < 10:
                return None
            (length,), pos = struct.unpack_from("!Q", buf, 2), 10
        if len(buf) < pos + length:
            return None
        frame = (bool(buf[0] & 0x80), buf[0] & 0x0F, bytes(buf[pos : pos + length]))
        del buf[: pos + length]
        return frame

    async def next_control(self) -> tuple[int, bytes]:
        """The next control frame (opcode, payload), skipping text messages (AUTH)."""
        while True:
            frame = await self.read_frame()
            assert frame is not None, "the relay closed TCP without a close frame"
            fin, opcode, payload = frame
            assert fin, "server frames are never fragmented"
            if opcode != OP_TEXT:
                return opcode, payload

    async def close_code(self) -> int:
        """Read past text messages to the close frame; its code."""
        opcode, payload = await self.next_control()
        assert opcode == OP_CLOSE, (opcode, payload)
        assert len(payload) >= 2, f"close frame without a code: {payload!r}"
        return int(struct.unpack("!H", payload[:2])[0])

    async def texts_until(self, first: str) -> list[list[object]]:
        """Every text message (decoded JSON) and control frame, up to the first text message
        whose verb is `first`; control frames show up as ["<opcode>", payload]."""
        seen: list[list[object]] = []
        while True:
            frame = await self.read_frame()
            assert frame is not None, f"EOF before {first}: {seen}"
            _, opcode, payload = frame
            if opcode == OP_TEXT:
                message = orjson.loads(payload)
                if message[0] == "AUTH":
                    continue
                seen.append(message)
                if message[0] == first:
                    return seen
            else:
                assert opcode != OP_CLOSE, f"closed before {first}: {payload!r}"
                seen.append([f"<{opcode}>", payload])

    async def assert_tcp_closed(self) -> None:
        """The relay ends the TCP connection: nothing but EOF comes any more."""
        assert await self.read_to_eof() == b""

    async def refusal(self) -> tuple[int, dict[str, str]]:
        """An HTTP refusal: status and headers, after its whole body and then EOF."""
        status, headers = await self.read_head()
        assert "sec-websocket-accept" not in headers
        body = await self.read_to_eof()  # the relay closes after one response
        assert len(body) == int(headers["content-length"])
        return status, headers


@asynccontextmanager
async def raw_connection(port: int) -> AsyncIterator[RawClient]:
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        yield RawClient(stream)


@asynccontextmanager
async def websocket(port: int, after_head: bytes = b"") -> AsyncIterator[RawClient]:
    """An upgraded connection; `after_head` goes in the same write as the request head."""
    async with raw_connection(port) as client:
        await client.stream.send_all(upgrade_request() + after_head)
        status, _ = await client.read_head()
        assert status == 101
        yield client


async def assert_relay_serves(relay: RelayUnderTest) -> None:
    """A normal websocket client still gets a whole REQ answered."""
    async with connect(relay.port) as client:
        with trio.fail_after(WAIT):
            assert await client.req("after", {"kinds": [1]}) == []


# -- the handshake -----------------------------------------------------------------------------


async def test_handshake_with_the_rfc_example_key(relay: RelayUnderTest) -> None:
    async with raw_connection(relay.port) as client:
        await client.stream.send_all(upgrade_request(key=RFC_KEY))
        status, headers = await client.read_head()
        assert status == 101
        assert headers["sec-websocket-accept"] == RFC_ACCEPT
        assert headers["upgrade"].lower() == "websocket"
        assert "upgrade" in headers["connection"].lower()
        # Then frames: the relay's first message is its AUTH challenge.
        frame = await client.read_frame()
        assert frame is not None
        fin, opcode, payload = frame
        assert (fin, opcode) == (True, OP_TEXT)
        assert orjson.loads(payload)[0] == "AUTH"


async def test_handshake_accept_is_computed_from_the_key(relay: RelayUnderTest) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    expected = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    async with raw_connection(relay.port) as client:
        await client.stream.send_all(upgrade_request(key=key))
        status, headers = await client.read_head()
        assert status == 101
        assert headers["sec-websocket-accept"] == expected


async def test_wrong_version_is_426_with_the_supported_version(relay: RelayUnderTest) -> None:
    async with raw_connection(relay.port) as client:
        await client.stream.send_all(upgrade_request(version="8"))
        status, headers = await client.refusal()
        assert status == 426
        assert headers["sec-websocket-version"] == "13"
    await assert_relay_serves(relay)


async def test_missing_version_is_426(relay: RelayUnderTest) -> None:
    async with raw_connection(relay.port) as client:
        await client.stream.send_all(upgrade_request(version=None))
        status, headers = await client.refusal()
        assert status == 426
        assert headers["sec-websocket-version"] == "13"
    await assert_relay_serves(relay)


BAD_REQUESTS = {
    "missing key": upgrade_request(key=None),
    "key not base64": upgrade_request(key="not base64 at all!!"),
    "key of 15 bytes": upgrade_request(key=base64.b64encode(b"k" * 15).decode()),
    "key of 17 bytes": upgrade_request(key=base64.b64encode(b"k" * 17).decode()),
    "empty key": upgrade_request(key=""),
    "POST with Upgrade": upgrade_request(method="POST", extra=("Content-Length: 0",)),
    "no Connection header": upgrade_request(connection=None),
    "Connection without Upgrade": upgrade_request(connection="keep-alive"),
    "a body": upgrade_request(extra=("Content-Length: 4",)) + b"body",
}


@pytest.mark.parametrize("request_bytes", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
async def test_bad_upgrade_is_400(relay: RelayUnderTest, request_bytes: bytes) -> None:
    async with raw_connection(relay.port) as client:
        await client.stream.send_all(request_bytes)
        status, _ = await client.refusal()
        assert status == 400
    await assert_relay_serves(relay)


async def test_connection_header_with_several_tokens_is_accepted(relay: RelayUnderTest) -> None:
    async with raw_connection(relay.port) as client:
        await client.stream.send_all(upgrade_request(connection="keep-alive, Upgrade"))
        status, headers = await client.read_head()
        assert status == 101
        assert headers["sec-websocket-accept"] == RFC_ACCEPT


# -- control frames ----------------------------------------------------------------------------


async def test_ping_gets_pong_with_the_same_payload(relay: RelayUnderTest) -> None:
    async with websocket(relay.port) as client:
        await client.stream.send_all(client_frame(OP_PING, b"ping \x00\xff payload"))
        assert await client.next_control() == (OP_PONG, b"ping \x00\xff payload")


async def test_empty_ping_gets_empty_pong(relay: RelayUnderTest) -> None:
    async with websocket(relay.port) as client:
        await client.stream.send_all(client_frame(OP_PING))
        assert await client.next_control() == (OP_PONG, b"")


async def test_client_close_1000_is_echoed_then_tcp_closes(relay: RelayUnderTest) -> None:
    async with websocket(relay.port) as client:
        await client.stream.send_all(client_frame(OP_CLOSE, close_body(1000, "done")))
        assert await client.close_code() == 1000
        await client.assert_tcp_closed()


async def test_client_close_without_body_gets_1000_then_tcp_closes(
    relay: RelayUnderTest,
) -> None:
    async with websocket(relay.port) as client:
        await client.stream.send_all(client_frame(OP_CLOSE))
        assert await client.close_code() == 1000
        await client.assert_tcp_closed()


# -- messages ----------------------------------------------------------------------------------


async def test_req_in_one_frame_gets_eose(relay: RelayUnderTest) -> None:
    async with websocket(relay.port) as client:
        await client.stream.send_all(text_frame(["REQ", "one", {"kinds": [1]}]))
        assert await client.texts_until("EOSE") == [["EOSE", "one"]]


async def test_req_fragmented_in_three_frames_gets_eose(relay: RelayUnderTest) -> None:
    raw = orjson.dumps(["REQ", "frag", {"kinds": [1]}])
    parts = raw[:5], raw[5:12], raw[12:]
    async with websocket(relay.port) as client:
        await client.stream.send_all(client_frame(OP_TEXT, parts[0], fin=False))
        await trio.sleep(0.05)  # separate TCP segments, not only separate frames
        await client.stream.send_all(client_frame(OP_CONT, parts[1], fin=False))
        await trio.sleep(0.05)
        await client.stream.send_all(client_frame(OP_CONT, parts[2]))
        assert await client.texts_until("EOSE") == [["EOSE", "frag"]]


async def test_ping_between_fragments_is_answered_first(relay: RelayUnderTest) -> None:
    raw = orjson.dumps(["REQ", "frag", {"kinds": [1]}])
    async with websocket(relay.port) as client:
        await client.stream.send_all(
            client_frame(OP_TEXT, raw[:7], fin=False)
            + client_frame(OP_PING, b"mid")
            + client_frame(OP_CONT, raw[7:])
        )
        assert await client.texts_until("EOSE") == [[f"<{OP_PONG}>", b"mid"], ["EOSE", "frag"]]


async def test_frame_in_the_same_write_as_the_upgrade_is_processed(
    relay: RelayUnderTest,
) -> None:
    req = text_frame(["REQ", "early", {"kinds": [1]}])
    async with websocket(relay.port, after_head=req) as client:
        assert await client.texts_until("EOSE") == [["EOSE", "early"]]


async def test_ping_and_req_in_the_same_write_as_the_upgrade(relay: RelayUnderTest) -> None:
    early = client_frame(OP_PING, b"early") + text_frame(["REQ", "e2", {"kinds": [1]}])
    async with websocket(relay.port, after_head=early) as client:
        assert await client.texts_until("EOSE") == [[f"<{OP_PONG}>", b"early"], ["EOSE", "e2"]]


async def test_binary_message_is_handled(relay: RelayUnderTest) -> None:
    async with websocket(relay.port) as client:
        await client.stream.send_all(
            client_frame(OP_BINARY, orjson.dumps(["REQ", "bin", {"kinds": [1]}]))
        )
        assert await client.texts_until("EOSE") == [["EOSE", "bin"]]


# -- protocol errors ---------------------------------------------------------------------------


async def fails_with(relay: RelayUnderTest, data: bytes) -> int:
    """Send `data` after the upgrade; the relay's close code. The relay must then end TCP
    once the client does (it reads no more frames after a protocol error)."""
    async with websocket(relay.port) as client:
        await client.stream.send_all(data)
        code = await client.close_code()
        await client.stream.send_eof()
        await client.assert_tcp_closed()
    return code


async def test_unmasked_frame_closes_with_1002(relay: RelayUnderTest) -> None:
    frame = client_frame(OP_TEXT, orjson.dumps(["REQ", "x", {}]), masked=False)
    assert await fails_with(relay, frame) == 1002
    await assert_relay_serves(relay)


async def test_oversized_message_closes_with_1009_before_its_payload(
    relay: RelayUnderTest,
) -> None:
    """The header alone announces too much: the relay refuses without waiting for it."""
    header = client_frame(OP_TEXT, length=LIMIT + 1) + b'["REQ"'  # 64-bit length, mask key
    assert await fails_with(relay, header) == 1009
    await assert_relay_serves(relay)


async def test_oversized_fragmented_message_closes_with_1009(relay: RelayUnderTest) -> None:
    half = LIMIT // 2 + 1
    # Each fragment is within the limit, both together are not; the second one's payload
    # is never sent.
    data = client_frame(OP_TEXT, b"[" * half, fin=False) + client_frame(OP_CONT, length=half)
    assert await fails_with(relay, data) == 1009


async def test_endless_empty_continuation_frames_close_with_1009(relay: RelayUnderTest) -> None:
    """Empty fragments carry no payload to count against the limit, but each one is kept
    until the message ends: a message in too many frames is refused as too big."""
    empties = client_frame(OP_CONT, b"", fin=False) * 5000
    assert await fails_with(relay, client_frame(OP_TEXT, b"[", fin=False) + empties) == 1009
    await assert_relay_serves(relay)


async def test_message_at_the_limit_is_not_refused(relay: RelayUnderTest) -> None:
    """A frame exactly at the limit is read (and answered as a bad message, not closed)."""
    padding = LIMIT - len(orjson.dumps(["REQ", "big", {"kinds": [1]}, ""]))
    req = orjson.dumps(["REQ", "big", {"kinds": [1]}, " " * padding])
    assert len(req) == LIMIT
    async with websocket(relay.port) as client:
        await client.stream.send_all(client_frame(OP_TEXT, req))
        with trio.fail_after(WAIT):
            frame = await client.read_frame()
            while frame is not None and frame[1] == OP_TEXT and b'"AUTH"' in frame[2]:
                frame = await client.read_frame()
        assert frame is not None
        assert frame[1] == OP_TEXT, frame


async def test_invalid_utf8_text_closes_with_1007(relay: RelayUnderTest) -> None:
    assert await fails_with(relay, client_frame(OP_TEXT, b'["REQ","\xff"]')) == 1007


async def test_unknown_opcode_closes_with_1002(relay: RelayUnderTest) -> None:
    assert await fails_with(relay, client_frame(0x3, b"x")) == 1002


async def test_close_with_forbidden_code_gets_1002(relay: RelayUnderTest) -> None:
    assert await fails_with(relay, client_frame(OP_CLOSE, close_body(1005))) == 1002
