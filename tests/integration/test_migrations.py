"""Invariant 8: append-only migrations, checksums verified, pods serialize on a lock."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from relay.app import open_database
from relay.store.migrations import (
    Migration,
    MigrationError,
    applied_versions,
    load_migrations,
    migrate,
)
from tests.conftest import relay_settings


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
