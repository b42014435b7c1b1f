"""The sans-IO RFC 6455 codec (relay.server.frames): client frames in, events out.

Client frames are built by hand here (masked, a fixed mask key) so every bit can be chosen;
server frames are decoded by hand (they are never masked).
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from relay.server import frames
from relay.server.frames import Close, FrameReader, Message, Ping, Pong, ProtocolError
from tests import helpers

MASK = b"\x37\xfa\x21\x3d"
LIMIT = 1000

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA


def client_frame(opcode: int, payload: bytes = b"", **options: Any) -> bytes:
    return helpers.client_frame(opcode, payload, mask=MASK, **options)


def read_all(data: bytes, limit: int = LIMIT) -> list[frames.Incoming]:
    reader = FrameReader(limit)
    reader.feed(data)
    events = []
    while (event := reader.next()) is not None:
        events.append(event)
    return events


def protocol_error(data: bytes, limit: int = LIMIT) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        read_all(data, limit)
    return info.value


def server_frame(data: bytes) -> tuple[bool, int, bytes]:
    """(fin, opcode, payload) of exactly one unmasked server frame."""
    b0, b1 = data[0], data[1]
    assert b0 & 0x70 == 0, "server frames set no reserved bit"
    assert b1 & 0x80 == 0, "server frames are not masked"
    length, pos = b1 & 0x7F, 2
    if length == 126:
        (length,) = struct.unpack_from("!H", data, 2)
        pos = 4
        assert length >= 126, "minimal length encoding"
    elif length == 127:
        (length,) = struct.unpack_from("!Q", data, 2)
        pos = 10
        assert length >= 1 << 16, "minimal length encoding"
    assert len(data) == pos + length, "exactly one frame"
    return bool(b0 & 0x80), b0 & 0x0F, data[pos:]


# -- messages ----------------------------------------------------------------------------------


def test_text_message() -> None:
    assert read_all(client_frame(OP_TEXT, "héllo ✓".encode())) == [Message("héllo ✓")]


def test_binary_message_is_bytes() -> None:
    assert read_all(client_frame(OP_BINARY, b"\x00\xff\xfe")) == [Message(b"\x00\xff\xfe")]


def test_binary_message_need_not_be_utf8() -> None:
    event = read_all(client_frame(OP_BINARY, b"\xc3\x28"))[0]
    assert isinstance(event, Message) and event.data == b"\xc3\x28"


def test_empty_text_message() -> None:
    assert read_all(client_frame(OP_TEXT, b"")) == [Message("")]


def test_empty_binary_message() -> None:
    assert read_all(client_frame(OP_BINARY, b"")) == [Message(b"")]


def test_two_messages_in_one_feed() -> None:
    data = client_frame(OP_TEXT, b"one") + client_frame(OP_TEXT, b"two")
    assert read_all(data) == [Message("one"), Message("two")]


def test_message_fed_one_byte_at_a_time() -> None:
    reader = FrameReader(LIMIT)
    data = client_frame(OP_TEXT, b'["REQ","sub",{}]') + client_frame(OP_BINARY, b"\x01\x02")
    events: list[tuple[int, frames.Incoming]] = []
    for i in range(len(data)):
        reader.feed(data[i : i + 1])
        while (event := reader.next()) is not None:
            events.append((i, event))
    first_end = len(client_frame(OP_TEXT, b'["REQ","sub",{}]')) - 1
    assert events == [
        (first_end, Message('["REQ","sub",{}]')),
        (len(data) - 1, Message(b"\x01\x02")),
    ]


def test_incomplete_frame_gives_none() -> None:
    reader = FrameReader(LIMIT)
    data = client_frame(OP_TEXT, b"hello")
    reader.feed(data[:-1])
    assert reader.next() is None
    reader.feed(data[-1:])
    assert reader.next() == Message("hello")
    assert reader.next() is None


def test_16_bit_length() -> None:
    payload = bytes(range(256)) * 2  # 512 bytes: a 16-bit length
    data = client_frame(OP_BINARY, payload)
    assert data[1] == 0x80 | 126
    assert read_all(data) == [Message(payload)]


def test_16_bit_length_at_its_smallest() -> None:
    payload = b"a" * 126
    data = client_frame(OP_TEXT, payload)
    assert data[1] == 0x80 | 126
    assert read_all(data) == [Message("a" * 126)]


def test_64_bit_length() -> None:
    payload = b"xyz" * 30_000  # 90,000 bytes: a 64-bit length
    data = client_frame(OP_TEXT, payload)
    assert data[1] == 0x80 | 127
    assert read_all(data, limit=100_000) == [Message("xyz" * 30_000)]


def test_64_bit_length_fed_in_pieces() -> None:
    payload = bytes(i % 251 for i in range(70_000))
    data = client_frame(OP_BINARY, payload)
    reader = FrameReader(100_000)
    for start in range(0, len(data), 4093):
        assert reader.next() is None
        reader.feed(data[start : start + 4093])
    assert reader.next() == Message(payload)


def test_message_exactly_at_the_limit_is_accepted() -> None:
    assert read_all(client_frame(OP_BINARY, b"z" * LIMIT)) == [Message(b"z" * LIMIT)]


# -- fragmentation -----------------------------------------------------------------------------


def test_fragmented_text_message() -> None:
    data = (
        client_frame(OP_TEXT, b'["REQ",', fin=False)
        + client_frame(OP_CONT, b'"sub",', fin=False)
        + client_frame(OP_CONT, b"{}]")
    )
    assert read_all(data) == [Message('["REQ","sub",{}]')]


def test_fragmented_binary_message() -> None:
    data = client_frame(OP_BINARY, b"\x00\x01", fin=False) + client_frame(OP_CONT, b"\x02")
    assert read_all(data) == [Message(b"\x00\x01\x02")]


def test_fragments_split_a_utf8_character() -> None:
    text = "✓".encode()  # 3 bytes, split across fragments
    data = client_frame(OP_TEXT, text[:1], fin=False) + client_frame(OP_CONT, text[1:])
    assert read_all(data) == [Message("✓")]


def test_fragmented_message_with_empty_fragments() -> None:
    data = (
        client_frame(OP_TEXT, b"", fin=False)
        + client_frame(OP_CONT, b"ab", fin=False)
        + client_frame(OP_CONT, b"")
    )
    assert read_all(data) == [Message("ab")]


def test_ping_between_fragments_comes_out_first() -> None:
    data = (
        client_frame(OP_TEXT, b"hel", fin=False)
        + client_frame(OP_PING, b"are you there")
        + client_frame(OP_CONT, b"lo")
    )
    assert read_all(data) == [Ping(b"are you there"), Message("hello")]


def test_message_after_fragmented_message() -> None:
    data = (
        client_frame(OP_TEXT, b"a", fin=False)
        + client_frame(OP_CONT, b"b")
        + client_frame(OP_BINARY, b"c")
    )
    assert read_all(data) == [Message("ab"), Message(b"c")]


# -- control frames ----------------------------------------------------------------------------


def test_ping_and_pong() -> None:
    data = client_frame(OP_PING, b"p1") + client_frame(OP_PONG, b"p2") + client_frame(OP_PING)
    assert read_all(data) == [Ping(b"p1"), Pong(b"p2"), Ping(b"")]


def test_control_frame_of_125_bytes_is_accepted() -> None:
    assert read_all(client_frame(OP_PING, b"q" * 125)) == [Ping(b"q" * 125)]


def test_close_with_no_body_is_1005() -> None:
    assert read_all(client_frame(OP_CLOSE)) == [Close(1005, "")]


def test_close_with_code_and_reason() -> None:
    body = struct.pack("!H", 1000) + "bye ✓".encode()
    assert read_all(client_frame(OP_CLOSE, body)) == [Close(1000, "bye ✓")]


def test_close_with_code_only() -> None:
    assert read_all(client_frame(OP_CLOSE, struct.pack("!H", 1001))) == [Close(1001, "")]


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012,
                                  1013, 1014, 3000, 4999])  # fmt: skip
def test_close_codes_a_peer_may_send(code: int) -> None:
    assert read_all(client_frame(OP_CLOSE, struct.pack("!H", code))) == [Close(code, "")]


# -- protocol errors ---------------------------------------------------------------------------


def test_unmasked_frame_is_1002() -> None:
    assert protocol_error(client_frame(OP_TEXT, b"hi", masked=False)).code == 1002


def test_unmasked_frame_is_refused_from_its_first_two_bytes() -> None:
    reader = FrameReader(LIMIT)
    reader.feed(client_frame(OP_TEXT, b"hi", masked=False)[:2])
    with pytest.raises(ProtocolError) as info:
        reader.next()
    assert info.value.code == 1002


@pytest.mark.parametrize("rsv", [0b100, 0b010, 0b001])
def test_reserved_bit_is_1002(rsv: int) -> None:
    assert protocol_error(client_frame(OP_TEXT, b"hi", rsv=rsv)).code == 1002


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_unknown_opcode_is_1002(opcode: int) -> None:
    assert protocol_error(client_frame(opcode, b"hi")).code == 1002


@pytest.mark.parametrize("opcode", [OP_CLOSE, OP_PING, OP_PONG])
def test_control_frame_with_fin_clear_is_1002(opcode: int) -> None:
    assert protocol_error(client_frame(opcode, b"", fin=False)).code == 1002


@pytest.mark.parametrize("opcode", [OP_CLOSE, OP_PING, OP_PONG])
def test_control_frame_of_126_bytes_is_1002(opcode: int) -> None:
    payload = struct.pack("!H", 1000) + b"r" * 124 if opcode == OP_CLOSE else b"q" * 126
    assert len(payload) == 126
    assert protocol_error(client_frame(opcode, payload)).code == 1002


def test_continuation_without_a_message_is_1002() -> None:
    assert protocol_error(client_frame(OP_CONT, b"orphan")).code == 1002


def test_continuation_after_a_complete_message_is_1002() -> None:
    data = client_frame(OP_TEXT, b"done") + client_frame(OP_CONT, b"more")
    reader = FrameReader(LIMIT)
    reader.feed(data)
    assert reader.next() == Message("done")
    with pytest.raises(ProtocolError) as info:
        reader.next()
    assert info.value.code == 1002


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_new_data_frame_inside_a_fragmented_message_is_1002(opcode: int) -> None:
    data = client_frame(OP_TEXT, b"part", fin=False) + client_frame(opcode, b"new")
    assert protocol_error(data).code == 1002


def test_close_with_1_byte_body_is_1002() -> None:
    assert protocol_error(client_frame(OP_CLOSE, b"\x03")).code == 1002


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_close_code_that_may_not_be_sent_is_1002(code: int) -> None:
    assert protocol_error(client_frame(OP_CLOSE, struct.pack("!H", code))).code == 1002


def test_invalid_utf8_text_is_1007() -> None:
    assert protocol_error(client_frame(OP_TEXT, b"bad \xff\xfe")).code == 1007


def test_truncated_utf8_text_is_1007() -> None:
    assert protocol_error(client_frame(OP_TEXT, "✓".encode()[:2])).code == 1007


def test_invalid_utf8_in_fragmented_text_is_1007() -> None:
    data = client_frame(OP_TEXT, b"ok ", fin=False) + client_frame(OP_CONT, b"\xc3\x28")
    assert protocol_error(data).code == 1007


def test_invalid_utf8_close_reason_is_1007() -> None:
    body = struct.pack("!H", 1000) + b"bye \xff"
    assert protocol_error(client_frame(OP_CLOSE, body)).code == 1007


def test_message_over_the_limit_is_1009() -> None:
    assert protocol_error(client_frame(OP_TEXT, b"z" * (LIMIT + 1))).code == 1009


def test_fragments_over_the_limit_together_are_1009() -> None:
    half = LIMIT // 2 + 1  # each fragment fits, both together do not
    data = client_frame(OP_TEXT, b"z" * half, fin=False) + client_frame(OP_CONT, b"z" * half)
    assert protocol_error(data).code == 1009


def test_fragments_at_the_limit_together_are_accepted() -> None:
    half = LIMIT // 2
    data = client_frame(OP_TEXT, b"z" * half, fin=False) + client_frame(OP_CONT, b"z" * half)
    assert read_all(data) == [Message("z" * LIMIT)]


def test_1009_is_raised_from_a_16_bit_header_alone() -> None:
    reader = FrameReader(LIMIT)
    reader.feed(client_frame(OP_TEXT, length=LIMIT + 1)[:4])  # no mask key, no payload
    with pytest.raises(ProtocolError) as info:
        reader.next()
    assert info.value.code == 1009


def test_1009_is_raised_from_a_64_bit_header_alone() -> None:
    reader = FrameReader(LIMIT)
    reader.feed(client_frame(OP_BINARY, length=1 << 40)[:10])
    with pytest.raises(ProtocolError) as info:
        reader.next()
    assert info.value.code == 1009


def test_64_bit_length_with_the_top_bit_set_is_1002() -> None:
    reader = FrameReader(LIMIT)
    reader.feed(client_frame(OP_BINARY, length=1 << 63)[:10])
    with pytest.raises(ProtocolError) as info:
        reader.next()
    assert info.value.code == 1002


def test_1009_for_fragments_is_raised_from_the_header_alone() -> None:
    reader = FrameReader(LIMIT)
    reader.feed(client_frame(OP_TEXT, b"z" * (LIMIT - 10), fin=False))
    assert reader.next() is None
    reader.feed(client_frame(OP_CONT, length=11)[:2])
    with pytest.raises(ProtocolError) as info:
        reader.next()
    assert info.value.code == 1009


def test_ping_does_not_count_toward_the_message_limit() -> None:
    data = (
        client_frame(OP_TEXT, b"z" * (LIMIT - 1), fin=False)
        + client_frame(OP_PING, b"p" * 125)
        + client_frame(OP_CONT, b"z")
    )
    assert read_all(data) == [Ping(b"p" * 125), Message("z" * LIMIT)]


# -- server frames -----------------------------------------------------------------------------


def test_encode_text_round_trip() -> None:
    assert server_frame(frames.encode_text("héllo")) == (True, OP_TEXT, "héllo".encode())


def test_encode_empty_text() -> None:
    assert frames.encode_text("") == b"\x81\x00"


def test_encode_16_bit_length() -> None:
    payload = b"b" * 300
    data = frames.encode(OP_BINARY, payload)
    assert data[:4] == b"\x82\x7e\x01\x2c"
    assert server_frame(data) == (True, OP_BINARY, payload)


def test_encode_64_bit_length() -> None:
    payload = b"b" * 70_000
    data = frames.encode(OP_TEXT, payload)
    assert data[:10] == b"\x81\x7f" + struct.pack("!Q", 70_000)
    assert server_frame(data) == (True, OP_TEXT, payload)


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_encode_length_boundaries(size: int) -> None:
    assert server_frame(frames.encode(OP_BINARY, b"\x00" * size)) == (
        True,
        OP_BINARY,
        b"\x00" * size,
    )


def test_encode_pong() -> None:
    assert frames.encode(OP_PONG, b"abc") == b"\x8a\x03abc"


def test_encode_close_round_trip() -> None:
    fin, opcode, body = server_frame(frames.encode_close(1009, "too big"))
    assert (fin, opcode) == (True, OP_CLOSE)
    assert struct.unpack("!H", body[:2])[0] == 1009
    assert body[2:].decode("utf-8") == "too big"


def test_encode_close_without_reason() -> None:
    assert frames.encode_close(1000) == b"\x88\x02\x03\xe8"


def test_encode_close_long_reason_fits_a_control_frame() -> None:
    _, opcode, body = server_frame(frames.encode_close(1002, "x" * 500))
    assert opcode == OP_CLOSE
    assert len(body) == 125
    assert body[2:] == b"x" * 123


def test_encode_close_long_non_ascii_reason_stays_utf8() -> None:
    """A client must fail a close frame whose reason is not UTF-8 (RFC 6455 5.5.1, 8.1), so
    cutting the reason to fit 125 bytes must not split a character."""
    _, _, body = server_frame(frames.encode_close(1002, "é" * 100))
    assert len(body) <= 125
    reason = body[2:]
    try:
        text: str | None = reason.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    assert text is not None, f"encode_close cut a character in half: reason ends {reason[-3:]!r}"
    assert text == "é" * (len(reason) // 2)


def test_server_close_is_read_back_by_a_reader() -> None:
    """What encode_close writes, once masked as a client would, decodes to the same close."""
    _, _, body = server_frame(frames.encode_close(4000, "app reason"))
    assert read_all(client_frame(OP_CLOSE, body)) == [Close(4000, "app reason")]


def test_protocol_error_carries_code_and_reason() -> None:
    error = protocol_error(client_frame(OP_TEXT, b"hi", masked=False))
    assert error.code == 1002
    assert error.reason == str(error)
    assert error.reason
