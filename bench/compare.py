"""Our relay and the nostr-relay (PyPI) peer, side by side, with the same load.

    python -m bench.compare [--runs 3] [--events 10000] [--seed 100000] \
        [--peer-seed N] [--queries 200] [--json]

One invocation:

* creates a fresh PostgreSQL database (``$RELAY_BENCH_POSTGRES``, default
  postgresql://postgres@127.0.0.1:5432/postgres, database ``relay_bench_cmp_<random>``)
  and starts our relay on it (``relay serve`` on a free 127.0.0.1 port, a temporary
  ``RELAY_DATA_DIR``, ``RELAY_RATE_LIMITS=off``, ``RELAY_GIT_PROBE=off``,
  ``RELAY_LOG_LEVEL=warning``, otherwise the defaults);
* starts the peer with ``bench.peer`` (fresh sqlite database in bench/.peer/); it refuses
  to run if a peer is already running (that one belongs to somebody else);
* ``--runs`` times: signs ``--events`` fresh kind-1 events and sends them to each relay
  with 1 connection, then signs another batch and sends it with 50 connections (window
  100 per connection; the same batch goes to both relays, so both get identical,
  never-seen events); the two relays take turns going first;
* once: seeds ``--seed`` events tagged ``t=bench-<i mod 100>`` (4 connections x 100) into
  our relay and ``--peer-seed`` (default: the same) into the peer.  With fewer peer
  events the peer gets proportionally fewer tag values, so a value matches as many
  events on both relays (``--seed`` / 100) and a limit-500 query returns as much;
* ``--runs`` times, on each relay: ``--queries`` sequential ``{"#t":["bench-0"],
  "limit":500}`` REQs, then ``--queries`` ``{"authors":[<one seed key>],"kinds":[1],
  "limit":500}`` REQs (the seed uses 8 keys, so one author has --seed / 8 events);
* prints one Markdown table (median of the runs of each relay [min-max], and the
  ratio of the medians ours / peer) and with ``--json`` the raw nostr_load reports of
  every phase as JSON on stdout (the table then goes to stderr).

The measuring code is bench.nostr_load's (publish, run_queries, their reports), run in
this process; see docs/benchmarks.md for what each number means.

Safety: both relays bind to 127.0.0.1 and nostr_load refuses any non-loopback URL;
every phase is bounded by a count and a time limit; both relays are stopped and the
database dropped in ``finally`` blocks.  Exit status 0 if every phase completed, 1 if
some phase was incomplete (the table is still printed), 2 on a setup error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import trio
import trio_websocket

from bench import nostr_load as nl
from bench import peer
from bench.common import bounded, free_port, fresh_database, serve_command, spawned_relay

ROOT = Path(__file__).resolve().parent.parent
RELAY_STOP_TIMEOUT = 30.0  # RELAY_SHUTDOWN_GRACE defaults to 20 s
INGEST_TIMEOUT = 300.0
SEED_TIMEOUT = nl.SEED_TIMEOUT
QUERY_TIMEOUT = 300.0
TAG_VALUES = 100
SEED_KEYS = 8
SEED_CONNECTIONS = 4
INGEST_KEYS = 8
INGEST_CONNECTIONS = (1, 50)
LIMIT = 500

OURS = "ours"
PEER = "peer"
RELAYS = (OURS, PEER)


class CompareError(Exception):
    """A setup problem (exit status 2)."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Our relay: a fresh database and a subprocess
# --------------------------------------------------------------------------


@contextlib.contextmanager
def our_relay(
    database_url: str,
    work: Path,
    extra_env: dict[str, str] | None = None,
    *,
    command: list[str] | None = None,
    cwd: Path | None = None,
) -> Iterator[str]:
    """`relay serve` (or `command`, run in `cwd`) on a free loopback port; yields its URL."""
    port = free_port()
    env = {
        **os.environ,
        "RELAY_BIND": "127.0.0.1",
        "RELAY_PORT": str(port),
        "RELAY_DATABASE_URL": database_url,
        "RELAY_DATA_DIR": str(work / "relay-data"),
        "RELAY_LOG_LEVEL": "warning",
        "RELAY_RATE_LIMITS": "off",
        "RELAY_GIT_PROBE": "off",
        **(extra_env or {}),
    }
    with spawned_relay(
        command or serve_command(), env, port, work / "relay.log",
        error=CompareError, stop_timeout=RELAY_STOP_TIMEOUT, cwd=cwd,
    ):  # fmt: skip
        yield f"ws://127.0.0.1:{port}/"


@contextlib.contextmanager
def peer_relay() -> Iterator[str]:
    if peer.running_state() is not None:
        raise CompareError("a bench.peer server is already running; not touching it")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # pip output of a first install
            url = peer.start(None, keep_data=False)
    except (peer.PeerError, subprocess.CalledProcessError) as exc:
        raise CompareError(f"cannot start the peer: {exc}") from exc
    try:
        yield url
    finally:
        peer.stop()


# --------------------------------------------------------------------------
# Phases (bench.nostr_load's engine, in this process)
# --------------------------------------------------------------------------


def ingest(
    url: str, events: Sequence[nl.PreparedEvent], connections: int, window: int, timeout: float
) -> dict[str, Any]:
    target = nl.resolve_target(url)
    connections = min(connections, len(events))
    stats, timed_out = trio.run(nl.publish, target, events, connections, window, timeout)
    return nl.publish_report(
        "ingest", target, len(events), connections, window, stats, timed_out, 0.0
    )


def query(url: str, queries: int, query_filter: dict[str, Any]) -> dict[str, Any]:
    target = nl.resolve_target(url)
    stats, timed_out = trio.run(nl.run_queries, target, queries, [query_filter], QUERY_TIMEOUT)
    return nl.query_report(target, queries, query_filter, stats, timed_out)


def publish_complete(report: dict[str, Any]) -> bool:
    return (
        not report["timed_out"]
        and report["accepted"] == report["events"]
        and report["duplicates"] == 0
        and not report["errors"]
    )


def query_complete(report: dict[str, Any]) -> bool:
    return (
        not report["timed_out"]
        and report["completed"] == report["queries"]
        and not report["errors"]
    )


def first_pubkey(events: Sequence[nl.PreparedEvent]) -> str:
    message = orjson.loads(events[0].message)
    return str(message[1]["pubkey"])


@dataclass
class Plan:
    runs: int
    events: int
    seed: int
    peer_seed: int
    queries: int
    window: int


def measure(plan: Plan, urls: dict[str, str]) -> dict[str, Any]:
    raw: dict[str, dict[str, Any]] = {
        name: {"ingest_c1": [], "ingest_c50": [], "query_tag": [], "query_authors": []}
        for name in RELAYS
    }
    problems: list[str] = []

    def order(run: int) -> tuple[str, ...]:
        return RELAYS if run % 2 == 0 else RELAYS[::-1]

    def check(ok: bool, name: str, what: str, report: dict[str, Any], line: str) -> None:
        log(f"  {name}: {line}")
        if not ok:
            problems.append(f"{name} {what}: {line}")

    for run in range(plan.runs):
        for connections in INGEST_CONNECTIONS:
            t0 = time.perf_counter()
            batch = nl.build_ingest_events(plan.events, INGEST_KEYS)
            log(
                f"run {run + 1}/{plan.runs}: ingest {plan.events} events, {connections} conn(s) "
                f"(signed in {time.perf_counter() - t0:.1f} s)"
            )
            for name in order(run):
                report = ingest(urls[name], batch, connections, plan.window, INGEST_TIMEOUT)
                raw[name][f"ingest_c{connections}"].append(report)
                check(
                    publish_complete(report),
                    name,
                    f"ingest c{connections}",
                    report,
                    nl.publish_line(report),
                )

    # Seed once.  Each tag value matches seed / TAG_VALUES events on both relays.
    seeds: dict[str, tuple[int, int]] = {
        OURS: (plan.seed, TAG_VALUES),
        PEER: (plan.peer_seed, max(1, round(TAG_VALUES * plan.peer_seed / plan.seed))),
    }
    sets: dict[tuple[int, int], list[nl.PreparedEvent]] = {}
    authors: dict[str, str] = {}
    for name in RELAYS:
        count, values = seeds[name]
        if (count, values) not in sets:
            t0 = time.perf_counter()
            sets[(count, values)] = nl.build_seed_events(
                count, SEED_KEYS, "t", nl.tag_values("bench", values)
            )
            log(
                f"signed {count} seed events ({values} tag values) in "
                f"{time.perf_counter() - t0:.1f} s"
            )
        events = sets[(count, values)]
        authors[name] = first_pubkey(events)
        log(f"seed {name}: {count} events, {values} tag values")
        target = nl.resolve_target(urls[name])
        stats, timed_out = trio.run(
            nl.publish, target, events, SEED_CONNECTIONS, plan.window, SEED_TIMEOUT
        )
        report = nl.publish_report(
            "seed", target, count, SEED_CONNECTIONS, plan.window, stats, timed_out, 0.0
        )
        report["tag_values"] = values
        raw[name]["seed"] = report
        check(publish_complete(report), name, "seed", report, nl.publish_line(report))

    for run in range(plan.runs):
        log(f"run {run + 1}/{plan.runs}: queries")
        for name in order(run):
            filters = {
                "query_tag": {"#t": ["bench-0"], "limit": LIMIT},
                "query_authors": {"authors": [authors[name]], "kinds": [1], "limit": LIMIT},
            }
            for key, query_filter in filters.items():
                report = query(urls[name], plan.queries, query_filter)
                raw[name][key].append(report)
                check(query_complete(report), name, key, report, nl.query_line(report))
    return {"raw": raw, "problems": problems}


# --------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    label: str
    phase: str
    value: Callable[[dict[str, Any]], float | None]
    digits: int


def _rate(report: dict[str, Any]) -> float | None:
    value = report["events_per_s"]
    return None if value is None else float(value)


def _lat(field: str, pct: str) -> Callable[[dict[str, Any]], float | None]:
    def get(report: dict[str, Any]) -> float | None:
        value = report[field][pct]
        return None if value is None else float(value)

    return get


def table_rows(plan: Plan) -> list[Row]:
    e = f"{plan.events:,}"
    seed = f"{plan.seed:,}"
    if plan.peer_seed != plan.seed:
        seed += f" (peer: {plan.peer_seed:,})"
    db = f"{plan.seed:,}" if plan.peer_seed == plan.seed else f"{plan.seed:,} / {plan.peer_seed:,}"
    w = plan.window
    return [
        Row(f"ingest {e} events, 1 conn x {w} (events/s)", "ingest_c1", _rate, 0),
        Row(f"ingest {e} events, 50 conns x {w} (events/s)", "ingest_c50", _rate, 0),
        Row("ingest 1 conn: OK latency p50 (ms)", "ingest_c1", _lat("ok_latency_ms", "p50"), 1),
        Row(
            "ingest 50 conns: OK latency p50 (ms)",
            "ingest_c50",
            _lat("ok_latency_ms", "p50"),
            0,
        ),
        Row(
            f"seed {seed} events, {SEED_CONNECTIONS} conns x {w} (events/s, 1 run)",
            "seed",
            _rate,
            0,
        ),
        Row(
            f"query #t limit {LIMIT}, {db} seeded: REQ->EOSE p50 (ms)",
            "query_tag",
            _lat("eose_latency_ms", "p50"),
            1,
        ),
        Row(f"query #t limit {LIMIT}: p99 (ms)", "query_tag", _lat("eose_latency_ms", "p99"), 1),
        Row(
            f"query authors+kinds limit {LIMIT}: p50 (ms)",
            "query_authors",
            _lat("eose_latency_ms", "p50"),
            1,
        ),
        Row(
            f"query authors+kinds limit {LIMIT}: p99 (ms)",
            "query_authors",
            _lat("eose_latency_ms", "p99"),
            1,
        ),
    ]


def _values(raw: dict[str, Any], row: Row) -> list[float]:
    reports = raw[row.phase]
    if isinstance(reports, dict):
        reports = [reports]
    return [v for v in (row.value(r) for r in reports) if v is not None]


def _cell(values: list[float], digits: int) -> str:
    if not values:
        return "n/a"
    mid = f"{statistics.median(values):,.{digits}f}"
    if len(values) == 1:
        return mid
    return f"{mid} [{min(values):,.{digits}f}-{max(values):,.{digits}f}]"


def build_table(plan: Plan, raw: dict[str, dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    lines = [
        "| workload | our relay, median [range] | peer, median [range] | ours / peer |",
        "| --- | ---: | ---: | ---: |",
    ]
    rows: list[dict[str, Any]] = []
    for row in table_rows(plan):
        ours, theirs = _values(raw[OURS], row), _values(raw[PEER], row)
        m_ours = statistics.median(ours) if ours else None
        m_peer = statistics.median(theirs) if theirs else None
        ratio = m_ours / m_peer if m_ours is not None and m_peer else None
        lines.append(
            f"| {row.label} | {_cell(ours, row.digits)} | {_cell(theirs, row.digits)} | "
            f"{'n/a' if ratio is None else f'{ratio:.2f}x'} |"
        )
        rows.append(
            {
                "workload": row.label,
                "ours": ours,
                "peer": theirs,
                "ours_median": m_ours,
                "peer_median": m_peer,
                "ratio_ours_over_peer": None if ratio is None else round(ratio, 3),
            }
        )
    return "\n".join(lines), rows


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description="Our relay and the nostr-relay (PyPI) peer under the same NIP-01 load.",
    )
    add_common_options(parser, "events per ingest run (default 10000)")
    parser.add_argument(
        "--seed",
        type=bounded(TAG_VALUES, 1_000_000),
        default=100_000,
        help="events seeded into our relay for the queries (default 100000)",
    )
    parser.add_argument(
        "--peer-seed",
        type=bounded(TAG_VALUES, 1_000_000),
        default=None,
        help="events seeded into the peer (default: --seed; the peer does ~550/s)",
    )
    parser.add_argument(
        "--queries",
        type=bounded(1, 10_000),
        default=200,
        help="sequential REQs per query run and workload (default 200)",
    )
    return parser


def add_common_options(parser: argparse.ArgumentParser, events_help: str) -> None:
    """--runs, --events, --window and --json, as every side-by-side benchmark takes them."""
    parser.add_argument("--runs", type=bounded(1, 20), default=3, help="runs (default 3)")
    parser.add_argument("--events", type=bounded(1, 200_000), default=10_000, help=events_help)
    parser.add_argument(
        "--window",
        type=bounded(1, 1000),
        default=nl.DEFAULT_WINDOW,
        help=f"events in flight per connection (default {nl.DEFAULT_WINDOW})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the raw numbers as JSON on stdout (the table goes to stderr)",
    )


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def run(args: argparse.Namespace) -> int:
    plan = Plan(
        runs=args.runs,
        events=args.events,
        seed=args.seed,
        peer_seed=args.peer_seed or args.seed,
        queries=args.queries,
        window=args.window,
    )
    if plan.peer_seed > plan.seed:
        raise CompareError("--peer-seed must not exceed --seed")
    started = datetime.datetime.now(datetime.UTC)
    # The relay's code is what was on disk when it started: record the tree now.
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--", "relay", "sql").splitlines()
    load_before = _loadavg()
    t0 = time.monotonic()
    log(f"load average before: {load_before}; commit {commit}, {len(dirty)} changed path(s)")
    with contextlib.ExitStack() as stack:
        db_url = stack.enter_context(fresh_database("relay_bench_cmp", CompareError))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-compare-")))
        urls = {OURS: stack.enter_context(our_relay(db_url, work))}
        urls[PEER] = stack.enter_context(peer_relay())
        log(f"our relay {urls[OURS]}, peer {urls[PEER]}")
        result = measure(plan, urls)
    elapsed = time.monotonic() - t0
    load_after = _loadavg()
    log(f"load average after: {load_after}; {elapsed:.0f} s in all")
    table, rows = build_table(plan, result["raw"])
    out = sys.stderr if args.json else sys.stdout
    print(table, file=out)
    returned = {
        f"{name} {key}": [r["mean_events"] for r in result["raw"][name][key]]
        for name in RELAYS
        for key in ("query_tag", "query_authors")
    }
    if any(v != LIMIT for values in returned.values() for v in values):
        print(f"note: mean events returned per query (not always {LIMIT}): {returned}", file=out)
    else:
        print(f"every query returned {LIMIT} events", file=out)
    report = {
        "plan": plan.__dict__,
        "tag_values": TAG_VALUES,
        "seed_connections": SEED_CONNECTIONS,
        "commit": commit,
        "relay_tree_changes": dirty,
        "commit_after": _git("rev-parse", "--short", "HEAD"),
    }
    return finish_report(
        out, report if args.json else None, Timing(started, elapsed, load_before, load_after),
        rows, result, "phase(s)",
    )  # fmt: skip


@dataclass(frozen=True)
class Timing:
    started: datetime.datetime
    elapsed: float
    load_before: list[float]
    load_after: list[float]


def finish_report(
    out: Any,
    report: dict[str, Any] | None,
    timing: Timing,
    rows: list[dict[str, Any]],
    result: dict[str, Any],
    units: str,
) -> int:
    """List the incomplete `units` on `out`; with a `report` (--json), complete it with
    the timing, the table and the raw reports and print it on stdout. The exit status."""
    if result["problems"]:
        print(f"INCOMPLETE ({len(result['problems'])} {units}):", file=out)
        for problem in result["problems"]:
            print(f"  {problem}", file=out)
    if report is not None:
        report.update(
            {
                "started_utc": timing.started.isoformat(timespec="seconds"),
                "elapsed_s": round(timing.elapsed, 1),
                "loadavg_before": timing.load_before,
                "loadavg_after": timing.load_after,
                "nproc": os.cpu_count(),
                "table": rows,
                "problems": result["problems"],
                "raw": result["raw"],
            }
        )
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    return 1 if result["problems"] else 0


def run_main(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None,
    setup_errors: tuple[type[Exception], ...] = (CompareError, nl.BenchError),
) -> int:
    """Parse `argv`, run; a setup error or a failed connection is one line and status 2."""
    args = parser.parse_args(argv)
    try:
        return run(args)
    except setup_errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, trio_websocket.HandshakeError, BaseExceptionGroup) as exc:
        print(f"error: {nl._describe(exc)}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
