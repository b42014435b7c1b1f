"""MessageSizeGuard: an oversized message is refused from its header, fed any way."""

from __future__ import annotations

from relay.server.wsguard import MAX_MESSAGE_FRAMES, MessageSizeGuard
from tests.helpers import client_frame

OP_CONT, OP_TEXT, OP_BINARY, OP_PING = 0x0, 0x1, 0x2, 0x9
LIMIT = 1000


def feed_bytewise(guard: MessageSizeGuard, data: bytes) -> int:
    """Feed one byte at a time; how many bytes were let through."""
    passed = 0
    for i in range(len(data)):
        passed += guard.accept(data[i : i + 1])
    return passed


def test_messages_within_the_limit_pass_whole() -> None:
    data = client_frame(OP_TEXT, b"x" * LIMIT) + client_frame(OP_BINARY, b"y" * 10)
    guard = MessageSizeGuard(LIMIT)
    assert guard.accept(data) == len(data)
    assert not guard.refused


def test_a_header_announcing_too_much_is_refused_before_its_payload() -> None:
    ok = client_frame(OP_TEXT, b"[]")
    guard = MessageSizeGuard(LIMIT)
    assert guard.accept(ok + client_frame(OP_TEXT, length=LIMIT + 1)) == len(ok)
    assert guard.refused
    assert guard.reason == f"message longer than {LIMIT} bytes"
    assert guard.accept(b"more") == 0


def test_the_limit_counts_every_fragment_of_a_message() -> None:
    first = client_frame(OP_TEXT, b"a" * 600, fin=False)
    guard = MessageSizeGuard(LIMIT)
    assert guard.accept(first + client_frame(OP_CONT, length=401)) == len(first)
    assert guard.refused


def test_a_new_message_starts_counting_again() -> None:
    data = client_frame(OP_TEXT, b"a" * 600) + client_frame(OP_TEXT, b"b" * 600)
    assert MessageSizeGuard(LIMIT).accept(data) == len(data)


def test_control_frames_between_fragments_do_not_count() -> None:
    data = (
        client_frame(OP_TEXT, b"a" * 500, fin=False)
        + client_frame(OP_PING, b"p" * 125)
        + client_frame(OP_CONT, b"b" * 500)
    )
    guard = MessageSizeGuard(LIMIT)
    assert guard.accept(data) == len(data)
    assert not guard.refused


def test_headers_and_payloads_split_anywhere_are_followed() -> None:
    good = b"".join(client_frame(OP_TEXT, b"z" * size) for size in (0, 1, 125, 126, 999, 1000))
    guard = MessageSizeGuard(LIMIT)
    assert feed_bytewise(guard, good) == len(good)
    bad = client_frame(OP_TEXT, length=70_000)  # a 64-bit length: a 14-byte header
    # The header's first 13 bytes pass (they announce nothing yet); its last one does not.
    assert feed_bytewise(guard, good + bad) == len(good) + len(bad) - 1
    assert guard.refused


def test_64_bit_lengths_are_read() -> None:
    guard = MessageSizeGuard(LIMIT)
    header = client_frame(OP_BINARY, length=1 << 40)
    assert guard.accept(header) == 0
    assert guard.refused


def test_a_length_with_its_top_bit_set_is_left_to_the_parser() -> None:
    """RFC 6455 forbids it; wsproto closes with 1002, which says more than 1009 would."""
    guard = MessageSizeGuard(LIMIT)
    header = client_frame(OP_TEXT, length=1 << 63)
    assert guard.accept(header) == len(header)
    assert not guard.refused


def test_unmasked_frames_are_followed_too() -> None:
    data = client_frame(OP_TEXT, b"q" * 200, masked=False) * 3
    assert MessageSizeGuard(LIMIT).accept(data) == len(data)
    refused = client_frame(OP_TEXT, length=LIMIT + 1, masked=False)
    assert MessageSizeGuard(LIMIT).accept(data + refused) == len(data)


def test_a_message_in_too_many_frames_is_refused() -> None:
    """Empty continuation frames carry no payload, but each one is kept until the message
    ends: the frames of a message are bounded too."""
    first = client_frame(OP_TEXT, b"[", fin=False)
    empties = client_frame(OP_CONT, b"", fin=False) * (MAX_MESSAGE_FRAMES - 1)
    guard = MessageSizeGuard(LIMIT)
    assert guard.accept(first + empties) == len(first + empties)
    assert not guard.refused
    assert guard.accept(client_frame(OP_CONT, b"")) == 0
    assert guard.refused
    assert guard.reason == f"message in more than {MAX_MESSAGE_FRAMES} frames"


def test_many_small_messages_are_not_many_frames_of_one() -> None:
    data = client_frame(OP_TEXT, b"[]") * (MAX_MESSAGE_FRAMES * 2)
    assert MessageSizeGuard(LIMIT).accept(data) == len(data)
