"""NIP-77 over a large store: one client reconciles with the relay's N events, 1 % differing.

    .venv/bin/python -m bench.negentropy [--events 1000000] [--diff 0.01] [--runs 3] [--json]

1. Build: `--events` signed kind-1 notes (no tags) by 100 keys (bench.query_scale's keys),
   one a second backwards from bench.query_scale's fixed time, with contents from the
   event's number, so the same arguments make the same events. Signed in worker
   processes, written as JSON Lines to a temporary file.
2. Load: bench.query_scale's load (`relay import` into a fresh database
   `relay_bench_neg_<random>`, every id and signature checked, then `VACUUM ANALYZE`).
3. Serve: `relay serve` on a free loopback port with bench.query_scale's environment
   (rate limits and git probe off, otherwise the defaults) and RELAY_NEG_MAX_RECORDS
   raised above `--events`; the frame size stays RELAY_NEG_FRAME_BYTES's default.
4. `--runs` times, each over a new websocket (bench/wsraw.py): the client holds the
   seeded events' (created_at, id) - computed here from the same generator, not read from
   the relay - less `--diff / 2` of them (a random sample, a new one each run) plus as
   many items of its own (random ids at random times in the same span), so `--diff` of N
   differ in all. It sends NEG-OPEN with the filter {} and answers every NEG-MSG with
   `relay.protocol.negentropy` (client frame size limit 60,000 bytes, as the relay's)
   until it has nothing more to say; the ids it learns it has ("have") must be exactly
   its own items and the ids it needs exactly the removed ones, or the run fails.
   Measured: round trips (messages sent = answers received), bytes of the JSON text of
   the NEG-OPEN/NEG-MSG frames sent and received, wall seconds from sending NEG-OPEN to
   handling the last NEG-MSG, the first answer's seconds (the relay's keys query,
   storage build and first reconcile), user + system CPU seconds of the process
   listening on the port (all threads, /proc/<pid>/stat) and of this process over the
   same span, and the seconds to build the client's storage (before NEG-OPEN).
5. Where the relay's first answer goes, measured in this process with the relay's own
   code on the same database after the runs: the keys query (`items_sql` for {} through
   asyncpg), making the (created_at, id) tuples, `Storage(...)`, and replaying the last
   run's client messages to a server-side `Negentropy` (the first, then all the rest);
   the replayed answers must equal what the relay sent.

Exit status 0 if every run learnt exactly the differences, 1 if not, 2 on a setup error.
Bounded: at most 5,000,000 events, 20 runs and 10,000 round trips a run; every phase has
a time limit; loopback only; the database, the temporary directory and the relay are
removed in `finally` blocks.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import trio

from bench.common import (
    SetupError,
    bounded,
    cpu_seconds,
    free_port,
    fresh_database,
    listening_pid,
    log_tail,
    serve_command,
    spawned_relay,
)
from bench.nostr_load import open_raw, resolve_target
from bench.query_scale import BASE_TIME, load, make_key, relay_env
from bench.wsraw import RawWebSocket, WebSocketError
from relay.protocol.filters import parse_filters
from relay.protocol.limits import Limits
from relay.protocol.negentropy import Negentropy, Storage
from relay.store.events import items_sql

AUTHORS = 100
FRAME_BYTES = 60_000  # the client's negentropy frame size limit: RELAY_NEG_FRAME_BYTES's default
MAX_ROUNDS = 10_000
ANSWER_TIMEOUT = 120.0
RUN_TIMEOUT = 900.0
SUB_ID = "bench-neg"


class BenchFailure(Exception):
    """A run did not reconcile as it should (exit status 1)."""


# -- the events ---------------------------------------------------------------------------


def _serial(i: int, pubkey: str) -> tuple[int, str, bytes]:
    """Event i's created_at, content and NIP-01 serialization (its id is the sha256)."""
    created_at = BASE_TIME - i
    content = f"negentropy bench note {i}"
    return created_at, content, orjson.dumps([0, pubkey, created_at, 1, [], content])


def _sign_range(args: tuple[int, int]) -> bytes:
    """JSON Lines for events start..stop-1, newest first (runs in a worker process)."""
    start, stop = args
    keys = [make_key(a) for a in range(AUTHORS)]
    out = bytearray()
    for i in range(start, stop):
        key = keys[i % AUTHORS]
        created_at, content, serial = _serial(i, key.pubkey)
        digest = hashlib.sha256(serial).digest()
        event = {
            "id": digest.hex(), "pubkey": key.pubkey, "created_at": created_at, "kind": 1,
            "tags": [], "content": content, "sig": key.secret.sign_schnorr(digest).hex(),
        }  # fmt: skip
        out += orjson.dumps(event) + b"\n"
    return bytes(out)


def build(path: Path, events: int) -> float:
    """Write the events to `path`, oldest first (import order is file order); seconds."""
    started = time.perf_counter()
    ranges = [(start, min(start + 20_000, events)) for start in range(0, events, 20_000)]
    workers = max(1, min(os.cpu_count() or 1, 4))
    with multiprocessing.get_context("spawn").Pool(workers) as pool, open(path, "wb") as out:
        for part in reversed(pool.map(_sign_range, ranges)):
            out.writelines(reversed(part.splitlines(keepends=True)))
    return time.perf_counter() - started


def seeded_items(events: int) -> list[tuple[int, bytes]]:
    """(created_at, id) of every seeded event, in negentropy order (oldest first)."""
    pubkeys = [make_key(a).pubkey for a in range(AUTHORS)]
    items = []
    for i in range(events - 1, -1, -1):
        created_at, _, serial = _serial(i, pubkeys[i % AUTHORS])
        items.append((created_at, hashlib.sha256(serial).digest()))
    return items


def client_set(
    seeded: list[tuple[int, bytes]], differ: int, run: int
) -> tuple[list[tuple[int, bytes]], set[bytes], set[bytes]]:
    """The client's items for one run (sorted), the ids it alone has, the ids it lacks."""
    rng = random.Random(f"bench.negentropy run {run}")
    removed = set(rng.sample(range(len(seeded)), differ))
    lacks = {seeded[i][1] for i in removed}
    span = (seeded[0][0], seeded[-1][0])
    extra = [(rng.randint(*span), rng.randbytes(32)) for _ in range(differ)]
    items = [item for i, item in enumerate(seeded) if i not in removed] + extra
    items.sort()
    return items, {item_id for _, item_id in extra}, lacks


# -- one reconciliation -------------------------------------------------------------------


async def reconcile(
    port: int, relay_pid: int, storage: Storage, own: set[bytes], lacks: set[bytes]
) -> tuple[dict[str, Any], list[bytes], bytes]:
    """One NEG-OPEN ... last NEG-MSG exchange; (its numbers, the client's messages, the
    sha256 of the relay's answers)."""
    with trio.fail_after(RUN_TIMEOUT):
        return await _exchange(port, relay_pid, storage, own, lacks)


async def _exchange(
    port: int, relay_pid: int, storage: Storage, own: set[bytes], lacks: set[bytes]
) -> tuple[dict[str, Any], list[bytes], bytes]:
    client = Negentropy(storage, frame_size_limit=FRAME_BYTES)
    first = client.initiate()
    message: bytes | None = first
    sent_messages: list[bytes] = []
    answers = hashlib.sha256()
    have: list[bytes] = []
    need: list[bytes] = []
    sent = received = rounds = 0
    client_neg = 0.0
    first_answer: float | None = None
    ws: RawWebSocket = await open_raw(resolve_target(f"ws://127.0.0.1:{port}"))
    try:
        relay_cpu, own_cpu = cpu_seconds(relay_pid), time.process_time()
        started = time.perf_counter()
        frame: list[Any] = ["NEG-OPEN", SUB_ID, {}, first.hex()]
        while message is not None:
            if rounds >= MAX_ROUNDS:
                raise BenchFailure(f"not done after {MAX_ROUNDS} round trips")
            text = orjson.dumps(frame)
            sent += len(text)
            sent_messages.append(message)
            await ws.send_message(text.decode())
            with trio.fail_after(ANSWER_TIMEOUT):
                raw = await ws.receive()
                if raw.startswith(b'["AUTH",'):  # the relay's NIP-42 challenge, sent once
                    raw = await ws.receive()
            received += len(raw)
            rounds += 1
            if first_answer is None:
                first_answer = time.perf_counter() - started
            answer = orjson.loads(raw)
            if answer[:2] != ["NEG-MSG", SUB_ID] or len(answer) != 3:
                raise BenchFailure(f"round trip {rounds}: the relay answered {raw[:300]!r}")
            reply = bytes.fromhex(answer[2])
            answers.update(reply)
            step = time.perf_counter()
            message, learnt_have, learnt_need = client.reconcile_client(reply)
            client_neg += time.perf_counter() - step
            have += learnt_have
            need += learnt_need
            if message is not None:
                frame = ["NEG-MSG", SUB_ID, message.hex()]
        wall = time.perf_counter() - started
        relay_cpu = cpu_seconds(relay_pid) - relay_cpu
        own_cpu = time.process_time() - own_cpu
        await ws.send_message(orjson.dumps(["NEG-CLOSE", SUB_ID]).decode())
    finally:
        with trio.move_on_after(2):
            await ws.aclose()
    errors = []
    if len(have) != len(set(have)) or set(have) != own:
        errors.append(f"have: {len(set(have) & own)} of {len(own)} right, "
                      f"{len(set(have) - own)} wrong, {len(have)} reported")  # fmt: skip
    if len(need) != len(set(need)) or set(need) != lacks:
        errors.append(f"need: {len(set(need) & lacks)} of {len(lacks)} right, "
                      f"{len(set(need) - lacks)} wrong, {len(need)} reported")  # fmt: skip
    if errors:
        raise BenchFailure("; ".join(errors))
    numbers = {
        "round_trips": rounds, "bytes_sent": sent, "bytes_received": received,
        "wall_seconds": round(wall, 3), "first_answer_seconds": round(first_answer or 0.0, 3),
        "relay_cpu_seconds": round(relay_cpu, 2), "client_cpu_seconds": round(own_cpu, 2),
        "client_negentropy_seconds": round(client_neg, 3), "have": len(have), "need": len(need),
    }  # fmt: skip
    return numbers, sent_messages, answers.digest()


# -- where the first answer goes ----------------------------------------------------------


def breakdown(
    db_url: str, max_records: int, messages: list[bytes], answers: bytes
) -> dict[str, Any]:
    """The relay's NEG-OPEN work step by step, in this process, on the same database."""

    async def keys() -> tuple[float, list[Any]]:
        conn = await asyncpg.connect(db_url, timeout=10)
        try:
            community = await conn.fetchval("SELECT community_id FROM events LIMIT 1")
            (flt,) = parse_filters([{}], Limits())
            sql, args = items_sql(community, flt, int(time.time()), max_records)
            started = time.perf_counter()
            rows = await conn.fetch(sql, *args, timeout=ANSWER_TIMEOUT)
            return time.perf_counter() - started, rows
        finally:
            await conn.close()

    query, rows = asyncio.run(keys())
    started = time.perf_counter()
    items = [(row["created_at"], bytes(row["id"])) for row in rows]
    tuples = time.perf_counter() - started
    del rows
    started = time.perf_counter()
    server = Negentropy(Storage(items), frame_size_limit=FRAME_BYTES)
    storage = time.perf_counter() - started
    replayed = hashlib.sha256()
    started = time.perf_counter()
    replayed.update(server.reconcile_server(messages[0]))
    first = time.perf_counter() - started
    started = time.perf_counter()
    for message in messages[1:]:
        replayed.update(server.reconcile_server(message))
    rest = time.perf_counter() - started
    return {
        "keys": len(items), "keys_query_seconds": round(query, 3),
        "tuples_seconds": round(tuples, 3), "storage_seconds": round(storage, 3),
        "first_reconcile_seconds": round(first, 3),
        "later_reconciles_seconds": round(rest, 3), "later_messages": len(messages) - 1,
        "answers_as_relay": replayed.digest() == answers,
    }  # fmt: skip


# -- the whole benchmark ------------------------------------------------------------------


MEDIAN_KEYS = (
    "round_trips", "bytes_sent", "bytes_received", "wall_seconds", "first_answer_seconds",
    "relay_cpu_seconds", "client_cpu_seconds", "client_negentropy_seconds",
    "client_storage_seconds",
)  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    differ = round(args.events * args.diff / 2)
    max_records = max(Limits().max_neg_records, args.events + 1000)
    report: dict[str, Any] = {
        "events": args.events, "diff": args.diff, "client_lacks": differ, "client_extra": differ,
        "relay_neg_max_records": max_records, "frame_bytes": FRAME_BYTES,
        "started_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_before": os.getloadavg(), "runs": [],
    }  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="relay-neg-") as tmp,
        fresh_database("relay_bench_neg") as url,
    ):
        tmp_path = Path(tmp)
        path = tmp_path / "events.jsonl"
        report["build_seconds"] = round(build(path, args.events), 1)
        print(f"built {args.events:,} events in {report['build_seconds']} s", file=sys.stderr)
        seconds, imported = load(path, url, tmp_path / "data")
        path.unlink()
        report["load_seconds"] = round(seconds, 1)
        report["import_report"] = imported.splitlines()[-1] if imported else ""
        print(f"loaded in {report['load_seconds']} s: {report['import_report']}", file=sys.stderr)
        seeded = seeded_items(args.events)
        port = free_port()
        env = relay_env(url, tmp_path / "data", port)
        env["RELAY_NEG_MAX_RECORDS"] = str(max_records)
        log = tmp_path / "relay.log"
        with spawned_relay(serve_command(), env, port, log):
            relay_pid = listening_pid(port)
            if relay_pid is None:
                raise SetupError(f"no process found listening on port {port}")
            messages: list[bytes] = []
            answers = b""
            for n in range(args.runs):
                started = time.perf_counter()
                items, own, lacks = client_set(seeded, differ, n)
                storage = Storage(items)
                del items
                built = time.perf_counter() - started
                numbers, messages, answers = trio.run(
                    reconcile, port, relay_pid, storage, own, lacks
                )
                numbers["client_storage_seconds"] = round(built, 3)
                report["runs"].append(numbers)
                print(f"run {n + 1}: {numbers}", file=sys.stderr)
            report["relay_peak_rss_mb"] = peak_rss_mb(relay_pid)
        report["relay_log_tail"] = log_tail(log, 5)
        report["relay_first_answer"] = breakdown(url, max_records, messages, answers)
    report["median"] = {
        key: statistics.median(r[key] for r in report["runs"]) for key in MEDIAN_KEYS
    }
    report["all_ids_hex_bytes"] = args.events * 67  # '"<64 hex>",' each: a REQ by ids, say
    report["load_average_after"] = os.getloadavg()
    return report


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['events']:,} events; the client lacks {report['client_lacks']:,} and has "
        f"{report['client_extra']:,} of its own",
        f"{'run':<8}{'trips':>6}{'sent MB':>9}{'recv MB':>9}{'wall s':>8}{'1st s':>7}"
        f"{'relay CPU':>10}{'client CPU':>11}{'client neg':>11}{'client storage':>15}",
    ]
    rows = [(str(n + 1), r) for n, r in enumerate(report["runs"])]
    for name, r in [*rows, ("median", report["median"])]:
        lines.append(
            f"{name:<8}{r['round_trips']:>6}{r['bytes_sent'] / 1e6:>9.2f}"
            f"{r['bytes_received'] / 1e6:>9.2f}{r['wall_seconds']:>8.2f}"
            f"{r['first_answer_seconds']:>7.2f}{r['relay_cpu_seconds']:>10.2f}"
            f"{r['client_cpu_seconds']:>11.2f}{r['client_negentropy_seconds']:>11.2f}"
            f"{r['client_storage_seconds']:>15.2f}"
        )
    first = report["relay_first_answer"]
    lines.append(
        f"relay's first answer, step by step: keys query {first['keys_query_seconds']} s "
        f"({first['keys']:,} rows), tuples {first['tuples_seconds']} s, storage "
        f"{first['storage_seconds']} s, first reconcile {first['first_reconcile_seconds']} s; "
        f"the {first['later_messages']} later messages {first['later_reconciles_seconds']} s"
        f"{'' if first['answers_as_relay'] else ' (answers differ from the relay!)'}"
    )
    lines.append(f"relay peak RSS {report['relay_peak_rss_mb']} MB; all ids as hex "
                 f"{report['all_ids_hex_bytes'] / 1e6:.1f} MB")  # fmt: skip
    return "\n".join(lines)


def fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench.negentropy", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=bounded(1000, 5_000_000), default=1_000_000)
    parser.add_argument(
        "--diff",
        type=fraction,
        default=0.01,
        help="share of the events that differ (half missing, half extra)",
    )
    parser.add_argument("--runs", type=bounded(1, 20), default=3)
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if round(args.events * args.diff / 2) < 1:
        print("bench.negentropy: --diff leaves nothing to differ", file=sys.stderr)
        return 2
    try:
        report = run(args)
    except BenchFailure as exc:
        print(f"bench.negentropy: FAILED: {exc}", file=sys.stderr)
        return 1
    except (SetupError, WebSocketError, OSError, trio.TooSlowError,
            subprocess.TimeoutExpired) as exc:  # fmt: skip
        print(f"bench.negentropy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
