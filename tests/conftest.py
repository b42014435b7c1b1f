"""Shared fixtures: a fresh PostgreSQL database per test, and a relay served in-process.

The plain functions they use live in tests/services.py and tests/helpers.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from relay.config import load_settings
from relay.git.fsstore import FilesystemStore
from relay.git.objectstore import ObjectStore
from relay.git.s3store import S3Store
from tests.helpers import RelayUnderTest
from tests.redis_server import RedisServer
from tests.services import (
    admin_sql,
    database_url,
    free_port,
    new_s3_store,
    start_moto,
    start_relay,
)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3 protocol server (moto, one request at a time) on a free loopback port, for
    the whole run."""
    port = free_port()
    proc = start_moto(port)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


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
    admin_sql(f"CREATE DATABASE {name}")

    async def migrate_template() -> None:
        from relay.app import open_database
        from relay.store.migrations import migrate

        settings = load_settings({}, database_url=database_url(name), data_dir="/tmp")
        async with open_database(settings) as db:
            await migrate(db)

    trio.run(migrate_template)
    yield name
    admin_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def empty_database_url() -> Iterator[str]:
    """A fresh database with no tables at all."""
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    admin_sql(f"CREATE DATABASE {name}")
    yield database_url(name)
    admin_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def db_url(template_database: str) -> Iterator[str]:
    """A fresh, fully migrated database for one test."""
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    admin_sql(f"CREATE DATABASE {name} TEMPLATE {template_database}")
    yield database_url(name)
    admin_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


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
