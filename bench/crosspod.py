"""Cross-pod delivery latency: publish on relay A, receive on relay B, through Redis.

    python -m bench.crosspod [--events 500] [--redis redis://127.0.0.1:6379/0] [--json]

Starts two relays (`relay serve` subprocesses on free loopback ports) sharing one fresh
PostgreSQL database, one Redis (a fresh key prefix) and one relay key. A subscriber on B
holds `{"kinds":[1]}`; a publisher on A sends --events fresh events one at a time, and
each is timed from its send on A to its arrival on B. Reports p50/p99/max in ms.
Loopback only, bounded by count and time; both relays stopped and the database dropped.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import trio
import trio_websocket
from coincurve import PrivateKey

from bench import nostr_load as nl
from bench.common import fresh_database
from bench.compare import our_relay

RECEIVE_TIMEOUT = 10.0


async def subscribe_all(sub: trio_websocket.WebSocketConnection) -> None:
    """Hold `{"kinds":[1]}` on `sub`, from its EOSE on."""
    await sub.send_message(orjson.dumps(["REQ", "x", {"kinds": [1], "limit": 0}]).decode())
    with trio.fail_after(RECEIVE_TIMEOUT):
        while orjson.loads(await sub.get_message())[0] != "EOSE":
            pass


async def timed_deliveries(
    pub: trio_websocket.WebSocketConnection,
    sub: trio_websocket.WebSocketConnection,
    prepared: Sequence[nl.PreparedEvent],
) -> list[float]:
    """Publish each event on `pub` in turn (one in flight); ms from its send to its arrival
    on `sub` (which holds subscribe_all's subscription), in order."""
    latencies: list[float] = []
    for item in prepared:
        started = time.perf_counter()
        await pub.send_message(item.message)
        with trio.fail_after(RECEIVE_TIMEOUT):
            while True:
                frame = orjson.loads(await sub.get_message())
                if frame[0] == "EVENT" and frame[2]["id"] == item.id:
                    break
        latencies.append((time.perf_counter() - started) * 1000)
        with trio.fail_after(RECEIVE_TIMEOUT):
            while orjson.loads(await pub.get_message())[0] != "OK":
                pass
    return latencies


def summary(latencies: list[float]) -> dict[str, Any]:
    """Count, p50, p99 and max of latencies in ms."""
    ordered = sorted(latencies)
    return {
        "events": len(ordered),
        "p50_ms": nl.percentile(ordered, 50),
        "p99_ms": nl.percentile(ordered, 99),
        "max_ms": ordered[-1] if ordered else None,
    }


async def measure(url_a: str, url_b: str, events: int) -> dict[str, Any]:
    target_a, target_b = nl.resolve_target(url_a), nl.resolve_target(url_b)
    prepared = nl.build_ingest_events(events, 4)
    async with trio.open_nursery() as nursery:
        pub = await nl.open_connection(nursery, target_a)
        sub = await nl.open_connection(nursery, target_b)
        await subscribe_all(sub)
        latencies = await timed_deliveries(pub, sub, prepared)
        await nl.close_quietly(pub)
        await nl.close_quietly(sub)
        nursery.cancel_scope.cancel()
    return summary(latencies)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.crosspod", description=__doc__)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not 1 <= args.events <= 100_000:
        parser.error("--events must be between 1 and 100000")
    env = {
        "RELAY_REDIS_URL": args.redis,
        "RELAY_REDIS_PREFIX": f"bench-{secrets.token_hex(4)}",
        "RELAY_SECRET_KEY": PrivateKey().secret.hex(),
    }
    with tempfile.TemporaryDirectory() as tmp, fresh_database("relay_bench_pods") as database_url:
        work_a, work_b = Path(tmp) / "a", Path(tmp) / "b"
        work_a.mkdir()
        work_b.mkdir()
        with our_relay(database_url, work_a, env) as url_a, our_relay(
            database_url, work_b, env
        ) as url_b:
            time.sleep(1.5)  # both subscribers to Redis are up
            report = trio.run(measure, url_a, url_b, args.events)
    if args.json:
        print(orjson.dumps(report).decode())
    else:
        print(
            f"cross-pod delivery of {report['events']} events (publish on A, receive on B): "
            f"p50 {report['p50_ms']:.2f} ms, p99 {report['p99_ms']:.2f} ms, "
            f"max {report['max_ms']:.2f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
