"""Which mechanism carries events between the worker processes of one relay? The worker
bus (a unix socket through the parent, relay.pubsub.workerbus) against PostgreSQL
LISTEN/NOTIFY, each timed carrying the same events from one worker's end to another's.

    python -m bench.bus_choice [--events 2000] [--burst 20000] [--json]

Both run in this one process (the bus's hub and two of its workers' ends as trio tasks;
two asyncpg connections under trio-asyncio, one NOTIFYing, one LISTENing) on a fresh
database, so both pay for the same event loop:

* latency: --events events one at a time (the next sent when the last arrived), each
  timed from its send to its arrival at the other end: p50 and p99;
* throughput: --burst events sent as fast as each mechanism takes them, timed from the
  first send to the last arrival: events per second;
* CPU: this process's user+system CPU over the burst, per event (the bus's hub does its
  forwarding in this process too; NOTIFY's delivery work is the server's, reported apart
  as the Postgres backends' CPU is not read here).

The events are real signed kind-1 events of ~400 bytes. NOTIFY payloads are limited to
8,000 bytes: an event up to RELAY_MAX_EVENT_BYTES (64 KiB) would have to be sent as its id
and read back from the table by every worker, which this bench does not add to its cost.
Loopback only; every loop bounded by its count and a time limit; the database is dropped.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import trio
import trio_asyncio
from trio_asyncio import aio_as_trio

from bench import nostr_load as nl
from bench.common import bounded, fresh_database
from relay.events.model import Event, parse_event
from relay.protocol.limits import RateLimits
from relay.pubsub.workerbus import Hub, WorkerBus

TIME_LIMIT = 120.0
CHANNEL = "relay_bench_bus"


def events_of(count: int) -> list[tuple[str, str]]:
    """(id, JSON) of `count` fresh signed events."""
    prepared = nl.build_ingest_events(count, 4)
    return [(p.id, orjson.dumps(orjson.loads(p.message)[1]).decode()) for p in prepared]


class Arrivals:
    """Arrival times by event id, and a wake-up when a given count has arrived."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.wanted = 0
        self.reached = trio.Event()

    def arrive(self, event_id: str) -> None:
        self.at[event_id] = time.perf_counter()
        if len(self.at) >= self.wanted:
            self.reached.set()

    async def until(self, count: int) -> None:
        self.wanted = count
        if len(self.at) < count:
            self.reached = trio.Event()
            with trio.fail_after(TIME_LIMIT):
                await self.reached.wait()


def summary(latencies: list[float], burst: int, seconds: float, cpu: float) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 3),
        "burst_events_per_s": round(burst / seconds),
        "cpu_us_per_event": round(cpu / burst * 1e6, 1),
    }


async def run_mechanism(
    send: Any, arrivals: Arrivals, latency_events: list[tuple[str, str]],
    burst_events: list[tuple[str, str]],
) -> dict[str, Any]:  # fmt: skip
    latencies = []
    for count, (event_id, raw) in enumerate(latency_events, start=1):
        started = time.perf_counter()
        await send(raw)
        await arrivals.until(count)
        latencies.append(arrivals.at[event_id] - started)
    done = len(arrivals.at)
    cpu0, started = time.process_time(), time.perf_counter()
    for _, raw in burst_events:
        await send(raw)
    await arrivals.until(done + len(burst_events))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu0
    return summary(latencies, len(burst_events), seconds, cpu)


async def worker_bus(
    latency: list[tuple[str, str]], burst: list[tuple[str, str]]
) -> dict[str, Any]:
    arrivals = Arrivals()

    def deliver(_community: int, event: Event, _raw: str) -> None:
        arrivals.arrive(event.id)

    with tempfile.TemporaryDirectory(prefix="relay-bus-") as tmp:
        path = str(Path(tmp) / "bus.sock")
        hub = Hub(path, RateLimits(), carry_events=True)
        sender = WorkerBus(path, 0, lambda *_: None, lambda: b"", carry_events=True)
        receiver = WorkerBus(path, 1, deliver, lambda: b"", carry_events=True)
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            await nursery.start(sender.run)
            await nursery.start(receiver.run)
            with trio.fail_after(10):
                while len(hub.peers) < 2:
                    await trio.sleep(0.01)

            async def send(raw: str) -> None:
                sender.send(1, raw)
                await trio.sleep(0)

            result = await run_mechanism(send, arrivals, latency, burst)
            nursery.cancel_scope.cancel()
    return result


async def listen_notify(
    url: str, latency: list[tuple[str, str]], burst: list[tuple[str, str]]
) -> dict[str, Any]:
    arrivals = Arrivals()

    def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        arrivals.arrive(parse_event(orjson.loads(payload)).id)

    async with trio_asyncio.open_loop():
        listener = await aio_as_trio(asyncpg.connect)(url)
        notifier = await aio_as_trio(asyncpg.connect)(url)
        try:
            await aio_as_trio(listener.add_listener)(CHANNEL, on_notify)

            async def send(raw: str) -> None:
                await aio_as_trio(notifier.execute)("SELECT pg_notify($1, $2)", CHANNEL, raw)

            return await run_mechanism(send, arrivals, latency, burst)
        finally:
            await aio_as_trio(listener.close)()
            await aio_as_trio(notifier.close)()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=bounded(10, 100_000), default=2000)
    parser.add_argument("--burst", type=bounded(10, 1_000_000), default=20_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    events = events_of(args.events + 2 * args.burst)
    latency, burst_bus, burst_pg = (
        events[: args.events],
        events[args.events : args.events + args.burst],
        events[args.events + args.burst :],
    )
    results = {"worker bus (unix socket)": trio.run(worker_bus, latency, burst_bus)}
    with fresh_database("relay_bench_bus") as url:
        results["LISTEN/NOTIFY"] = trio.run(listen_notify, url, latency, burst_pg)
    if args.json:
        print(
            orjson.dumps({"events": args.events, "burst": args.burst, "results": results}).decode()
        )
        return 0
    print(f"{'mechanism':28} {'p50 ms':>8} {'p99 ms':>8} {'burst ev/s':>11} {'CPU us/ev':>10}")
    for name, r in results.items():
        print(f"{name:28} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['burst_events_per_s']:11,} "
              f"{r['cpu_us_per_event']:10.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
