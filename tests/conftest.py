"""Shared fixtures: a fresh PostgreSQL database per test, and a relay served in-process."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import trio

from relay.app import serve
from relay.config import Settings, load_settings
from tests.helpers import RelayUnderTest

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
    }
    values.update(overrides)
    return load_settings({}, **values)


async def start_relay(
    nursery: trio.Nursery, db_url: str, data_dir: Path, **overrides: Any
) -> RelayUnderTest:
    settings = relay_settings(db_url, data_dir, **overrides)
    port = await nursery.start(serve, settings)
    return RelayUnderTest(port=port, settings=settings, db_url=db_url)


@pytest.fixture
async def relay(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> AsyncIterator[RelayUnderTest]:
    yield await start_relay(nursery, db_url, tmp_path)
