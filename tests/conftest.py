"""Shared fixtures: a fresh PostgreSQL database per test, and a relay served in-process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import trio

from relay.app import Relay, serve
from relay.config import Settings, load_settings
from relay.git.fsstore import FilesystemStore
from relay.git.objectstore import ObjectStore
from relay.git.s3store import S3Config, S3Store
from tests.helpers import RelayUnderTest
from tests.redis_server import RedisServer

# moto accepts any credentials; requests are signed as they would be for a real S3.
MOTO_KEY = "testing"
ADMIN_URL = os.environ.get("RELAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin(sql: str) -> None:
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


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3 protocol server (moto) on a free loopback port, for the whole run.

    It serves one request at a time (see tests/moto_serial.py): threaded moto does not make
    conditional writes atomic, and the conformance probe refuses it.
    """
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.moto_serial", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


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


@pytest.fixture
async def s3_store(moto_endpoint: str) -> AsyncIterator[S3Store]:
    store = await new_s3_store(moto_endpoint)
    yield store
    await store.aclose()


@pytest.fixture(params=["s3", "filesystem"])
async def object_store(
    request: pytest.FixtureRequest, tmp_path: Path, moto_endpoint: str
) -> AsyncIterator[ObjectStore]:
    """Each behavioural test runs against both stores."""
    store: ObjectStore
    if request.param == "filesystem":
        store = FilesystemStore(tmp_path / "objects")
    else:
        store = await new_s3_store(moto_endpoint)
    yield store
    await store.aclose()


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """A database with every migration applied, cloned by each test."""
    name = f"relay_tpl_{uuid.uuid4().hex[:12]}"
    _admin(f"CREATE DATABASE {name}")

    async def migrate_template() -> None:
        from relay.app import open_database
        from relay.store.migrations import migrate

        settings = load_settings({}, database_url=database_url(name), data_dir="/tmp")
        async with open_database(settings) as db:
            await migrate(db)

    trio.run(migrate_template)
    yield name
    _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def empty_database_url() -> Iterator[str]:
    """A fresh database with no tables at all."""
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    _admin(f"CREATE DATABASE {name}")
    yield database_url(name)
    _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def db_url(template_database: str) -> Iterator[str]:
    """A fresh, fully migrated database for one test."""
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    _admin(f"CREATE DATABASE {name} TEMPLATE {template_database}")
    yield database_url(name)
    _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


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


@pytest.fixture
async def relay(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> AsyncIterator[RelayUnderTest]:
    yield await start_relay(nursery, db_url, tmp_path)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server for one test (tests/redis_server.py), on a free port."""
    server = RedisServer(tmp_path / "redis", free_port())
    server.start()
    try:
        yield server
    finally:
        if server.running:
            server.resume()  # a test may have paused it
        server.stop()
