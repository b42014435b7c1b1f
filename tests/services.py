"""Starting what the tests talk to: PostgreSQL databases, the moto S3 server and its buckets,
and relays served in-process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import trio

from relay.app import Relay, serve
from relay.config import Settings, load_settings
from relay.git.s3store import S3Config, S3Store
from tests.helpers import RelayUnderTest

# moto accepts any credentials; requests are signed as they would be for a real S3.
MOTO_KEY = "testing"
ADMIN_URL = os.environ.get("RELAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def admin_sql(sql: str) -> None:
    """Run one statement as the admin user (CREATE/DROP DATABASE), on its own asyncio loop."""

    async def run() -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def database_url(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto(port: int) -> subprocess.Popen[bytes]:
    """A real S3 protocol server (moto) on 127.0.0.1:`port`, answering once this returns.

    It serves one request at a time (see tests/moto_serial.py): threaded moto does not make
    conditional writes atomic, and the conformance probe refuses it.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.moto_serial", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.1)


def s3_settings(moto_endpoint: str) -> dict[str, Any]:
    """Settings overrides for a relay whose git objects live in a fresh moto bucket."""
    return {
        "s3_endpoint": moto_endpoint,
        "s3_bucket": f"test-{uuid.uuid4().hex[:16]}",
        "s3_access_key": MOTO_KEY,
        "s3_secret_key": MOTO_KEY,
    }


async def new_s3_store(moto_endpoint: str, bucket: str | None = None) -> S3Store:
    """An S3 store on a bucket of its own (created here) in the moto server."""
    store = S3Store(
        S3Config(
            endpoint=moto_endpoint,
            bucket=bucket or f"test-{uuid.uuid4().hex[:16]}",
            access_key=MOTO_KEY,
            secret_key=MOTO_KEY,
            timeout_seconds=10,
        )
    )
    await store.create_bucket()
    return store


@asynccontextmanager
async def moto_bucket(moto_endpoint: str) -> AsyncIterator[tuple[dict[str, Any], S3Store]]:
    """Relay overrides for a fresh moto bucket, and a store on that same bucket."""
    overrides = s3_settings(moto_endpoint)
    store = await new_s3_store(moto_endpoint, overrides["s3_bucket"])
    try:
        yield overrides, store
    finally:
        await store.aclose()


def relay_settings(db_url: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "data_dir": str(data_dir),
        "port": 0,
        "hosts": ("localhost", "127.0.0.1", "alpha.test", "beta.test"),
        "db_pool_size": 4,
        "git_probe_writers": 4,
        "git_probe_rounds": 1,
        # Tests open many connections from one address; the rate limit tests turn them on.
        "rate_limits": False,
        # The pack cache would outlive a test's object store; its own tests turn it on.
        "git_pack_cache_bytes": 0,
    }
    values.update(overrides)
    return load_settings({}, **values)


async def start_relay(
    nursery: trio.Nursery, db_url: str, data_dir: Path, **overrides: Any
) -> RelayUnderTest:
    settings = relay_settings(db_url, data_dir, **overrides)
    running: list[Relay] = []
    port = await nursery.start(partial(serve, settings, on_ready=running.append))
    return RelayUnderTest(port=port, settings=settings, db_url=db_url, app=running[0])
