"""Relay-agnostic NIP-01 load generator.

Measures any NIP-01 websocket relay given its URL, so the same command runs
against our relay and against peers::

    python -m bench.nostr_load ingest --url ws://127.0.0.1:7777 --connections 50 --events 2000
    python -m bench.nostr_load seed   --url ws://127.0.0.1:7777 --events 100000 --tag-values 100
    python -m bench.nostr_load query  --url ws://127.0.0.1:7777 --queries 200 --limit 500 \
        --tag t=bench-0

Safety: only loopback relays are accepted (the URL's host must resolve to
127.0.0.0/8 or ::1 only), and every network phase is bounded both by a count
and by a total timeout, so a run always stops by itself.

Events are signed before the clock starts (BIP-340 schnorr via coincurve); the
event id is sha256 of the compact JSON ``[0,pubkey,created_at,kind,tags,content]``
serialised by orjson, whose escaping matches NIP-01.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import ipaddress
import math
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import coincurve
import orjson
import trio
import trio_websocket

from bench.wsraw import OP_TEXT, RawWebSocket, WebSocketError, frame

DEFAULT_TIMEOUT = 120.0
SEED_TIMEOUT = 600.0  # seeding is preparation, not a measurement: allow slow relays
DEFAULT_WINDOW = 100
QUERY_TIMEOUT = 30.0
RECEIVE_BUFFER = 65536
MAX_MESSAGE = 16 * 1024 * 1024
MAX_REASON_KINDS = 10


class BenchError(Exception):
    """A problem reported to the user as a one-line error (exit status 2)."""


# --------------------------------------------------------------------------
# Target URL handling (loopback only)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    url: str
    connect_host: str
    port: int
    resource: str
    host_header: str


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def resolve_target(url: str, host_header: str | None = None) -> Target:
    """Parse ``url`` and refuse it unless every address it resolves to is loopback."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise BenchError(
            f"unsupported URL {url!r}: only ws:// URLs of loopback relays are accepted"
        )
    host = parts.hostname
    if not host:
        raise BenchError(f"URL {url!r} has no host")
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise BenchError(f"URL {url!r} has a bad port: {exc}") from exc
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BenchError(f"cannot resolve host {host!r}: {exc}") from exc
    addresses = sorted({str(info[4][0]) for info in infos})
    outside = [a for a in addresses if not _is_loopback(a)]
    if not addresses or outside:
        raise BenchError(
            f"refusing {url!r}: host {host!r} resolves to non-loopback address(es) "
            f"{', '.join(outside) or '(none)'}; benchmarks only target loopback "
            "relays (127.0.0.0/8 or ::1)"
        )
    # Prefer IPv4 loopback when a name such as "localhost" resolves to both.
    connect_host = next((a for a in addresses if ":" not in a), addresses[0])
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    default_header = parts.netloc.rpartition("@")[2]
    return Target(
        url=url,
        connect_host=connect_host,
        port=port,
        resource=resource,
        host_header=host_header or default_header,
    )


async def open_connection(
    nursery: trio.Nursery, target: Target
) -> trio_websocket.WebSocketConnection:
    """Open one websocket to ``target`` (its background reader runs in ``nursery``)."""
    stream = await trio.open_tcp_stream(target.connect_host, target.port)
    return await trio_websocket.wrap_client_stream(
        nursery,
        stream,
        target.host_header,
        target.resource,
        max_message_size=MAX_MESSAGE,
        receive_buffer_size=RECEIVE_BUFFER,
    )


async def open_raw(target: Target) -> RawWebSocket:
    """The harness's own client (bench/wsraw.py): frames parsed by hand, so that the
    load generator's per-message cost stays small next to the relay's."""
    return await RawWebSocket.connect(
        target.connect_host, target.port, target.resource, target.host_header
    )


async def close_quietly(ws: trio_websocket.WebSocketConnection | RawWebSocket) -> None:
    # The run is over: closing is best effort and bounded.
    with trio.move_on_after(2), contextlib.suppress(Exception):
        await ws.aclose()


# --------------------------------------------------------------------------
# Event construction and signing
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    secret: coincurve.PrivateKey
    pubkey: str


@dataclass(frozen=True)
class PreparedEvent:
    id: str
    message: str  # the complete ["EVENT", {...}] text message
    frame: bytes  # the same as a masked websocket frame, ready to send


def make_keys(count: int) -> list[Key]:
    keys = []
    for _ in range(count):
        secret = coincurve.PrivateKey()
        xonly = coincurve.PublicKeyXOnly.from_secret(secret.secret)
        keys.append(Key(secret=secret, pubkey=xonly.format().hex()))
    return keys


def sign_event(
    key: Key, created_at: int, kind: int, tags: list[list[str]], content: str
) -> dict[str, Any]:
    serial = orjson.dumps([0, key.pubkey, created_at, kind, tags, content])
    digest = hashlib.sha256(serial).digest()
    sig = key.secret.sign_schnorr(digest)
    return {
        "id": digest.hex(),
        "pubkey": key.pubkey,
        "created_at": created_at,
        "kind": kind,
        "tags": tags,
        "content": content,
        "sig": sig.hex(),
    }


def verify_event(event: dict[str, Any]) -> bool:
    """Check id and signature the way a relay would (used as a self-test)."""
    serial = orjson.dumps(
        [0, event["pubkey"], event["created_at"], event["kind"], event["tags"], event["content"]]
    )
    digest = hashlib.sha256(serial).digest()
    if digest.hex() != event["id"]:
        return False
    xonly = coincurve.PublicKeyXOnly(bytes.fromhex(event["pubkey"]))
    return bool(xonly.verify(bytes.fromhex(event["sig"]), digest))


def prepare(event: dict[str, Any]) -> PreparedEvent:
    message = orjson.dumps(["EVENT", event])
    return PreparedEvent(id=event["id"], message=message.decode(), frame=frame(OP_TEXT, message))


def build_ingest_events(count: int, n_keys: int) -> list[PreparedEvent]:
    """``count`` fresh kind-1 notes with distinct content, spread over ``n_keys`` keys."""
    keys = make_keys(n_keys)
    run = os.urandom(6).hex()
    now = int(time.time())
    events = [
        sign_event(keys[i % n_keys], now, 1, [], f"nostr_load ingest {run} #{i}")
        for i in range(count)
    ]
    _self_test(events)
    return [prepare(e) for e in events]


def tag_values(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


def build_seed_events(
    count: int, n_keys: int, tag_name: str, values: Sequence[str]
) -> list[PreparedEvent]:
    """Kind-1 notes, each with one ``[tag_name, value]`` tag, values assigned round-robin.

    created_at is spread over the last 24 hours so ordering by time is meaningful.
    """
    keys = make_keys(n_keys)
    run = os.urandom(6).hex()
    now = int(time.time())
    events = [
        sign_event(
            keys[i % n_keys],
            now - (i * 86400) // max(count, 1),
            1,
            [[tag_name, values[i % len(values)]]],
            f"nostr_load seed {run} #{i}",
        )
        for i in range(count)
    ]
    _self_test(events)
    return [prepare(e) for e in events]


def _self_test(events: list[dict[str, Any]]) -> None:
    if events and not verify_event(events[0]):
        raise BenchError("internal error: a freshly signed event does not verify")


# --------------------------------------------------------------------------
# Statistics helpers
# --------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary_ms(values: Sequence[float]) -> dict[str, float | None]:
    ordered = sorted(values)

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000.0, 3)

    return {
        "p50": ms(percentile(ordered, 50)),
        "p99": ms(percentile(ordered, 99)),
        "mean": ms(sum(ordered) / len(ordered)) if ordered else None,
        "max": ms(ordered[-1]) if ordered else None,
    }


def bump(counter: collections.Counter[str], reason: str) -> None:
    """Count ``reason`` (truncated) while keeping the number of distinct keys bounded."""
    key = reason[:80] or "(empty)"
    if key not in counter and len(counter) >= MAX_REASON_KINDS:
        key = "(other)"
    counter[key] += 1


def _fmt_ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f} ms"


# --------------------------------------------------------------------------
# Publishing (ingest and seed)
# --------------------------------------------------------------------------


@dataclass
class PublishStats:
    accepted: int = 0
    duplicates: int = 0  # OK true whose message starts with "duplicate:"
    rejected: int = 0
    unmatched_ok: int = 0  # OKs carrying an id we had not in flight (attributed FIFO)
    reject_reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    notices: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    first_send: float | None = None
    last_ok: float | None = None
    errors: list[str] = field(default_factory=list)


async def _publish_on(
    ws: RawWebSocket,
    share: Sequence[PreparedEvent],
    window: int,
    start: trio.Event,
    stats: PublishStats,
) -> None:
    """Pipeline ``share`` over one connection, at most ``window`` events in flight; the
    events a free window allows go out together in one write."""
    pending: dict[str, float] = {}  # insertion-ordered: oldest first
    slots = trio.Semaphore(window)

    async def sender() -> None:
        await start.wait()
        i = 0
        while i < len(share):
            await slots.acquire()
            n = 1
            while i + n < len(share) and slots.value:
                slots.acquire_nowait()
                n += 1
            sent_at = time.perf_counter()
            if stats.first_send is None or sent_at < stats.first_send:
                stats.first_send = sent_at
            batch = share[i : i + n]
            for item in batch:
                pending[item.id] = sent_at
            await ws.send_frames(b"".join(item.frame for item in batch))
            i += n

    async def receiver() -> None:
        answered = 0
        while answered < len(share):
            raw = await ws.receive()
            now = time.perf_counter()
            try:
                msg = orjson.loads(raw)
            except orjson.JSONDecodeError:
                bump(stats.notices, "(unparseable message)")
                continue
            if not isinstance(msg, list) or not msg:
                continue
            if msg[0] == "OK" and len(msg) >= 3:
                sent_at = pending.pop(str(msg[1]), None)
                if sent_at is None:
                    if not pending:
                        bump(stats.notices, "(OK for an event not in flight)")
                        continue
                    # Some relays answer errors with an empty id; attribute the OK
                    # to the oldest event in flight on this connection.
                    stats.unmatched_ok += 1
                    sent_at = pending.pop(next(iter(pending)))
                reason = str(msg[3]) if len(msg) > 3 else ""
                if msg[2] is True:
                    stats.accepted += 1
                    if reason.startswith("duplicate:"):
                        stats.duplicates += 1
                else:
                    stats.rejected += 1
                    bump(stats.reject_reasons, reason)
                stats.latencies.append(now - sent_at)
                if stats.last_ok is None or now > stats.last_ok:
                    stats.last_ok = now
                answered += 1
                slots.release()
            elif msg[0] == "NOTICE":
                bump(stats.notices, str(msg[1]) if len(msg) > 1 else "")

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            nursery.start_soon(receiver)
    except* (WebSocketError, trio.BrokenResourceError) as group:
        for exc in group.exceptions:
            stats.errors.append(f"connection closed: {exc}")


async def publish(
    target: Target,
    events: Sequence[PreparedEvent],
    connections: int,
    window: int,
    timeout: float,
) -> tuple[PublishStats, bool]:
    """Send ``events`` over ``connections`` sockets; returns (stats, timed_out)."""
    stats = PublishStats()
    shares = [events[i::connections] for i in range(connections)]
    with trio.move_on_after(timeout) as scope:
        sockets = [await open_raw(target) for _ in range(connections)]
        try:
            start = trio.Event()
            async with trio.open_nursery() as workers:
                for ws, share in zip(sockets, shares, strict=True):
                    workers.start_soon(_publish_on, ws, share, window, start, stats)
                start.set()
        finally:
            for ws in sockets:
                await close_quietly(ws)
    return stats, scope.cancelled_caught


def publish_report(
    mode: str,
    target: Target,
    total: int,
    connections: int,
    window: int,
    stats: PublishStats,
    timed_out: bool,
    sign_s: float,
) -> dict[str, Any]:
    wall = (
        stats.last_ok - stats.first_send
        if stats.first_send is not None and stats.last_ok is not None
        else None
    )
    rate = stats.accepted / wall if wall and wall > 0 else None
    return {
        "mode": mode,
        "url": target.url,
        "connections": connections,
        "window": window,
        "events": total,
        "accepted": stats.accepted,
        "duplicates": stats.duplicates,
        "rejected": stats.rejected,
        "unanswered": total - stats.accepted - stats.rejected,
        "unmatched_ok": stats.unmatched_ok,
        "reject_reasons": dict(stats.reject_reasons),
        "notices": dict(stats.notices),
        "errors": stats.errors,
        "timed_out": timed_out,
        "sign_s": round(sign_s, 3),
        "wall_s": None if wall is None else round(wall, 4),
        "events_per_s": None if rate is None else round(rate, 1),
        "ok_latency_ms": latency_summary_ms(stats.latencies),
    }


def publish_line(report: dict[str, Any]) -> str:
    lat = report["ok_latency_ms"]
    rate = report["events_per_s"]
    wall = report["wall_s"]
    line = (
        f"{report['mode']} {report['url']}: {report['accepted']}/{report['events']} accepted, "
        f"{report['rejected']} rejected, {report['unanswered']} unanswered; "
        f"{report['connections']} conn x window {report['window']}; "
        f"{'n/a' if wall is None else f'{wall:.3f} s'} -> "
        f"{'n/a' if rate is None else f'{rate:.1f}'} events/s; "
        f"OK latency p50 {_fmt_ms(lat['p50'])}, p99 {_fmt_ms(lat['p99'])}"
    )
    if report["reject_reasons"]:
        line += f"; rejects: {report['reject_reasons']}"
    if report["notices"]:
        line += f"; notices: {report['notices']}"
    if report["errors"]:
        line += f"; errors: {report['errors'][:3]}"
    if report["timed_out"]:
        line += "; TIMED OUT"
    return line


# --------------------------------------------------------------------------
# Querying
# --------------------------------------------------------------------------


@dataclass
class QueryStats:
    latencies: list[float] = field(default_factory=list)
    returned: list[int] = field(default_factory=list)
    closed: collections.Counter[str] = field(default_factory=collections.Counter)
    notices: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: list[str] = field(default_factory=list)


async def run_queries(
    target: Target,
    queries: int,
    query_filters: Sequence[dict[str, Any]],
    timeout: float,
) -> tuple[QueryStats, bool]:
    """Run ``queries`` sequential REQs on one connection, timing send -> EOSE; the filters
    are taken in turn. ``returned`` holds each query's event count, in order."""
    stats = QueryStats()
    with trio.move_on_after(timeout) as scope:
        ws = await open_raw(target)
        try:
            for i in range(queries):
                sub_id = f"nl{i}"
                req = orjson.dumps(["REQ", sub_id, query_filters[i % len(query_filters)]])
                event_head = b'["EVENT","' + sub_id.encode() + b'",'
                count = 0
                closed = False
                with trio.fail_after(QUERY_TIMEOUT):
                    sent_at = time.perf_counter()
                    await ws.send_message(req.decode())
                    while True:
                        raw = await ws.receive()
                        if raw[: len(event_head) + 4].replace(b" ", b"").startswith(event_head):
                            count += 1  # the common case, without parsing the event
                            continue
                        try:
                            msg = orjson.loads(raw)
                        except orjson.JSONDecodeError:
                            bump(stats.notices, "(unparseable message)")
                            continue
                        if not isinstance(msg, list) or len(msg) < 2:
                            continue
                        kind = msg[0]
                        if kind == "NOTICE":
                            bump(stats.notices, str(msg[1]))
                        elif msg[1] != sub_id:
                            continue  # stray message for an earlier subscription, or AUTH
                        elif kind == "EVENT":
                            count += 1
                        elif kind == "EOSE":
                            break
                        elif kind == "CLOSED":
                            bump(stats.closed, str(msg[2]) if len(msg) > 2 else "")
                            closed = True
                            break
                    elapsed = time.perf_counter() - sent_at
                if not closed:
                    stats.latencies.append(elapsed)
                    stats.returned.append(count)
                    await ws.send_message(orjson.dumps(["CLOSE", sub_id]).decode())
        except trio.TooSlowError:
            stats.errors.append(f"no EOSE within {QUERY_TIMEOUT:.0f} s")
        except (WebSocketError, trio.BrokenResourceError) as exc:
            stats.errors.append(f"connection closed: {exc}")
        finally:
            await close_quietly(ws)
    return stats, scope.cancelled_caught


def query_report(
    target: Target,
    queries: int,
    query_filter: dict[str, Any],
    stats: QueryStats,
    timed_out: bool,
) -> dict[str, Any]:
    done = len(stats.latencies)
    busy = sum(stats.latencies)
    return {
        "mode": "query",
        "url": target.url,
        "filter": query_filter,
        "queries": queries,
        "completed": done,
        "closed": dict(stats.closed),
        "notices": dict(stats.notices),
        "errors": stats.errors,
        "timed_out": timed_out,
        "eose_latency_ms": latency_summary_ms(stats.latencies),
        "mean_events": round(sum(stats.returned) / done, 2) if done else None,
        "min_events": min(stats.returned) if done else None,
        "max_events": max(stats.returned) if done else None,
        "queries_per_s": round(done / busy, 1) if busy > 0 else None,
    }


def query_line(report: dict[str, Any]) -> str:
    lat = report["eose_latency_ms"]
    line = (
        f"query {report['url']} {orjson.dumps(report['filter']).decode()}: "
        f"{report['completed']}/{report['queries']} completed; "
        f"REQ->EOSE p50 {_fmt_ms(lat['p50'])}, p99 {_fmt_ms(lat['p99'])}; "
        f"mean events returned {report['mean_events']}"
    )
    if report["closed"]:
        line += f"; CLOSED: {report['closed']}"
    if report["notices"]:
        line += f"; notices: {report['notices']}"
    if report["errors"]:
        line += f"; errors: {report['errors']}"
    if report["timed_out"]:
        line += "; TIMED OUT"
    return line


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def parse_tag(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or len(name) != 1 or not name.isalpha():
        raise argparse.ArgumentTypeError(
            f"expected NAME=VALUE with a single-letter NAME, got {text!r}"
        )
    return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.nostr_load",
        description="NIP-01 relay load generator (loopback relays only).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, timeout: float = DEFAULT_TIMEOUT) -> None:
        p.add_argument(
            "--url", required=True, help="relay URL, e.g. ws://127.0.0.1:7777 (loopback only)"
        )
        p.add_argument(
            "--host-header", default=None, help="Host header to send (default: from the URL)"
        )
        p.add_argument(
            "--timeout",
            type=_positive_float,
            default=timeout,
            help=f"time limit of the network phase in seconds (default {timeout:.0f})",
        )
        p.add_argument(
            "--json",
            action="store_true",
            help="print a JSON object on stdout (the summary line goes to stderr)",
        )

    def publishing(p: argparse.ArgumentParser, events: int, connections: int) -> None:
        p.add_argument(
            "--events", type=_positive, default=events, help=f"events to send (default {events})"
        )
        p.add_argument(
            "--connections",
            type=_positive,
            default=connections,
            help=f"websocket connections (default {connections})",
        )
        p.add_argument("--keys", type=_positive, default=8, help="signing keys (default 8)")
        p.add_argument(
            "--window",
            type=_positive,
            default=DEFAULT_WINDOW,
            help=f"max events in flight per connection (default {DEFAULT_WINDOW})",
        )

    p_ingest = sub.add_parser("ingest", help="publish fresh kind-1 events; accepted events/s")
    common(p_ingest)
    publishing(p_ingest, events=10000, connections=1)

    p_seed = sub.add_parser("seed", help="store tagged events for the query benchmark")
    common(p_seed, timeout=SEED_TIMEOUT)
    publishing(p_seed, events=100000, connections=4)
    p_seed.add_argument(
        "--tag-values",
        type=_positive,
        default=100,
        help="number of distinct tag values, assigned round-robin (default 100)",
    )
    p_seed.add_argument("--tag-name", default="t", help="single-letter tag name (default t)")
    p_seed.add_argument(
        "--tag-prefix",
        default="bench",
        help="tag values are PREFIX-0 .. PREFIX-(N-1) (default bench)",
    )

    p_query = sub.add_parser("query", help="time sequential tag REQs from send to EOSE")
    common(p_query)
    p_query.add_argument(
        "--queries", type=_positive, default=100, help="sequential REQs (default 100)"
    )
    p_query.add_argument("--limit", type=_positive, default=500, help="REQ limit (default 500)")
    p_query.add_argument(
        "--tag",
        type=parse_tag,
        default=("t", "bench-0"),
        help="tag filter NAME=VALUE (default t=bench-0)",
    )
    return parser


def emit(report: dict[str, Any], line: str, as_json: bool) -> None:
    if as_json:
        print(line, file=sys.stderr)
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(line)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def run(args: argparse.Namespace) -> int:
    target = resolve_target(args.url, args.host_header)
    report: dict[str, Any]
    if args.command in ("ingest", "seed"):
        t0 = time.perf_counter()
        if args.command == "ingest":
            events = build_ingest_events(args.events, args.keys)
        else:
            if len(args.tag_name) != 1:
                raise BenchError("--tag-name must be a single letter")
            values = tag_values(args.tag_prefix, args.tag_values)
            events = build_seed_events(args.events, args.keys, args.tag_name, values)
        sign_s = time.perf_counter() - t0
        connections = min(args.connections, len(events))
        stats, timed_out = trio.run(publish, target, events, connections, args.window, args.timeout)
        report = publish_report(
            args.command, target, len(events), connections, args.window, stats, timed_out, sign_s
        )
        if args.command == "seed":
            report["tag_name"] = args.tag_name
            report["tag_values"] = args.tag_values
            report["tag_example"] = f"{args.tag_name}={args.tag_prefix}-0"
        emit(report, publish_line(report), args.json)
        ok = not timed_out and report["unanswered"] == 0 and not stats.errors
        return 0 if ok else 1
    name, value = args.tag
    query_filter = {f"#{name}": [value], "limit": args.limit}
    qstats, timed_out = trio.run(run_queries, target, args.queries, [query_filter], args.timeout)
    report = query_report(target, args.queries, query_filter, qstats, timed_out)
    emit(report, query_line(report), args.json)
    ok = not timed_out and report["completed"] == args.queries and not qstats.errors
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, WebSocketError, BaseExceptionGroup) as exc:
        print(f"error: cannot benchmark {args.url}: {_describe(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
