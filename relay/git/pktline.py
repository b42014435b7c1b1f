"""pkt-line framing and receive-pack report-status parsing (pure).

A hook's decline does not make `git receive-pack` exit non-zero: the only signal is an
`ng <ref> <reason>` line (or `unpack <error>`) in the report-status, which with
side-band-64k arrives nested inside band-1 pkt-lines. `parse_report` de-frames both.
"""

from __future__ import annotations

from dataclasses import dataclass

FLUSH = b"0000"
# The longest pkt-line, its 4-byte length included (git's LARGE_PACKET_MAX).
MAX_PACKET = 65520
MAX_PAYLOAD = MAX_PACKET - 4


class PktLineError(ValueError):
    pass


def encode(payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise PktLineError("pkt-line payload too long")
    return f"{len(payload) + 4:04x}".encode() + payload


_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
# 0000 flush, 0001 delimiter, 0002 response end; 0003 is never valid; 0004 is empty.
_SPECIAL = 3


def packet_length(head: bytes) -> int:
    """The length a pkt-line's 4-byte head announces: four hex digits (int() would also
    take a sign, blanks or underscores, and a negative length walks a parser backwards)."""
    if len(head) < 4:
        raise PktLineError("truncated pkt-line length")
    if not _HEX_DIGITS.issuperset(head):
        raise PktLineError(f"bad pkt-line length {head!r}")
    size = int(head, 16)
    if size == _SPECIAL or size > MAX_PACKET:
        raise PktLineError(f"bad pkt-line length {head!r}")
    return size


def decode(data: bytes) -> list[bytes | None]:
    """Split a pkt-line stream; None stands for a flush (or delim) packet."""
    out: list[bytes | None] = []
    i = 0
    while i < len(data):
        size = packet_length(data[i : i + 4])
        if size < _SPECIAL:
            out.append(None)
            i += 4
            continue
        if i + size > len(data):
            raise PktLineError("truncated pkt-line")
        out.append(data[i + 4 : i + size])
        i += size
    return out


@dataclass(frozen=True, slots=True)
class Report:
    unpack_ok: bool
    rejected: tuple[str, ...]  # "ref reason" of every ng line
    accepted: tuple[str, ...]


def parse_report(stdout: bytes, side_band: bool) -> Report:
    """The report-status of `git receive-pack --stateless-rpc` output."""
    packets = decode(stdout)
    if side_band:
        inner = b"".join(p[1:] for p in packets if p is not None and p[:1] == b"\x01")
        packets = decode(inner)
    unpack_ok = False
    rejected: list[str] = []
    accepted: list[str] = []
    for packet in packets:
        if packet is None:
            continue
        line = packet.decode("utf-8", "replace").rstrip("\n")
        if line.startswith("unpack "):
            unpack_ok = line == "unpack ok"
        elif line.startswith("ng "):
            rejected.append(line[3:])
        elif line.startswith("ok "):
            accepted.append(line[3:])
    return Report(unpack_ok, tuple(rejected), tuple(accepted))


@dataclass(frozen=True, slots=True)
class Command:
    old: str
    new: str
    ref: str


def parse_commands(body: bytes) -> tuple[list[Command], set[str]]:
    """The ref update commands at the start of a receive-pack request, and capabilities;
    PktLineError if they are not pkt-lines. Every step moves on by at least 4 bytes."""
    commands: list[Command] = []
    capabilities: set[str] = set()
    i = 0
    while i + 4 <= len(body):
        size = packet_length(body[i : i + 4])
        if size == 0:
            break
        if size < _SPECIAL:
            raise PktLineError("a receive-pack request has no delimiter packets")
        line = body[i + 4 : i + size]
        i += size
        text, _, caps = line.partition(b"\0")
        if caps:
            capabilities.update(caps.decode("ascii", "replace").split())
        parts = text.decode("utf-8", "replace").rstrip("\n").split(" ")
        if len(parts) == 3:
            commands.append(Command(*parts))
    return commands, capabilities


ATOMIC_FAILURE = "atomic push failed"


def refuse_all(
    stdout: bytes, commands: list[Command], side_band: bool, reason: str | None = None
) -> bytes:
    """The report-status of a push refused whole: every command's ref `ng` with `reason`,
    or else those git itself refused with git's reason and the others with git's own
    wording for an atomic push. Progress and error bands (2, 3) of a side-band report are
    kept, before it."""
    report = parse_report(stdout, side_band)
    reasons = {ref: why for ref, _, why in (r.partition(" ") for r in report.rejected)}
    inner = encode(b"unpack " + (b"ok" if report.unpack_ok else b"error") + b"\n")
    for command in commands:
        why = reason or reasons.get(command.ref) or ATOMIC_FAILURE
        inner += encode(f"ng {command.ref} {why}\n".encode())
    inner += FLUSH
    if not side_band:
        return inner
    kept = b"".join(
        encode(p) for p in decode(stdout) if p is not None and p[:1] in (b"\x02", b"\x03")
    )
    step = MAX_PAYLOAD - 1
    bands = b"".join(encode(b"\x01" + inner[i : i + step]) for i in range(0, len(inner), step))
    return kept + bands + FLUSH
