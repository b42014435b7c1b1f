"""Invariant 8: append-only migrations, checksums verified, pods serialize on a lock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from relay.app import open_database
from relay.store.db import DatabaseError
from relay.store.migrations import (
    Migration,
    MigrationError,
    applied_versions,
    load_migrations,
    migrate,
)
from tests.services import relay_settings


async def test_fresh_database_gets_every_migration(empty_database_url: str, tmp_path: Path) -> None:
    settings = relay_settings(empty_database_url, tmp_path)
    files = load_migrations()
    async with open_database(settings) as db:
        assert await migrate(db) == [m.version for m in files]
        assert await migrate(db) == []
        assert await applied_versions(db) == [m.version for m in files]


async def test_edited_applied_migration_stops_startup(
    empty_database_url: str, tmp_path: Path
) -> None:
    settings = relay_settings(empty_database_url, tmp_path)
    files = load_migrations()
    async with open_database(settings) as db:
        await migrate(db)
        edited = [Migration(files[0].version, files[0].name, files[0].sql + "\n-- edited\n")]
        with pytest.raises(MigrationError, match=files[0].name):
            await migrate(db, edited + files[1:])


async def test_unknown_applied_migration_is_refused(
    empty_database_url: str, tmp_path: Path
) -> None:
    settings = relay_settings(empty_database_url, tmp_path)
    files = load_migrations()
    extra = Migration(9999, "9999_future.sql", "CREATE TABLE communities_future (x int)")
    async with open_database(settings) as db:
        await migrate(db, [*files, extra])
        with pytest.raises(MigrationError, match="9999"):
            await migrate(db, files)


async def test_concurrent_starts_apply_each_migration_once(
    empty_database_url: str, tmp_path: Path
) -> None:
    settings = relay_settings(empty_database_url, tmp_path)
    results: list[list[int]] = []

    async def one_pod() -> None:
        async with open_database(settings) as db:
            results.append(await migrate(db))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(one_pod)
    applied = [r for r in results if r]
    assert len(applied) == 1
    assert applied[0] == [m.version for m in load_migrations()]


CONCURRENT_INDEX = """-- relay: no-transaction
-- Builds without blocking writes to events; safe to run again after a failure.
DROP INDEX CONCURRENTLY IF EXISTS events_by_pubkey_test;
CREATE INDEX CONCURRENTLY events_by_pubkey_test
    ON events (community_id, pubkey);
"""


async def test_a_no_transaction_migration_runs_statement_by_statement(
    empty_database_url: str, tmp_path: Path
) -> None:
    """CREATE INDEX CONCURRENTLY cannot run in a transaction: marked, it runs on its own."""
    settings = relay_settings(empty_database_url, tmp_path)
    files = load_migrations()
    concurrent = Migration(9001, "9001_concurrent_index.sql", CONCURRENT_INDEX)
    assert not concurrent.transactional
    assert len(concurrent.statements()) == 2
    unmarked = Migration(9001, "9001_concurrent_index.sql", CONCURRENT_INDEX.split("\n", 1)[1])
    async with open_database(settings) as db:
        await migrate(db, files)
        with pytest.raises(DatabaseError, match="transaction block"):
            await migrate(db, [*files, unmarked])
        assert await migrate(db, [*files, concurrent]) == [9001]
        assert 9001 in await applied_versions(db)

        async def index_valid(conn: Any) -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT indisvalid FROM pg_index"
                    " WHERE indexrelid = 'events_by_pubkey_test'::regclass"
                )
            )

        assert await db.run(index_valid)


def test_every_shipped_migration_is_transactional_or_marked() -> None:
    """0001-0003 were applied in a transaction; whatever comes later is either too, or
    marked and made of statements the runner can split."""
    for migration in load_migrations():
        if not migration.transactional:
            assert migration.statements(), migration.name
