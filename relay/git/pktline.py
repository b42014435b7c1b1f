"""pkt-line framing and receive-pack report-status parsing (pure).

A hook's decline does not make `git receive-pack` exit non-zero: the only signal is an
`ng <ref> <reason>` line (or `unpack <error>`) in the report-status, which with
side-band-64k arrives nested inside band-1 pkt-lines. `report_rejections` de-frames both.
"""

from __future__ import annotations

from dataclasses import dataclass

FLUSH = b"0000"
MAX_PAYLOAD = 65516


class PktLineError(ValueError):
    pass


def encode(payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise PktLineError("pkt-line payload too long")
    return f"{len(payload) + 4:04x}".encode() + payload


def decode(data: bytes) -> list[bytes | None]:
    """Split a pkt-line stream; None stands for a flush (or delim) packet."""
    out: list[bytes | None] = []
    i = 0
    while i < len(data):
        head = data[i : i + 4]
        if len(head) < 4:
            raise PktLineError("truncated pkt-line length")
        try:
            size = int(head, 16)
        except ValueError:
            raise PktLineError(f"bad pkt-line length {head!r}") from None
        if size in (0, 1, 2):
            out.append(None)
            i += 4
            continue
        if size < 4 or i + size > len(data):
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
    """The ref update commands at the start of a receive-pack request, and capabilities."""
    commands: list[Command] = []
    capabilities: set[str] = set()
    i = 0
    while i + 4 <= len(body):
        size = int(body[i : i + 4], 16)
        if size == 0:
            break
        line = body[i + 4 : i + size]
        i += size
        text, _, caps = line.partition(b"\0")
        if caps:
            capabilities.update(caps.decode("ascii", "replace").split())
        parts = text.decode("utf-8", "replace").rstrip("\n").split(" ")
        if len(parts) == 3:
            commands.append(Command(*parts))
    return commands, capabilities
