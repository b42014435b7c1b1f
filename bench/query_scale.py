"""Query latency over a large store: REQ -> EOSE for limit-500 queries over N events.

    .venv/bin/python -m bench.query_scale [--events 1000000] [--authors 1000]
        [--tag-values 100] [--queries 500] [--shapes tag,authors,search-rare,...]
        [--keep-db | --reuse-db NAME] [--json]

1. Build: `--events` signed events (kind 1 notes 70 %, kind 7 reactions 20 %, kind 6
   reposts 10 %) by `--authors` keys, one a second backwards from a fixed time, each with
   a `t` tag of one of `--tag-values` values; reactions and reposts also carry `e` and `p`
   tags. Keys and contents come from a fixed seed, so the same arguments make the same
   events. Signed in worker processes, written as JSON Lines to a temporary file.
2. Load: `relay import` of that file into a fresh database `relay_bench_qs_<random>`
   (every id and signature checked, stored through the relay's own store), then
   `VACUUM ANALYZE`.
3. Serve: `relay serve` on a free loopback port (defaults, rate limits and git probe off).
4. Query with the harness's client (`bench.nostr_load.run_queries`, frames parsed by
   `bench/wsraw.py`), one connection, sequential, each measured from sending the REQ to
   receiving its EOSE, `--queries` of each shape after 20 unmeasured warm-up queries of
   each (the last 20 filters of the cycle, so the measured ones start cold):
   - `{"#t":[<value>],"limit":500}`, the value cycling through all tag values
     (`--events / --tag-values` matches each);
   - `{"authors":[<key>],"kinds":[1],"limit":500}`, the key cycling through all authors
     (about `0.7 x --events / --authors` matches each).
   - NIP-50 search (content `query_scale note <i> ` + `lorem ipsum ` x (i % 8) for kinds
     1 and 6, `+` for 7; the `simple` configuration splits `query_scale` in two words):
     `{"search":"note <i>","limit":500}` for i = n x 997 (1 match, none for a reaction),
     `{"search":"lorem","limit":500}` (about 77 % of the events match: every one is ranked),
     and `{"search":"lorem","authors":[<key>],"limit":500}` (about 770 matches each).
   Each query must return exactly min(500, matches) events, or the run fails. `--shapes`
   picks some of them (default all): tag, authors, search-rare, search-common,
   search-author.

`--keep-db` leaves the loaded database in place and prints its name; `--reuse-db NAME`
skips build and load and queries that database (whose events must have been made with the
same arguments). Exit status 0 if every query returned what it should, 1 if not, 2 on a
setup error. Bounded: at most 5,000,000 events and 100,000 queries; every phase has a time
limit; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import coincurve
import orjson
import trio

from bench.common import (
    ADMIN_URL,
    ROOT,
    SetupError,
    admin,
    bounded,
    free_port,
    fresh_database,
    log_tail,
    serve_command,
    spawned_relay,
)
from bench.nostr_load import Key, percentile, resolve_target, run_queries
from bench.wsraw import WebSocketError

BASE_TIME = 1_780_000_000  # a fixed "now" for the generated history (2026-05-28)
KIND_SHARES = ((1, 70), (7, 20), (6, 10))  # kind, percent
WARM_UP = 20
LIMIT = 500
QUERY_TIMEOUT = 30.0
IMPORT_TIMEOUT = 3600.0


def make_key(i: int) -> Key:
    secret = coincurve.PrivateKey(hashlib.sha256(f"query_scale key {i}".encode()).digest())
    return Key(secret, coincurve.PublicKeyXOnly.from_secret(secret.secret).format().hex())


def kind_of(i: int) -> int:
    """The kind of event i: a fixed pseudo-random draw, independent of its author."""
    slot = int.from_bytes(hashlib.sha256(i.to_bytes(8, "big")).digest()[:4], "big") % 100
    for kind, share in KIND_SHARES:
        if slot < share:
            return kind
        slot -= share
    raise AssertionError("shares add up to 100")


def _fake_id(i: int) -> str:
    return hashlib.sha256(f"query_scale ref {i}".encode()).hexdigest()


def _sign_range(args: tuple[int, int, int, int]) -> bytes:
    """JSON Lines for events start..stop-1 (runs in a worker process)."""
    start, stop, authors, tag_values = args
    keys = [make_key(a) for a in range(authors)]
    out = bytearray()
    for i in range(start, stop):
        key = keys[i % authors]
        kind = kind_of(i)
        tags = [["t", f"qs-{i % tag_values}"]]
        if kind != 1:
            tags += [["e", _fake_id(i)], ["p", keys[(i * 7) % authors].pubkey]]
        content = "+" if kind == 7 else f"query_scale note {i} " + "lorem ipsum " * (i % 8)
        created_at = BASE_TIME - i
        serial = orjson.dumps([0, key.pubkey, created_at, kind, tags, content])
        digest = hashlib.sha256(serial).digest()
        event = {
            "id": digest.hex(), "pubkey": key.pubkey, "created_at": created_at, "kind": kind,
            "tags": tags, "content": content, "sig": key.secret.sign_schnorr(digest).hex(),
        }  # fmt: skip
        out += orjson.dumps(event) + b"\n"
    return bytes(out)


def build(path: Path, events: int, authors: int, tag_values: int) -> float:
    """Write the events to `path` (oldest first); seconds taken."""
    started = time.perf_counter()
    chunk = 20_000
    ranges = [
        (start, min(start + chunk, events), authors, tag_values)
        for start in range(0, events, chunk)
    ]
    workers = max(1, min(os.cpu_count() or 1, 4))
    with multiprocessing.get_context("spawn").Pool(workers) as pool, open(path, "wb") as out:
        # Newest first in memory, oldest first in the file: import order is file order.
        parts = pool.map(_sign_range, ranges)
        for part in reversed(parts):
            out.writelines(reversed(part.splitlines(keepends=True)))
    return time.perf_counter() - started


def relay_env(db_url: str, data_dir: Path, port: int = 0) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        RELAY_DATABASE_URL=db_url, RELAY_DATA_DIR=str(data_dir), RELAY_BIND="127.0.0.1",
        RELAY_PORT=str(port), RELAY_LOG_LEVEL="warning", RELAY_RATE_LIMITS="off",
        RELAY_GIT_PROBE="off",
    )  # fmt: skip
    return env


def load(path: Path, db_url: str, data_dir: Path) -> tuple[float, str]:
    """`relay import` the file, then VACUUM ANALYZE; (seconds, the import's report)."""
    started = time.perf_counter()
    command = [*serve_command()[:-1], "import", "--community", "127.0.0.1"]
    with open(path, "rb") as stdin:
        done = subprocess.run(
            command, stdin=stdin, capture_output=True, env=relay_env(db_url, data_dir),
            cwd=ROOT, timeout=IMPORT_TIMEOUT, check=False,
        )  # fmt: skip
    report = (done.stdout + done.stderr).decode(errors="replace").strip()
    if done.returncode != 0:
        raise SetupError(f"relay import failed ({done.returncode}):\n{report[-2000:]}")

    async def vacuum() -> None:
        conn = await asyncpg.connect(db_url, timeout=10)
        try:
            await conn.execute("VACUUM ANALYZE", timeout=IMPORT_TIMEOUT)
        finally:
            await conn.close()

    asyncio.run(vacuum())
    return time.perf_counter() - started, report


@dataclass
class Shape:
    name: str
    filters: list[dict[str, Any]]  # cycled through
    expected: list[int]  # events each filter must return


SHAPE_NAMES = ("tag", "authors", "search-rare", "search-common", "search-author")


def shapes(events: int, authors: int, tag_values: int) -> list[Shape]:
    per_value = [len(range(v, events, tag_values)) for v in range(tag_values)]
    notes = [0] * authors
    lorem = [0] * authors  # events of each author whose content says "lorem"
    kinds = [kind_of(i) for i in range(events)]
    for i, kind in enumerate(kinds):
        if kind == 1:
            notes[i % authors] += 1
        if kind != 7 and i % 8:
            lorem[i % authors] += 1
    pubkeys = [make_key(a).pubkey for a in range(authors)]
    rare = [(n * 997) % events for n in range(1000)]
    return [
        Shape(
            "#t limit 500",
            [{"#t": [f"qs-{v}"], "limit": LIMIT} for v in range(tag_values)],
            [min(LIMIT, n) for n in per_value],
        ),
        Shape(
            "authors+kinds limit 500",
            [{"authors": [pubkeys[a]], "kinds": [1], "limit": LIMIT} for a in range(authors)],
            [min(LIMIT, n) for n in notes],
        ),
        Shape(
            "search rare limit 500",
            [{"search": f"note {i}", "limit": LIMIT} for i in rare],
            [0 if kinds[i] == 7 else 1 for i in rare],
        ),
        Shape(
            "search common limit 500",
            [{"search": "lorem", "limit": LIMIT}],
            [min(LIMIT, sum(lorem))],
        ),
        Shape(
            "search+author limit 500",
            [
                {"search": "lorem", "authors": [pubkeys[a]], "limit": LIMIT}
                for a in range(authors)
            ],
            [min(LIMIT, n) for n in lorem],
        ),
    ]


def summary(latencies: Sequence[float]) -> dict[str, float | None]:
    ordered = sorted(latencies)
    return {
        name: (None if (v := percentile(ordered, pct)) is None else round(v * 1000, 2))
        for name, pct in (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99), ("max_ms", 100))
    }


def query_all(port: int, args: argparse.Namespace, plan: list[Shape]) -> dict[str, Any]:
    target = resolve_target(f"ws://127.0.0.1:{port}")

    async def main() -> dict[str, Any]:
        results: dict[str, Any] = {}
        for shape in plan:
            warm = shape.filters[-WARM_UP:]
            await run_queries(target, len(warm), warm, QUERY_TIMEOUT * len(warm))
            stats, timed_out = await run_queries(
                target, args.queries, shape.filters, QUERY_TIMEOUT * args.queries
            )
            errors = [*stats.errors, *(f"CLOSED: {r}" for r in stats.closed)]
            errors += ["timed out"] * timed_out
            for n, got in enumerate(stats.returned):
                want = shape.expected[n % len(shape.expected)]
                if got != want:
                    errors.append(f"{shape.filters[n % len(shape.filters)]}: {got}, not {want}")
            results[shape.name] = {
                "queries": len(stats.latencies), **summary(stats.latencies),
                "errors": errors[:10], "error_count": len(errors),
            }  # fmt: skip
        return results

    return trio.run(main)


@contextlib.contextmanager
def database(args: argparse.Namespace) -> Iterator[tuple[str, bool]]:
    """(url, needs loading)."""
    if args.reuse_db:
        base, _, _ = ADMIN_URL.rpartition("/")
        yield f"{base}/{args.reuse_db}", False
    elif args.keep_db:
        with fresh_database("relay_bench_qs") as url:
            yield url, True
            # Keep it: renamed, the drop on the way out finds nothing to drop.
            kept = url.rpartition("/")[2] + "_kept"
            admin(f"ALTER DATABASE {url.rpartition('/')[2]} RENAME TO {kept}")
            print(f"kept database {kept}", file=sys.stderr)
    else:
        with fresh_database("relay_bench_qs") as url:
            yield url, True


def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "events": args.events, "authors": args.authors, "tag_values": args.tag_values,
        "load_average_before": os.getloadavg(),
    }  # fmt: skip
    chosen = [SHAPE_NAMES.index(name) for name in args.shapes]
    plan = [shapes(args.events, args.authors, args.tag_values)[i] for i in chosen]
    with tempfile.TemporaryDirectory(prefix="relay-qs-") as tmp, database(args) as (url, fresh):
        tmp_path = Path(tmp)
        if fresh:
            path = tmp_path / "events.jsonl"
            built = build(path, args.events, args.authors, args.tag_values)
            report["build_seconds"] = round(built, 1)
            print(f"built {args.events} events in {report['build_seconds']} s", file=sys.stderr)
            seconds, imported = load(path, url, tmp_path / "data")
            report["load_seconds"] = round(seconds, 1)
            report["import_report"] = imported
            print(f"loaded in {report['load_seconds']} s: {imported}", file=sys.stderr)
            path.unlink()
        port = free_port()
        log = tmp_path / "relay.log"
        with spawned_relay(serve_command(), relay_env(url, tmp_path / "data", port), port, log):
            report["results"] = query_all(port, args, plan)
        report["relay_log_tail"] = log_tail(log, 5)
    report["load_average_after"] = os.getloadavg()
    return report


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['events']:,} events, {report['authors']} authors, {report['tag_values']} "
        "tag values",
        f"{'query':<28}{'n':>6}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}  errors",
    ]
    for name, r in report["results"].items():
        lines.append(
            f"{name:<28}{r['queries']:>6}{r['p50_ms']:>9}{r['p90_ms']:>9}{r['p99_ms']:>9}"
            f"{r['max_ms']:>9}  {r['error_count']}"
        )
    return "\n".join(lines)


def _shape_names(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in SHAPE_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"shapes are {', '.join(SHAPE_NAMES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench.query_scale", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=bounded(1000, 5_000_000), default=1_000_000)
    parser.add_argument("--authors", type=bounded(1, 100_000), default=1000)
    parser.add_argument("--tag-values", type=bounded(1, 100_000), default=100)
    parser.add_argument("--queries", type=bounded(1, 100_000), default=500)
    parser.add_argument(
        "--shapes", type=_shape_names, default=list(SHAPE_NAMES),
        help=f"comma-separated, of {', '.join(SHAPE_NAMES)} (default all)",
    )  # fmt: skip
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument("--keep-db", action="store_true")
    keep.add_argument("--reuse-db", metavar="NAME")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.reuse_db and not args.reuse_db.replace("_", "").isalnum():
        print("bench.query_scale: --reuse-db takes a database name", file=sys.stderr)
        return 2
    try:
        report = run(args)
    except (SetupError, WebSocketError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"bench.query_scale: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else table(report))
    failed = any(r["error_count"] or not r["queries"] for r in report["results"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
