"""Delivery latency between RELAY_WORKERS workers: an event accepted on one worker and
delivered to a subscriber on another (over the worker bus), and on the same worker.

    python -m bench.worker_fanout [--events 2000] [--workers 2] [--chunk 100] [--json]

Starts one relay (``relay serve`` with ``RELAY_WORKERS=--workers``, at least 2) on a
fresh PostgreSQL database and a free loopback port, as bench.compare does.  The kernel
spreads connections over the workers (SO_REUSEPORT), so to know where each one landed the
connections are opened one at a time, and after each the relay's /metrics (which answers
every worker's gauges, labelled ``worker="<i>"``) tells which worker's
``relay_connections`` went up.  Kept: a subscriber on worker 0, a publisher on worker 1
("cross") and a publisher on worker 0 ("same"); connections that land elsewhere stay open
and idle until the end, so the counts stay readable (at most 64 are opened).

The subscriber holds ``{"kinds":[1]}``; the publishers take turns, ``--chunk`` events
each, until each has sent ``--events`` fresh kind-1 events, one at a time (the next is
sent once the subscriber has it and the publisher has its OK), each timed from its send
to its arrival on the subscriber (bench.crosspod's loop).  Reports count, p50, p99 and
max per path, and the worker bus counters' increase on each worker
(``relay_worker_bus_sent_total``, ``relay_worker_bus_received_total``).

Every delivery includes the ingest on the publisher's worker (signature check, the
durable write through the group commit), since a worker delivers, and puts on the bus,
only what it has accepted.

Loopback only, bounded by counts and time limits; the relay is stopped and the database
dropped in ``finally`` blocks.  Exit status 0, 1 if some path has fewer than --events
deliveries, 2 on a setup error.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import trio
import trio_websocket

from bench import nostr_load as nl
from bench.capacity import relay_gauges
from bench.common import SetupError, bounded, fresh_database
from bench.compare import CompareError, log, our_relay, run_main
from bench.crosspod import subscribe_all, summary, timed_deliveries

MAX_OPENED = 64
PLACE_TIMEOUT = 5.0  # until /metrics shows a new connection
SETTLE_SECONDS = 2.0  # after start: every worker listening and on the bus
CONNECTIONS = "relay_connections"
BUS = ("relay_worker_bus_sent_total", "relay_worker_bus_received_total")
# role: the worker it must be on
ROLES = {"subscriber": 0, "cross": 1, "same": 0}


def per_worker(gauges: dict[str, float], name: str) -> dict[int, float]:
    """`name`'s samples by worker index (from `name{worker="<i>"}`)."""
    found: dict[int, float] = {}
    prefix = f'{name}{{worker="'
    for key, value in gauges.items():
        if key.startswith(prefix):
            found[int(key[len(prefix) :].split('"', 1)[0])] = value
    return found


async def landed(port: int, before: dict[int, float]) -> int | None:
    """The worker whose connection count rose above `before`, once /metrics shows it."""
    with trio.move_on_after(PLACE_TIMEOUT):
        while True:
            now = per_worker(await relay_gauges(port, (CONNECTIONS,)), CONNECTIONS)
            risen = [w for w, count in now.items() if count > before.get(w, 0.0)]
            if len(risen) == 1:
                return risen[0]
            await trio.sleep(0.02)
    return None


async def place(
    nursery: trio.Nursery, target: nl.Target, port: int
) -> tuple[dict[str, trio_websocket.WebSocketConnection], list[trio_websocket.WebSocketConnection]]:
    """A connection for every role in ROLES, on its worker; and the others opened."""
    placed: dict[str, trio_websocket.WebSocketConnection] = {}
    spare: list[trio_websocket.WebSocketConnection] = []
    landings: list[int | None] = []
    while len(placed) < len(ROLES) and len(landings) < MAX_OPENED:
        before = per_worker(await relay_gauges(port, (CONNECTIONS,)), CONNECTIONS)
        ws = await nl.open_connection(nursery, target)
        worker = await landed(port, before)
        landings.append(worker)
        role = next(
            (r for r, w in ROLES.items() if w == worker and r not in placed),
            None,
        )
        if role is None:
            spare.append(ws)
        else:
            placed[role] = ws
    log(f"connections opened: {len(landings)}, landed on workers {landings}")
    if len(placed) < len(ROLES):
        raise SetupError(f"could not place {sorted(set(ROLES) - set(placed))} in {MAX_OPENED}")
    return placed, spare


async def bus_counters(port: int) -> dict[str, dict[int, float]]:
    gauges = await relay_gauges(port, BUS)
    return {name: per_worker(gauges, name) for name in BUS}


async def measure(url: str, events: int, chunk: int) -> dict[str, Any]:
    target = nl.resolve_target(url)
    port = urlsplit(url).port or 0
    prepared = nl.build_ingest_events(2 * events, 4)
    latencies: dict[str, list[float]] = {"cross": [], "same": []}
    async with trio.open_nursery() as nursery:
        placed, spare = await place(nursery, target, port)
        await subscribe_all(placed["subscriber"])
        bus_before = await bus_counters(port)
        for start in range(0, events, chunk):
            # The paths take turns going first, chunk by chunk.
            order = ("cross", "same") if start // chunk % 2 == 0 else ("same", "cross")
            for path in order:
                offset = start if path == "cross" else events + start
                batch = prepared[offset : offset + min(chunk, events - start)]
                latencies[path] += await timed_deliveries(placed[path], placed["subscriber"], batch)
        bus_after = await bus_counters(port)
        for ws in [*placed.values(), *spare]:
            await nl.close_quietly(ws)
        nursery.cancel_scope.cancel()
    bus = {
        name: {str(w): after - bus_before[name].get(w, 0.0) for w, after in values.items()}
        for name, values in bus_after.items()
    }
    return {
        "events_per_path": events,
        "chunk": chunk,
        "paths": {path: summary(values) for path, values in latencies.items()},
        "bus_increase": bus,
        "opened_spare": len(spare),
    }


def report_lines(report: dict[str, Any]) -> list[str]:
    lines = [
        "| path | events | p50 (ms) | p99 (ms) | max (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    names = {
        "cross": "publisher on worker 1, subscriber on worker 0 (over the bus)",
        "same": "publisher and subscriber on worker 0",
    }
    for path, s in report["paths"].items():
        lines.append(
            f"| {names[path]} | {s['events']:,} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
            f"{s['max_ms']:.2f} |"
        )
    lines.append(f"worker bus counters' increase: {report['bus_increase']}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.worker_fanout",
        description="Delivery latency between RELAY_WORKERS workers and within one.",
    )
    parser.add_argument(
        "--events",
        type=bounded(1, 100_000),
        default=2000,
        help="events per path (default 2000)",
    )
    parser.add_argument(
        "--workers", type=bounded(2, 64), default=2, help="RELAY_WORKERS (default 2)"
    )
    parser.add_argument(
        "--chunk",
        type=bounded(1, 100_000),
        default=100,
        help="events a path sends before the other takes its turn (default 100)",
    )
    parser.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    return parser


def run(args: argparse.Namespace) -> int:
    with (
        tempfile.TemporaryDirectory(prefix="bench-worker-fanout-") as tmp,
        fresh_database("relay_bench_fanout") as database_url,
        our_relay(database_url, Path(tmp), {"RELAY_WORKERS": str(args.workers)}) as url,
    ):
        time.sleep(SETTLE_SECONDS)
        report = trio.run(measure, url, args.events, args.chunk)
    report["workers"] = args.workers
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print("\n".join(report_lines(report)))
    complete = all(s["events"] == args.events for s in report["paths"].values())
    return 0 if complete else 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), run, argv, (SetupError, CompareError, nl.BenchError))


if __name__ == "__main__":
    sys.exit(main())
