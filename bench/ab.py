"""Two checkouts of our relay (and the nostr-relay peer) side by side, under the same ingest.

    python -m bench.ab --baseline DIR [--current DIR] [--runs 3] [--events 10000] \
        [--connections 50] [--window 100] [--no-peer] [--json]

``--baseline`` is another checkout of this repository, e.g. one made with
``git worktree add --detach ../baseline <commit>``; ``--current`` defaults to the
repository this file is in.  One invocation:

* runs every checkout's relay with this venv's Python (``sys.executable``), in the
  checkout (working directory and ``PYTHONPATH`` both the checkout), so the ``relay``
  package and its migrations (the checkout's ``sql/``, which the venv's editable install
  would otherwise take from its own tree) come from the checkout; first checks in that
  same environment that they do, and stops with exit status 2 if not;
* gives each checkout a fresh PostgreSQL database (``$RELAY_BENCH_POSTGRES``, default
  postgresql://postgres@127.0.0.1:5432/postgres, database ``relay_bench_ab_<random>``), a
  temporary ``RELAY_DATA_DIR`` and bench.compare's environment (``RELAY_RATE_LIMITS=off``,
  ``RELAY_GIT_PROBE=off``, ``RELAY_LOG_LEVEL=warning``, otherwise the defaults), and starts
  it on a free 127.0.0.1 port;
* starts the peer with ``bench.peer`` (fresh sqlite database in bench/.peer/) unless
  ``--no-peer``; it refuses to run if a peer is already running;
* ``--runs`` times: signs ``--events`` fresh kind-1 events (8 keys) and sends that batch
  to every relay over ``--connections`` connections, ``--window`` events in flight per
  connection, so every relay gets the same never-seen events; the relays take turns going
  first (the order rotates by one each run);
* prints one Markdown table, and with ``--json`` everything as JSON on stdout (the table
  then goes to stderr): the plan, each checkout's directory, commit and whether its
  ``relay/`` or ``sql/`` differs from that commit, the load averages before and after, the
  table's numbers and the raw nostr_load report of every run.

The numbers (bench.nostr_load's publish report, measured in this process):

* events/s: events accepted (OK true) divided by the time from the first event sent to
  the last OK received, on all connections together;
* OK latency p50: the median time from sending an event to receiving its OK;
* process CPU per accepted event (our relays only): user + system CPU time of the process
  listening on the relay's port (all its threads: signature checks run in worker threads),
  read from /proc just before and just after the run, divided by the events accepted;
  main thread CPU per event: the same for its first thread (the relay's event loop).
  These depend less than events/s on what else the machine runs at the time;
* each cell is the median of the runs [minimum-maximum]; the last columns divide the
  current checkout's median by the baseline's and by the peer's (events/s: above 1 is
  faster; latency: below 1 is faster).

A comparison is only as good as the machine is quiet: the load averages are printed so a
busy run can be told apart, and the rotating order spreads any drift over every relay.

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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import nostr_load as nl
from bench.common import (
    ROOT,
    SetupError,
    bounded,
    cpu_seconds,
    fresh_database,
    listening_pid,
)
from bench.compare import (
    INGEST_KEYS,
    INGEST_TIMEOUT,
    CompareError,
    Row,
    Timing,
    _cell,
    _git,
    _lat,
    _loadavg,
    _rate,
    _values,
    add_common_options,
    finish_report,
    ingest,
    log,
    our_relay,
    peer_relay,
    publish_complete,
    run_main,
)

BASELINE = "baseline"
CURRENT = "current"
PEER = "peer"
CHECK_TIMEOUT = 60.0

# Put in front of a `python -c` program run in a checkout: `relay.migrations` is the
# checkout's sql/ folder.  The venv's editable install maps that one module name to its own
# tree's sql/ with a finder at the end of sys.meta_path; this one goes first.
_CHECKOUT_PRELUDE = """\
import importlib.util, os, sys
class _CheckoutSql:
    @staticmethod
    def find_spec(name, path=None, target=None):
        init = os.path.join(os.getcwd(), "sql", "__init__.py")
        if name != "relay.migrations" or not os.path.isfile(init):
            return None
        return importlib.util.spec_from_file_location(
            name, init, submodule_search_locations=[os.path.dirname(init)])
sys.meta_path.insert(0, _CheckoutSql)
"""
# `python -m relay.cli serve`, with the prelude.
_SERVE = _CHECKOUT_PRELUDE + (
    "import runpy\nrunpy.run_module('relay.cli', run_name='__main__', alter_sys=True)\n"
)
_WHERE = _CHECKOUT_PRELUDE + (
    "import relay, relay.migrations\nprint(relay.__file__)\nprint(relay.migrations.__file__)\n"
)


@dataclass(frozen=True)
class Checkout:
    name: str
    path: Path

    @property
    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.path)}

    def check(self) -> None:
        """Fail unless `relay` and its migrations import from this checkout."""
        try:
            done = subprocess.run(
                [sys.executable, "-c", _WHERE],
                cwd=self.path,
                env={**os.environ, **self.env},
                capture_output=True,
                text=True,
                timeout=CHECK_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise SetupError(f"--{self.name} {self.path}: cannot import relay: {exc}") from exc
        if done.returncode != 0:
            raise SetupError(
                f"--{self.name} {self.path}: cannot import relay there:\n"
                f"{done.stderr.strip()[-2000:]}"
            )
        found = [Path(line).resolve() for line in done.stdout.splitlines()]
        wanted = [self.path / "relay" / "__init__.py", self.path / "sql" / "__init__.py"]
        if found != wanted:
            raise SetupError(
                f"--{self.name} {self.path}: `relay` and `relay.migrations` import from "
                f"{', '.join(map(str, found)) or '(nothing)'}, not from {self.path}/relay and "
                f"{self.path}/sql; is it a checkout of this repository?"
            )

    def describe(self) -> dict[str, Any]:
        """The commit and the changes to what the relay runs (relay/, sql/), read now."""
        where = ("-C", str(self.path))
        changes = _git(*where, "status", "--porcelain", "--", "relay", "sql").splitlines()
        return {
            "dir": str(self.path),
            "commit": _git(*where, "rev-parse", "HEAD"),
            "dirty": bool(changes),
            "changes": changes,
        }


@dataclass(frozen=True)
class Plan:
    runs: int
    events: int
    connections: int
    window: int


def checkout_relay(stack: contextlib.ExitStack, checkout: Checkout) -> str:
    """Start `checkout`'s relay on a fresh database inside `stack`; its URL."""
    db_url = stack.enter_context(fresh_database("relay_bench_ab"))
    work = Path(
        stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-ab-{checkout.name}-"))
    )
    return stack.enter_context(
        our_relay(
            db_url,
            work,
            checkout.env,
            command=[sys.executable, "-c", _SERVE, "serve"],
            cwd=checkout.path,
        )
    )


# A relay's meter: counters read just before and just after each run (CPU seconds and the
# like, by name); the run's report keeps their differences as "measured".  None if unknown.
Meter = Callable[[], dict[str, float] | None]


def listening_meter(url: str) -> Meter:
    """(process, main thread) CPU seconds of the process listening on `url`'s port, found
    now."""
    pid = listening_pid(urlsplit(url).port or 0)

    def read() -> dict[str, float] | None:
        if pid is None:
            return None
        try:
            return {"process": cpu_seconds(pid), "main_thread": cpu_seconds(pid, pid)}
        except OSError:
            return None

    return read


def measure(
    plan: Plan,
    urls: dict[str, str],
    meters: dict[str, Meter] | None = None,
    settle: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """`plan.runs` rounds of one fresh batch sent to every relay in turn (the order rotates
    by one each round); each report gets the deltas of its relay's meter (by default, CPU
    of the process listening, for our relays only: the peer's work is not all in the
    listening process) from just before to just after the part ("measured").  With
    `settle` (which waits until the machine is quiet), it is called before each part and
    after it, and the report also gets the deltas up to then ("measured_settled": the
    part's work including what it left behind after its last OK)."""
    names = list(urls)
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {name: {"ingest": []} for name in names}
    if meters is None:
        meters = {name: listening_meter(url) for name, url in urls.items() if name != PEER}
    problems: list[str] = []
    for run in range(plan.runs):
        t0 = time.perf_counter()
        batch = nl.build_ingest_events(plan.events, INGEST_KEYS)
        first = run % len(names)
        order = names[first:] + names[:first]
        log(
            f"run {run + 1}/{plan.runs}: {plan.events} events, {plan.connections} conn(s), "
            f"order {', '.join(order)} (signed in {time.perf_counter() - t0:.1f} s)"
        )
        for name in order:
            meter = meters.get(name)
            if settle:
                settle()
            before = meter() if meter else None
            report = ingest(urls[name], batch, plan.connections, plan.window, INGEST_TIMEOUT)
            report["measured"] = _used(before, meter() if meter else None)
            if settle:
                settle()
                report["measured_settled"] = _used(before, meter() if meter else None)
            raw[name]["ingest"].append(report)
            line = nl.publish_line(report)
            log(f"  {name}: {line}")
            if not publish_complete(report):
                problems.append(f"{name} run {run + 1}: {line}")
    return {"raw": raw, "problems": problems}


def _used(
    before: dict[str, float] | None, after: dict[str, float] | None
) -> dict[str, float] | None:
    if before is None or after is None:
        return None
    return {key: after[key] - before[key] for key in after.keys() & before.keys()}


def _cpu_per_event(part: str, key: str = "measured") -> Callable[[dict[str, Any]], float | None]:
    """Microseconds per accepted event of one counter (CPU seconds) of the report's `key`."""

    def get(report: dict[str, Any]) -> float | None:
        used, accepted = report.get(key), report["accepted"]
        if not used or part not in used or not accepted:
            return None
        per_event: float = used[part] / accepted * 1e6
        return per_event

    return get


def table_rows(plan: Plan) -> list[Row]:
    return [
        Row(
            f"ingest {plan.events:,} events, {plan.connections} conns x {plan.window} (events/s)",
            "ingest",
            _rate,
            0,
        ),
        Row("OK latency p50 (ms)", "ingest", _lat("ok_latency_ms", "p50"), 1),
        Row("process CPU per accepted event (µs)", "ingest", _cpu_per_event("process"), 1),
        Row("main thread CPU per event (µs)", "ingest", _cpu_per_event("main_thread"), 1),
    ]


def build_table(
    plan: Plan,
    raw: dict[str, dict[str, Any]],
    rows_of: Sequence[Row] | None = None,
    ratios: Sequence[tuple[str, str]] | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """The Markdown table of `rows_of` (default: table_rows), a column per relay and one
    per ratio of medians (a, b) (default: current / baseline and current / peer)."""
    names = list(raw)
    if ratios is None:
        ratios = [(CURRENT, other) for other in (BASELINE, PEER) if other in raw]
    lines = [
        "| workload | "
        + " | ".join(f"{name}, median [range]" for name in names)
        + " | "
        + " | ".join(f"{a} / {b}" for a, b in ratios)
        + " |",
        "| --- |" + " ---: |" * (len(names) + len(ratios)),
    ]
    rows: list[dict[str, Any]] = []
    for row in rows_of if rows_of is not None else table_rows(plan):
        values = {name: _values(raw[name], row) for name in names}
        medians = {name: statistics.median(v) if v else None for name, v in values.items()}
        quotients: dict[str, float | None] = {}
        for a, b in ratios:
            top, bottom = medians[a], medians[b]
            quotients[f"{a}/{b}"] = top / bottom if top is not None and bottom else None
        lines.append(
            f"| {row.label} | "
            + " | ".join(_cell(values[name], row.digits) for name in names)
            + " | "
            + " | ".join("n/a" if q is None else f"{q:.2f}x" for q in quotients.values())
            + " |"
        )
        rows.append(
            {
                "workload": row.label,
                "values": values,
                "medians": medians,
                "ratios": {k: None if q is None else round(q, 3) for k, q in quotients.items()},
            }
        )
    return "\n".join(lines), rows


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ab",
        description="Ingest of two checkouts of our relay and of the nostr-relay peer.",
    )
    parser.add_argument(
        "--baseline", type=Path, required=True, help="the other checkout (a directory)"
    )
    parser.add_argument(
        "--current",
        type=Path,
        default=ROOT,
        help=f"the checkout to compare with it (default {ROOT})",
    )
    add_common_options(parser, "events per run and relay (default 10000)")
    parser.add_argument(
        "--connections",
        type=bounded(1, 1000),
        default=50,
        help="websocket connections per relay and run (default 50)",
    )
    parser.add_argument("--no-peer", action="store_true", help="leave out the nostr-relay peer")
    return parser


def run(args: argparse.Namespace) -> int:
    plan = Plan(
        runs=args.runs, events=args.events, connections=args.connections, window=args.window
    )
    checkouts = [
        Checkout(BASELINE, args.baseline.resolve()),
        Checkout(CURRENT, args.current.resolve()),
    ]
    for checkout in checkouts:
        if not checkout.path.is_dir():
            raise SetupError(f"--{checkout.name} {checkout.path} is not a directory")
        checkout.check()
    started = datetime.datetime.now(datetime.UTC)
    # A relay runs the code that was on disk when it started: describe the trees now.
    described = {checkout.name: checkout.describe() for checkout in checkouts}
    for name, info in described.items():
        log(
            f"{name}: {info['dir']} at {info['commit'][:12]}"
            f"{', changed: ' + ' '.join(info['changes']) if info['dirty'] else ''}"
        )
    load_before = _loadavg()
    log(f"load average before: {load_before}")
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        urls = {checkout.name: checkout_relay(stack, checkout) for checkout in checkouts}
        if not args.no_peer:
            urls[PEER] = stack.enter_context(peer_relay())
        log(", ".join(f"{name} {url}" for name, url in urls.items()))
        result = measure(plan, urls)
    elapsed = time.monotonic() - t0
    load_after = _loadavg()
    log(f"load average after: {load_after}; {elapsed:.0f} s in all")
    table, rows = build_table(plan, result["raw"])
    out = sys.stderr if args.json else sys.stdout
    print(table, file=out)
    for name, info in described.items():
        state = "with changes in relay/ or sql/" if info["dirty"] else "clean"
        print(f"{name}: {info['dir']} at {info['commit'][:12]} ({state})", file=out)
    print(f"load average before {load_before}, after {load_after}", file=out)
    report = {"plan": plan.__dict__, "peer": not args.no_peer, "checkouts": described}
    return finish_report(
        out, report if args.json else None, Timing(started, elapsed, load_before, load_after),
        rows, result, "run(s)",
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), run, argv, (SetupError, CompareError, nl.BenchError))


if __name__ == "__main__":
    sys.exit(main())
