"""pkt-line framing (lengths are four hex digits of a valid size, and parsing always moves
forward), receive-pack commands, report-status, and a push refused whole."""

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


# -- framing -----------------------------------------------------------------------------------


def test_encode_prefixes_the_length_head_included() -> None:
    assert pktline.encode(b"") == b"0004"
    assert pktline.encode(b"hello\n") == b"000ahello\n"
    longest = pktline.encode(b"x" * pktline.MAX_PAYLOAD)
    assert longest[:4] == b"fff0" and len(longest) == pktline.MAX_PACKET


def test_encode_refuses_a_payload_longer_than_a_pkt_line_holds() -> None:
    with pytest.raises(PktLineError):
        pktline.encode(b"x" * (pktline.MAX_PAYLOAD + 1))


def test_decode_splits_packets_and_reads_special_packets_as_none() -> None:
    stream = pktline.encode(b"one\n") + b"0001" + pktline.encode(b"") + b"0002" + pktline.FLUSH
    assert decode(stream) == [b"one\n", None, b"", None, None]
    assert decode(b"") == []


def test_decode_round_trips_what_encode_framed() -> None:
    payloads = [b"a", b"\x00\x01\x02", b"y" * 1000, b"z" * pktline.MAX_PAYLOAD]
    assert decode(b"".join(pktline.encode(p) for p in payloads)) == payloads


@pytest.mark.parametrize("stream", [b"000ahello", b"00", b"0008abcd00"])
def test_decode_refuses_a_truncated_stream(stream: bytes) -> None:
    with pytest.raises(PktLineError):
        decode(stream)


# -- report-status -----------------------------------------------------------------------------


@pytest.mark.parametrize("side_band", [False, True])
def test_parse_report_reads_unpack_ok_and_ng_lines(side_band: bool) -> None:
    report = pktline.parse_report(
        _report(["unpack ok", "ok refs/heads/main", "ng refs/heads/x hook declined"], side_band),
        side_band,
    )
    assert report == pktline.Report(
        unpack_ok=True, rejected=("refs/heads/x hook declined",), accepted=("refs/heads/main",)
    )


def test_parse_report_reads_an_unpack_error() -> None:
    report = pktline.parse_report(_report(["unpack index-pack abnormal exit"], False), False)
    assert report.unpack_ok is False
    assert report.rejected == report.accepted == ()


def test_parse_report_without_an_unpack_line_is_not_ok() -> None:
    assert pktline.parse_report(_report(["ok refs/heads/main"], False), False).unpack_ok is False


def test_parse_report_reads_only_band_one_of_a_side_band_stream() -> None:
    """A progress (2) or error (3) band that looks like a report line is not one."""
    inner = pktline.encode(b"unpack ok\n") + pktline.encode(b"ok refs/heads/main\n")
    stream = (
        pktline.encode(b"\x02ng refs/heads/main progress noise\n")
        + pktline.encode(b"\x01" + inner + pktline.FLUSH)
        + pktline.encode(b"\x03ng refs/heads/other error noise\n")
        + pktline.FLUSH
    )
    report = pktline.parse_report(stream, side_band=True)
    assert report == pktline.Report(True, (), ("refs/heads/main",))


# -- commands ----------------------------------------------------------------------------------


def test_lines_that_are_not_ref_updates_are_skipped() -> None:
    body = (
        pktline.encode(f"shallow {ONE}\n".encode())
        + pktline.encode(f"{ZERO} {ONE} refs/heads/main\n".encode())
        + pktline.FLUSH
    )
    commands, capabilities = parse_commands(body)
    assert commands == [pktline.Command(ZERO, ONE, "refs/heads/main")]
    assert capabilities == set()


def test_commands_end_with_the_body_when_no_flush_comes() -> None:
    body = pktline.encode(f"{ZERO} {ONE} refs/heads/main\n".encode()) + b"00"
    commands, _ = parse_commands(body)
    assert commands == [pktline.Command(ZERO, ONE, "refs/heads/main")]


# -- a push refused whole ----------------------------------------------------------------------


@pytest.mark.parametrize("side_band", [False, True])
def test_refuse_all_with_a_reason_names_it_for_every_command(side_band: bool) -> None:
    commands = [
        pktline.Command(ZERO, ONE, "refs/heads/a"),
        pktline.Command(ONE, ZERO, "refs/heads/b"),
    ]
    git_said = _report(["unpack ok", "ok refs/heads/a", "ng refs/heads/b failed"], side_band)
    refused = pktline.refuse_all(git_said, commands, side_band, "not a maintainer")
    assert pktline.parse_report(refused, side_band) == pktline.Report(
        True, ("refs/heads/a not a maintainer", "refs/heads/b not a maintainer"), ()
    )


def test_refuse_all_keeps_an_unpack_error() -> None:
    commands = [pktline.Command(ZERO, ONE, "refs/heads/a")]
    git_said = _report(["unpack index-pack abnormal exit", "ng refs/heads/a unpacker error"], False)
    report = pktline.parse_report(pktline.refuse_all(git_said, commands, False), False)
    assert report.unpack_ok is False
    assert report.rejected == ("refs/heads/a unpacker error",)


def test_refuse_all_without_a_side_band_is_plain_pkt_lines_ending_in_a_flush() -> None:
    commands = [pktline.Command(ZERO, ONE, "refs/heads/a")]
    refused = pktline.refuse_all(_report(["unpack ok", "ok refs/heads/a"], False), commands, False)
    assert decode(refused) == [
        b"unpack ok\n",
        f"ng refs/heads/a {pktline.ATOMIC_FAILURE}\n".encode(),
        None,
    ]


def test_refuse_all_splits_a_long_report_over_band_one_packets() -> None:
    """Every band packet fits a pkt-line, and together they carry the whole report."""
    commands = [pktline.Command(ZERO, ONE, f"refs/heads/{'b' * 200}-{i}") for i in range(400)]
    refused = pktline.refuse_all(_report(["unpack ok"], True), commands, True, "declined")
    packets = decode(refused)
    assert packets[0] == b"\x02Resolving deltas: 100% done\n"  # the progress band, first
    bands = packets[1:-1]
    assert len(bands) > 1
    assert all(p is not None and p[:1] == b"\x01" for p in bands)
    assert packets[-1] is None
    report = pktline.parse_report(refused, side_band=True)
    assert report.rejected == tuple(f"{c.ref} declined" for c in commands)
