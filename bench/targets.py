"""Every performance target, measured by the benchmarks that own it, in one table.

    .venv/bin/python -m bench.targets [--quick] [--query-db NAME] [--json]

Runs, one after the other, each as its own process with its own fresh database and
relay (their docs say exactly what they do):

1. `bench.compare --runs 3 --events 10000 --seed 100000 --peer-seed 100000`: ingest and
   queries, our relay and nostr-relay side by side;
2. `bench.query_scale --events 1000000`: tag and authors+kinds queries over 1,000,000
   events (`--query-db NAME` reuses a database it kept with --keep-db);
3. `bench.capacity idle --connections 10000`: memory per idle connection;
4. `bench.capacity fanout --subscribers 10000`: one event to 10,000 subscriptions, as
   100 connections x 100 and as 10,000 connections x 1;
5. `bench.git_clone_push --runs 3`: clone and push through the relay and through
   `git http-backend`.

Then prints one Markdown table: each target, what was measured (medians), and whether it
was met; with --json, every step's own JSON report too (on stdout; the table goes to
stderr). `--quick` runs every step small (a smoke test of the harness: its numbers are
not at the targets' sizes, and the table says so). Exit status 0 when every step ran
(met or not), 1 when a step failed, with its error in the table. Each step has a time
limit; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.common import ROOT


@dataclass
class Step:
    name: str
    args: list[str]
    quick_args: list[str]
    timeout_s: float
    report: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class Target:
    label: str
    step: str
    measure: Callable[[dict[str, Any]], tuple[str, bool]]
    notes: list[str] = field(default_factory=list)


def steps(query_db: str | None) -> list[Step]:
    query = ["--events", "1000000"] + (["--reuse-db", query_db] if query_db else [])
    return [
        Step("compare", ["--runs", "3", "--events", "10000", "--seed", "100000",
                         "--peer-seed", "100000"],
             ["--runs", "1", "--events", "2000", "--seed", "5000", "--queries", "50"], 3600),
        Step("query_scale", query, ["--events", "20000", "--authors", "100", "--queries", "100"],
             3600),
        Step("capacity", ["idle", "--connections", "10000"], ["idle", "--connections", "500"],
             900),
        Step("capacity", ["fanout", "--subscribers", "10000"],
             ["fanout", "--subscribers", "1000", "--connections", "10", "--rounds", "2"], 1800),
        Step("git_clone_push", ["--runs", "3"], ["--commits", "500", "--runs", "1"], 1800),
    ]  # fmt: skip


def run_step(step: Step, quick: bool) -> None:
    chosen = step.quick_args if quick else step.args
    command = [sys.executable, "-m", f"bench.{step.name}", *chosen, "--json"]
    print(f"[{time.strftime('%H:%M:%S')}] {' '.join(command[2:])}", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, timeout=step.timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        step.error = f"no result within {step.timeout_s:.0f} s"
        return
    finally:
        step.seconds = time.monotonic() - started
    try:
        step.report = json.loads(done.stdout)
    except ValueError:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        step.error = f"exit {done.returncode}: {' | '.join(tail)}"
        return
    if done.returncode == 2:
        step.error = "setup error: " + done.stderr.decode(errors="replace").strip()[-300:]


# -- reading the reports -----------------------------------------------------------------


def _compare_row(report: dict[str, Any], prefix: str, needle: str) -> dict[str, Any]:
    for row in report["table"]:
        if row["workload"].startswith(prefix) and needle in row["workload"]:
            return dict(row)
    raise KeyError(f"{prefix} ... {needle}")


def ingest_rate(report: dict[str, Any]) -> tuple[str, bool]:
    row = _compare_row(report, "ingest", "50 conns")
    rate = row["ours_median"]
    return f"{rate:,.0f} events/s (runs {', '.join(f'{v:,.0f}' for v in row['ours'])})", (
        rate >= 10_000
    )


def ingest_ratio(report: dict[str, Any]) -> tuple[str, bool]:
    row = _compare_row(report, "ingest", "50 conns")
    one = _compare_row(report, "ingest", "1 conn x")
    ratio = row["ratio_ours_over_peer"]
    text = (
        f"{ratio:.1f}x ({row['ours_median']:,.0f} vs {row['peer_median']:,.0f} events/s); "
        f"1 connection: {one['ratio_ours_over_peer']:.1f}x"
    )
    return text, ratio >= 10


def query_p99(name: str) -> Callable[[dict[str, Any]], tuple[str, bool]]:
    def measure(report: dict[str, Any]) -> tuple[str, bool]:
        r = report["results"][name]
        text = (
            f"p99 {r['p99_ms']} ms (p50 {r['p50_ms']}, max {r['max_ms']}; "
            f"{r['queries']} queries over {report['events']:,} events)"
        )
        return text, r["p99_ms"] is not None and r["p99_ms"] < 20 and not r["error_count"]

    return measure


def idle_memory(report: dict[str, Any]) -> tuple[str, bool]:
    per = report["kib_per_connection"]
    return f"{per} KiB per connection ({report['opened']:,} open)", per is not None and per < 30


def fanout(connections_one_each: bool) -> Callable[[dict[str, Any]], tuple[str, bool]]:
    def measure(report: dict[str, Any]) -> tuple[str, bool]:
        for run in report["runs"]:
            one_each = run["connections"] == run["subscribers"]
            if one_each == connections_one_each:
                lat = run["latency_ms"]
                text = (
                    f"median {lat['median']:,.0f} ms, max {lat['max']:,.0f} ms "
                    f"({run['connections']:,} conns x {run['subscriptions_per_connection'][0]})"
                )
                return text, run["complete"] and lat["max"] < 1000
        raise KeyError("no such fan-out run")

    return measure


def git_ratio(step_name: str, bound: float) -> Callable[[dict[str, Any]], tuple[str, bool]]:
    def measure(report: dict[str, Any]) -> tuple[str, bool]:
        s = report["steps"][step_name]
        ratio = s["ratio_relay_over_http_backend"]
        text = (
            f"{ratio:.2f}x ({s['relay']['median_s']:.2f} s vs "
            f"{s['http_backend']['median_s']:.2f} s, {report['repository']['objects']:,} objects)"
        )
        return text, ratio <= bound

    return measure


TARGETS = [
    Target("ingest: >= 10,000 events/s accepted, 50 connections", "compare", ingest_rate),
    Target("ingest: >= 10x nostr-relay in the same run", "compare", ingest_ratio),
    Target("query #t limit 500 over 1,000,000 events: p99 < 20 ms", "query_scale",
           query_p99("#t limit 500")),
    Target("query authors+kinds limit 500 over 1,000,000 events: p99 < 20 ms", "query_scale",
           query_p99("authors+kinds limit 500")),
    Target("10,000 idle connections: < 30 KiB each", "capacity idle", idle_memory),
    Target("one event to 10,000 subscriptions < 1 s (100 x 100)", "capacity fanout",
           fanout(False)),
    Target("one event to 10,000 subscriptions < 1 s (10,000 x 1)", "capacity fanout",
           fanout(True)),
    Target("git clone within 1.5x http-backend", "git_clone_push", git_ratio("clone", 1.5)),
    Target("git push within 2x http-backend", "git_clone_push", git_ratio("push", 2.0)),
]  # fmt: skip


def step_key(step: Step) -> str:
    return step.name if step.name != "capacity" else f"capacity {step.args[0]}"


def table(done: list[Step], quick: bool) -> str:
    by_key = {step_key(s): s for s in done}
    lines = ["| target | measured | met |", "| --- | --- | --- |"]
    for target in TARGETS:
        step = by_key[target.step]
        if step.report is None:
            lines.append(f"| {target.label} | not measured: {step.error} | - |")
            continue
        try:
            text, met = target.measure(step.report)
        except (KeyError, TypeError, IndexError) as exc:
            lines.append(f"| {target.label} | not in the report ({exc}) | - |")
            continue
        verdict = "yes" if met else "**no**"
        lines.append(f"| {target.label} | {text} | {verdict if not quick else '(quick)'} |")
    lines.append(
        "| an unchanged repository's clone downloads no pack again | asserted by "
        "tests/git/test_pack_cache.py (cache misses unchanged on the second clone) | yes |"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.targets", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--query-db", metavar="NAME", help="reuse a bench.query_scale database")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    done = steps(args.query_db)
    for step in done:
        run_step(step, args.quick)
    out = sys.stderr if args.json else sys.stdout
    print(table(done, args.quick), file=out)
    print(
        f"load average before {load_before}, after {os.getloadavg()}; steps took "
        + ", ".join(f"{step_key(s)} {s.seconds:.0f} s" for s in done),
        file=out,
    )
    if args.json:
        reports = {step_key(s): s.report or {"error": s.error} for s in done}
        print(json.dumps({"quick": args.quick, "steps": reports}, indent=2))
    return 1 if any(s.report is None or s.error for s in done) else 0


if __name__ == "__main__":
    sys.exit(main())
