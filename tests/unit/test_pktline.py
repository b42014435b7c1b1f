"""pkt-line lengths: four hex digits, a valid size, and parsing always moves forward."""

from __future__ import annotations

import pytest

from relay.git import pktline
from relay.git.pktline import PktLineError, decode, packet_length, parse_commands

ZERO = "0" * 40
ONE = "1" * 40


def test_valid_lengths() -> None:
    assert packet_length(b"0000") == 0
    assert packet_length(b"0001") == 1
    assert packet_length(b"0004") == 4
    assert packet_length(b"fff0") == pktline.MAX_PACKET
    assert packet_length(b"00AB") == 0xAB


@pytest.mark.parametrize(
    "head",
    [b"-008", b"+008", b" 008", b"0x08", b"0_08", b"00 8", b"zzzz", b"0003", b"fff1", b"00"],
)
def test_a_length_that_is_not_four_hex_digits_or_out_of_range_is_refused(head: bytes) -> None:
    with pytest.raises(PktLineError):
        packet_length(head)


def test_a_negative_length_in_the_commands_is_refused_not_looped_on() -> None:
    """`0008abcd-008`: int() reads "-008" as -8, which walked the parser backwards for ever."""
    first = pktline.encode(f"{ZERO} {ONE} refs/heads/main\0report-status\n".encode())
    with pytest.raises(PktLineError):
        parse_commands(first + b"0008abcd-008")
    with pytest.raises(PktLineError):
        decode(b"0008abcd-008")


def test_commands_and_capabilities_are_read() -> None:
    body = (
        pktline.encode(f"{ZERO} {ONE} refs/heads/main\0report-status side-band-64k\n".encode())
        + pktline.encode(f"{ONE} {ZERO} refs/heads/old\n".encode())
        + pktline.FLUSH
        + b"PACK..."
    )
    commands, capabilities = parse_commands(body)
    assert [c.ref for c in commands] == ["refs/heads/main", "refs/heads/old"]
    assert capabilities == {"report-status", "side-band-64k"}


def test_a_delimiter_among_the_commands_is_refused() -> None:
    with pytest.raises(PktLineError):
        parse_commands(b"0001" + pktline.FLUSH)


def _report(lines: list[str], side_band: bool) -> bytes:
    inner = b"".join(pktline.encode(f"{line}\n".encode()) for line in lines) + pktline.FLUSH
    if not side_band:
        return inner
    progress = pktline.encode(b"\x02Resolving deltas: 100% done\n")
    return progress + pktline.encode(b"\x01" + inner) + pktline.FLUSH


@pytest.mark.parametrize("side_band", [False, True])
def test_a_partly_refused_push_is_reported_refused_whole(side_band: bool) -> None:
    commands = [
        pktline.Command(ZERO, ONE, "refs/heads/z"),
        pktline.Command(ZERO, ONE, "refs/heads/x/y"),
    ]
    git_said = _report(
        ["unpack ok", "ok refs/heads/z", "ng refs/heads/x/y failed to lock"], side_band
    )
    refused = pktline.parse_report(pktline.refuse_all(git_said, commands, side_band), side_band)
    assert refused.unpack_ok
    assert refused.accepted == ()
    assert refused.rejected == (
        f"refs/heads/z {pktline.ATOMIC_FAILURE}",
        "refs/heads/x/y failed to lock",
    )
    if side_band:  # the progress band is kept
        kept = pktline.refuse_all(git_said, commands, side_band)
        assert b"\x02Resolving deltas" in kept
