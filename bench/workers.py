"""Ingest with RELAY_WORKERS=1, 2, auto (and the nostr-relay peer), side by side, with the
CPU each accepted event costs in the relay's processes and in PostgreSQL.

    python -m bench.workers [--workers 1,2,auto] [--runs 3] [--events 20000] \
        [--connections 50] [--window 100] [--no-peer] [--json]

One invocation:

* starts one relay per ``--workers`` value (``relay serve`` with ``RELAY_WORKERS`` set to
  it), each on a fresh PostgreSQL database (``$RELAY_BENCH_POSTGRES``, database
  ``relay_bench_ab_<random>``), a temporary ``RELAY_DATA_DIR`` and bench.compare's
  environment (``RELAY_RATE_LIMITS=off``, ``RELAY_GIT_PROBE=off``,
  ``RELAY_LOG_LEVEL=warning``), on a free 127.0.0.1 port; and the peer with
  ``bench.peer`` unless ``--no-peer`` (it refuses to run if a peer is already running);
* runs bench.ab's measurement: ``--runs`` times, ``--events`` freshly signed kind-1
  events (8 keys) go to every relay over ``--connections`` connections, ``--window``
  events in flight per connection; the relays take turns going first (the order rotates
  by one each run);
* prints one Markdown table (median of the runs [min-max]; ratios of the medians to
  RELAY_WORKERS=1 and to the peer) and with ``--json`` everything as JSON on stdout.

Before each relay's part of a run, and after it, the bench waits (at most 20 s) until the
machine is quiet (under a quarter of a core busy over half a second), so that what a relay
still does after its last OK (the worker bus delivering its backlog) does not fall into
the next relay's part.  The counters are read just before the part, just after it, and
after that wait: the CPU per event rows count up to after the wait (the part's whole
work), the others up to the end of the part.  The counters (all from /proc, and from
PostgreSQL's own views):

* relay CPU: user + system time of every process in the relay's process group: the
  process ``relay serve`` started as (with workers, the supervising parent, which also
  runs the worker bus) and its workers, which run in that group.  Each process counts up
  to its last reading, so a worker that exits mid-run keeps what it had used when last
  seen; "parent" is the group leader alone (with workers only);
* Postgres (database): user + system time of the PostgreSQL backends connected to the
  relay's database (``pg_stat_activity``); the relay pools its connections, so they live
  across the run, and one that appears mid-run started from zero;
* Postgres (cluster): the same for the postmaster and all its children (walwriter,
  checkpointer, autovacuum, every backend: also those of whatever else uses the server);
* write transactions and WAL bytes: ``pg_current_snapshot()``'s xmax and
  ``pg_current_wal_lsn()``, both server-wide;
* busiest main thread: the largest CPU time of one of those processes' main thread (its
  event loop; signature checks run in other threads) over the wall time of the part;
  near 1.00 that loop is the limit;
* load generator: this process's CPU time (the clients run here, in one thread);
* machine busy: non-idle time of all CPUs from /proc/stat, over the wall time of the
  part.

For the peer the "relay CPU" is its server's process group (gunicorn and its worker).

Safety: every relay binds to 127.0.0.1 and nostr_load refuses any non-loopback URL; every
phase is bounded by a count and a time limit; the relays and the peer are stopped and the
databases dropped in ``finally`` blocks.  Exit status 0 if every run of every relay had
all its events accepted, 1 if not (the table is still printed), 2 on a setup error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from bench import ab
from bench import nostr_load as nl
from bench.common import (
    SetupError,
    admin_row,
    bounded,
    cpu_seconds,
    fresh_database,
    listening_pid,
)
from bench.compare import (
    CompareError,
    Row,
    Timing,
    _git,
    _lat,
    _loadavg,
    _rate,
    add_common_options,
    finish_report,
    log,
    our_relay,
    peer_relay,
    run_main,
)

PEER = ab.PEER
SETTLED = "measured_settled"
DEFAULT_WORKERS = "1,2,auto"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
QUIET_CORES = 0.25
QUIET_SECONDS = 0.5
SETTLE_LIMIT = 20.0

_PG_STATE = """
SELECT array(SELECT pid FROM pg_stat_activity WHERE datname = $1) AS pids,
       pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xids,
       (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint AS wal
"""


def relay_name(workers: str) -> str:
    return f"workers={workers}"


# --------------------------------------------------------------------------
# Meters: cumulative counters of a relay, read before and after each part
# --------------------------------------------------------------------------


def processes() -> Iterator[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every process now."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                yield int(proc.name), int(fields[1]), int(fields[2])


class Cumulative:
    """CPU seconds of a changing set of processes, each counted up to its last reading
    (a process that appears later started from zero; one that is gone keeps what it had)."""

    def __init__(self) -> None:
        self.last: dict[int, float] = {}

    def read(self, pids: Iterable[int]) -> float:
        for pid in pids:
            with contextlib.suppress(OSError):
                self.last[pid] = cpu_seconds(pid)
        return sum(self.last.values())


def machine_busy_seconds() -> float:
    """Non-idle CPU time of the whole machine (all CPUs) since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / CLOCK_TICK


def settle() -> None:
    """Wait until the machine is quiet (under QUIET_CORES busy over QUIET_SECONDS), at most
    SETTLE_LIMIT seconds: a relay's leftover work (the worker bus delivering a backlog
    after the last OK) then neither falls into the next relay's part nor escapes its own."""
    deadline = time.monotonic() + SETTLE_LIMIT
    busy = machine_busy_seconds()
    while time.monotonic() < deadline:
        time.sleep(QUIET_SECONDS)
        now = machine_busy_seconds()
        used, busy = now - busy, now
        if used < QUIET_CORES * QUIET_SECONDS:
            return
    log(f"the machine was still busy after {SETTLE_LIMIT:.0f} s; going on")


def group_meter(url: str, database: str | None) -> ab.Meter:
    """The counters of the server listening on `url`'s port (its process group, found
    now) and, with a `database`, of PostgreSQL (see the module docstring)."""
    pid = listening_pid(urlsplit(url).port or 0)
    group = os.getpgid(pid) if pid is not None else None
    if group == os.getpgrp():  # not in a group of its own: it would count this process
        group = None
    server, backends, cluster = Cumulative(), Cumulative(), Cumulative()

    def read() -> dict[str, float] | None:
        table = list(processes())
        counters = {
            "client": time.process_time(),
            "busy": machine_busy_seconds(),
            "elapsed": time.monotonic(),
        }
        if group is not None:
            members = [p for p, _, g in table if g == group]
            counters["relay"] = server.read(members)
            if len(members) > 1:
                counters["parent"] = server.last.get(group, 0.0)
            for member in members:  # each process's main thread: its event loop
                with contextlib.suppress(OSError):
                    counters[f"loop {member}"] = cpu_seconds(member, member)
        if database is not None:
            try:
                row = admin_row(_PG_STATE, database)
            except (OSError, asyncpg.PostgresError):
                return None
            assert row is not None
            counters["postgres"] = backends.read(row["pids"])
            # The postmaster is the parent of the relay's backends.
            postmaster = next((pp for p, pp, _ in table if p in row["pids"]), None)
            counters["cluster"] = cluster.read([p for p, pp, _ in table if postmaster in (p, pp)])
            counters["xids"] = float(row["xids"])
            counters["wal_bytes"] = float(row["wal"])
        return counters

    return read


# --------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------


def _sum_per_event(*parts: str) -> Callable[[dict[str, Any]], float | None]:
    getters = [ab._cpu_per_event(part, SETTLED) for part in parts]

    def get(report: dict[str, Any]) -> float | None:
        values = [g(report) for g in getters]
        return None if None in values else sum(v for v in values if v is not None)

    return get


def _unaccounted(report: dict[str, Any]) -> float | None:
    """Machine busy time not in the relay, PostgreSQL or this process, per event (µs)."""
    used, accepted = report.get("measured") or {}, report["accepted"]
    parts = ("busy", "relay", "cluster", "client")
    if not accepted or any(part not in used for part in parts):
        return None
    rest: float = used["busy"] - used["relay"] - used["cluster"] - used["client"]
    return rest / int(accepted) * 1e6


def _busiest_loop(report: dict[str, Any]) -> float | None:
    """The largest share of the wall time one process's main thread was on a CPU."""
    used = report.get("measured") or {}
    loops = [value for key, value in used.items() if key.startswith("loop ")]
    if not loops or not used.get("elapsed"):
        return None
    share: float = max(loops) / used["elapsed"]
    return share


def _busy_cores(report: dict[str, Any]) -> float | None:
    used = report.get("measured") or {}
    if not used.get("elapsed") or "busy" not in used:
        return None
    cores: float = used["busy"] / used["elapsed"]
    return cores


def _events_per(counter: str) -> Callable[[dict[str, Any]], float | None]:
    def get(report: dict[str, Any]) -> float | None:
        used = report.get("measured") or {}
        count = used.get(counter)
        return report["accepted"] / count if count else None

    return get


def _per_event(counter: str) -> Callable[[dict[str, Any]], float | None]:
    def get(report: dict[str, Any]) -> float | None:
        used = report.get("measured") or {}
        value = used.get(counter)
        return value / report["accepted"] if value is not None and report["accepted"] else None

    return get


def table_rows(plan: ab.Plan) -> list[Row]:
    def us(part: str) -> Callable[[dict[str, Any]], float | None]:
        return ab._cpu_per_event(part, SETTLED)

    both = _sum_per_event("relay", "postgres")
    return [
        Row(
            f"ingest {plan.events:,} events, {plan.connections} conns x {plan.window} (events/s)",
            "ingest",
            _rate,
            0,
        ),
        Row("OK latency p50 (ms)", "ingest", _lat("ok_latency_ms", "p50"), 1),
        Row("relay CPU per accepted event, all its processes (µs)", "ingest", us("relay"), 1),
        Row("  of which the parent: supervisor, worker bus (µs)", "ingest", us("parent"), 1),
        Row("Postgres CPU per event, backends of its database (µs)", "ingest", us("postgres"), 1),
        Row("relay + Postgres backends per event (µs)", "ingest", both, 1),
        Row("Postgres CPU per event, whole cluster (µs)", "ingest", us("cluster"), 1),
        Row("load generator CPU per event (µs)", "ingest", us("client"), 1),
        Row("busiest main thread (event loop), share of a core", "ingest", _busiest_loop, 2),
        Row("machine CPU busy during the part (cores)", "ingest", _busy_cores, 2),
        Row("  busy, not relay/Postgres/load generator (µs/event)", "ingest", _unaccounted, 1),
        Row("events per write transaction (server-wide)", "ingest", _events_per("xids"), 1),
        Row("WAL bytes per event (server-wide)", "ingest", _per_event("wal_bytes"), 0),
    ]  # fmt: skip


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def worker_values(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    for value in values:
        if value != "auto" and not (value.isdigit() and 1 <= int(value) <= 64):
            raise argparse.ArgumentTypeError(f"not a worker count (1-64 or auto): {value!r}")
    if not values or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError("give distinct values, e.g. 1,2,auto")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.workers",
        description="Ingest and CPU per event with RELAY_WORKERS=1, 2, auto and the peer.",
    )
    parser.add_argument(
        "--workers",
        type=worker_values,
        default=worker_values(DEFAULT_WORKERS),
        help=f"RELAY_WORKERS values, one relay each (default {DEFAULT_WORKERS})",
    )
    add_common_options(parser, "events per run and relay (default 20000)")
    parser.set_defaults(events=20_000)
    parser.add_argument(
        "--connections",
        type=bounded(1, 1000),
        default=50,
        help="websocket connections per relay and run (default 50)",
    )
    parser.add_argument("--no-peer", action="store_true", help="leave out the nostr-relay peer")
    return parser


def start_relay(stack: contextlib.ExitStack, workers: str) -> tuple[str, ab.Meter]:
    """A relay with RELAY_WORKERS=`workers` on a fresh database, inside `stack`."""
    db_url = stack.enter_context(fresh_database("relay_bench_ab"))
    work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-workers-")))
    url = stack.enter_context(our_relay(db_url, work, {"RELAY_WORKERS": workers}))
    return url, group_meter(url, db_url.rsplit("/", 1)[1])


def run(args: argparse.Namespace) -> int:
    plan = ab.Plan(
        runs=args.runs, events=args.events, connections=args.connections, window=args.window
    )
    started = datetime.datetime.now(datetime.UTC)
    described = {
        "commit": _git("rev-parse", "HEAD"),
        "changes": _git("status", "--porcelain", "--", "relay", "sql").splitlines(),
    }
    load_before = _loadavg()
    log(f"load average before: {load_before}; {os.cpu_count()} CPUs; commit {described}")
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        meters: dict[str, ab.Meter] = {}
        for workers in args.workers:
            name = relay_name(workers)
            urls[name], meters[name] = start_relay(stack, workers)
        if not args.no_peer:
            urls[PEER] = stack.enter_context(peer_relay())
            meters[PEER] = group_meter(urls[PEER], None)
        time.sleep(2.0)  # every worker is up and on the bus
        log(", ".join(f"{name} {url}" for name, url in urls.items()))
        result = ab.measure(plan, urls, meters, settle)
    elapsed = time.monotonic() - t0
    load_after = _loadavg()
    log(f"load average after: {load_after}; {elapsed:.0f} s in all")
    ours = [relay_name(w) for w in args.workers]
    ratios = [(name, ours[0]) for name in ours[1:]]
    if not args.no_peer:
        ratios += [(name, PEER) for name in ours]
    table, rows = ab.build_table(plan, result["raw"], table_rows(plan), ratios)
    out = sys.stderr if args.json else sys.stdout
    print(table, file=out)
    rates = {name: v for name, v in rows[0]["medians"].items() if v is not None}
    if PEER in rates and len(rates) > 1:
        best = max((name for name in rates if name != PEER), key=rates.__getitem__)
        print(
            f"best of ours: {best}, {rates[best]:,.0f} events/s = "
            f"{rates[best] / rates[PEER]:.1f}x the peer's {rates[PEER]:,.0f}",
            file=out,
        )
    print(f"commit {described['commit'][:12]}, changes in relay/ sql/: {described['changes']}",
          file=out)  # fmt: skip
    print(f"load average before {load_before}, after {load_after}; {os.cpu_count()} CPUs",
          file=out)  # fmt: skip
    report = {"plan": plan.__dict__, "workers": args.workers, "peer": not args.no_peer,
              "tree": described}  # fmt: skip
    return finish_report(
        out, report if args.json else None, Timing(started, elapsed, load_before, load_after),
        rows, result, "run(s)",
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), run, argv, (SetupError, CompareError, nl.BenchError))


if __name__ == "__main__":
    sys.exit(main())
