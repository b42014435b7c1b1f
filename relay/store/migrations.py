"""Numbered, append-only SQL migrations with recorded checksums, under an advisory lock.

Files are `NNNN_name.sql` in the `relay.migrations` package (the `sql/` folder of the tree).
Pods that start together serialize on one Postgres advisory lock; an applied file whose
bytes changed stops start-up with a message naming it.

A migration runs in one transaction, unless its first line is `-- relay: no-transaction`:
then each statement (ended by a `;` at the end of a line) runs on its own, as
`CREATE INDEX CONCURRENTLY` must, which builds an index on a large table without blocking
its writes. Such a migration must be safe to run again from the start (a failure part-way
leaves its earlier statements applied and the migration unrecorded): drop what a failed
run may have left first (`DROP INDEX CONCURRENTLY IF EXISTS ...`). Index changes on
`events` and `event_tags` are written this way from 0004 on (0003 stays as it was applied).

The lock is waited for by trying it again and again, each try a short statement of its own:
a pod blocked inside `pg_advisory_lock` would hold a snapshot all along, and `CREATE INDEX
CONCURRENTLY` in the pod holding the lock waits for every older snapshot to end (a deadlock).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from relay.errors import OperatorError
from relay.store.db import Connection, Database

# An arbitrary constant shared by every pod: "relay migrations".
MIGRATION_LOCK_KEY = 0x72656C61794D4947
LOCK_RETRY_SECONDS = 0.2
_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
NO_TRANSACTION = "-- relay: no-transaction"
_STATEMENT_END = re.compile(r";[ \t]*$", re.MULTILINE)

CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(OperatorError, RuntimeError):
    """The database and the migration files disagree; start-up must stop."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def transactional(self) -> bool:
        return not self.sql.lstrip().startswith(NO_TRANSACTION)

    def statements(self) -> list[str]:
        """The statements of a no-transaction migration, each ended by `;` at a line end."""
        parts = (part.strip() for part in _STATEMENT_END.split(self.sql))
        return [part for part in parts if _without_comments(part)]


def _without_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))


def load_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("relay.migrations").iterdir():
        match = _FILE_NAME.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a number: {versions}")
    return found


async def _apply(conn: Connection, migrations: list[Migration]) -> list[int]:
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY):
        await asyncio.sleep(LOCK_RETRY_SECONDS)
    try:
        await conn.execute(CREATE_LEDGER)
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied = {row["version"]: row for row in rows}
        known = {m.version for m in migrations}
        unknown = sorted(set(applied) - known)
        if unknown:
            raise MigrationError(
                f"the database has migrations {unknown} that this relay does not know; "
                "run a newer relay"
            )
        newly_applied = []
        for migration in migrations:
            row = applied.get(migration.version)
            if row is not None:
                if row["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.name} was edited after it was applied "
                        "(checksum mismatch); migrations are append-only"
                    )
                continue
            if migration.transactional:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await _record(conn, migration)
            else:
                for statement in migration.statements():
                    await conn.execute(statement)
                await _record(conn, migration)
            newly_applied.append(migration.version)
        return newly_applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def _record(conn: Connection, migration: Migration) -> None:
    await conn.execute(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        migration.version,
        migration.name,
        migration.checksum,
    )


async def migrate(db: Database, migrations: list[Migration] | None = None) -> list[int]:
    """Apply what is missing; returns the versions applied now."""
    return await db.run(_apply, load_migrations() if migrations is None else migrations)


async def applied_versions(db: Database) -> list[int]:
    async def fetch(conn: Connection) -> list[int]:
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        return [row["version"] for row in rows]

    return await db.run(fetch)
