"""A stalled backend (it keeps the connection and answers nothing) is not a dead one.

Redis is stalled for real (SIGSTOP on a private redis-server); PostgreSQL through
tests/stall_proxy.py, since the shared server cannot be stopped for one test. The bounds
below are liveness checks with a wide margin (the faults they catch cost a second a
message, or hang for ever), not timings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import trio

from tests.helpers import connect, http_get, make_event
from tests.redis_server import RedisServer
from tests.services import free_port, start_relay
from tests.stall_proxy import stall_proxy

EVENTS = 20
# A stalled Redis used to add its 1 s socket timeout to every one of them.
EVENTS_DEADLINE = 10.0
# /readyz answers within its own deadline (1.5 s) whatever stalls.
READYZ_DEADLINE = 5.0


async def readyz(port: int) -> tuple[int, dict[str, Any]]:
    with trio.fail_after(READYZ_DEADLINE):
        status, _, body = await http_get(port, "/readyz")
    return status, orjson.loads(body)


async def test_a_stalled_redis_costs_no_message_a_timeout_and_readyz_says_so(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, redis: RedisServer
) -> None:
    relay = await start_relay(
        nursery, db_url, tmp_path, redis_url=redis.url, redis_prefix=f"stall-{free_port()}",
        rate_limits=True, rate_limit_loopback=True, secret_key=os.urandom(32).hex(),
    )  # fmt: skip
    with trio.fail_after(20):
        while (await readyz(relay.port))[1]["checks"].get("redis") != "ok":
            await trio.sleep(0.2)
    redis.pause()
    try:
        with trio.fail_after(EVENTS_DEADLINE):
            async with connect(relay.port) as client:
                for _ in range(EVENTS):
                    note = make_event()
                    assert await client.publish(note) == ["OK", note.id, True, ""]
                assert await client.req("after", {"kinds": [1], "limit": 1}) != []
        status, doc = await readyz(relay.port)
        assert status == 200  # Redis degrades the relay; it does not take it out of service
        assert doc["checks"]["redis"] == "degraded"
    finally:
        redis.resume()


async def test_readyz_answers_503_in_time_while_postgres_stalls(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    parts = urlsplit(db_url)
    async with stall_proxy(parts.port or 5432) as proxy:
        through = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
        relay = await start_relay(nursery, through, tmp_path)
        assert (await readyz(relay.port))[0] == 200
        proxy.stall()
        status, doc = await readyz(relay.port)
        assert status == 503
        assert doc["checks"]["postgres"] == "stalled"
        assert doc["checks"]["object_store"] == "ok"
        proxy.resume()
        with trio.fail_after(20):
            while (await readyz(relay.port))[0] != 200:
                await trio.sleep(0.2)
