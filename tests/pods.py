"""Several relay processes acting as one relay: their RELAY_* environments as an operator
sets them, and the waits for the Redis bridge between them."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import coincurve
import trio

from relay.keys import pubkey_hex
from tests.helpers import NostrClient, connect, make_event, new_key

BRIDGE_TIMEOUT = 30.0


def unique_prefix() -> str:
    return f"pods-{uuid.uuid4().hex[:12]}"


def new_secret() -> str:
    return coincurve.PrivateKey().secret.hex()


def pod_env(
    db_url: str,
    data_dir: Path,
    *,
    secret: str | None = None,
    s3: dict[str, Any] | None = None,
    redis_url: str | None = None,
    prefix: str | None = None,
    **extra: str,
) -> dict[str, str]:
    """RELAY_* settings of a relay subprocess, as an operator would set them."""
    env = {
        "RELAY_DATABASE_URL": db_url,
        "RELAY_DATA_DIR": str(data_dir),
        "RELAY_HOSTS": "localhost,127.0.0.1",
        "RELAY_GIT_PROBE_WRITERS": "4",
        "RELAY_GIT_PROBE_ROUNDS": "1",
        "RELAY_DB_POOL_SIZE": "6",
        "RELAY_LOG_LEVEL": "info",
        "RELAY_RATE_LIMITS": "off",
    }
    if secret:
        env["RELAY_SECRET_KEY"] = secret
    if s3:
        env.update(
            RELAY_S3_ENDPOINT=s3["s3_endpoint"],
            RELAY_S3_BUCKET=s3["s3_bucket"],
            RELAY_S3_ACCESS_KEY=s3["s3_access_key"],
            RELAY_S3_SECRET_KEY=s3["s3_secret_key"],
        )
    if redis_url:
        env["RELAY_REDIS_URL"] = redis_url
    if prefix:
        env["RELAY_REDIS_PREFIX"] = prefix
    env.update(extra)
    return env


async def until_bridged(src: int, dst: int, timeout: float = BRIDGE_TIMEOUT) -> int:
    """Publish fresh probe events on `src` until one reaches a subscriber on `dst`; the
    number of probes it took. Fails after `timeout` seconds."""
    key = new_key()
    async with connect(dst) as watcher, connect(src) as publisher:
        await watcher.req("probe", {"authors": [pubkey_hex(key)]}, live=True)
        with trio.fail_after(timeout):
            probes = 0
            while True:
                probes += 1
                answer = await publisher.publish(make_event(key, content=f"probe {probes}"))
                assert answer[0] == "OK" and answer[2] is True, answer
                with trio.move_on_after(0.5):
                    frame = await watcher.recv(timeout=timeout)
                    assert frame[0] == "EVENT" and frame[1] == "probe", frame
                    return probes


async def expect_event(client: NostrClient, sub_id: str, event_id: str) -> dict[str, Any]:
    frame = await client.recv(timeout=10)
    assert frame[0] == "EVENT" and frame[1] == sub_id, frame
    assert frame[2]["id"] == event_id, frame
    return dict(frame[2])
