"""The one crossing from trio into asyncio for Postgres work.

Each `Database.run` call is one trio-to-asyncio crossing holding one pooled connection for
the whole batch of work, so callers group their queries into one function.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import asyncpg
import trio_asyncio

from relay.errors import OperatorError

T = TypeVar("T")
P = ParamSpec("P")

Connection = asyncpg.Connection
# What the driver raises for a failed round trip. Only work running on a connection (the
# asyncio side of `Database.run`) sees these; everything above the boundary sees
# DatabaseError, as `Database.run` maps them.
DRIVER_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # asyncpg's own "another operation is in progress" on a pooled connection whose session
    # the server terminated mid-operation: a failed round trip like any other, not a crash
    # of the websocket connection that happened to be waiting on it.
    asyncpg.exceptions.InternalClientError,
)
UNDEFINED_TABLE = "42P01"


class RelayConnection(asyncpg.Connection):  # type: ignore[misc,unused-ignore]
    """A pooled connection released without the reset round trip.

    The relay keeps no session state (no SET, LISTEN, cursors or session advisory locks
    left held), and asyncpg still rolls back an open transaction on release, so the
    default reset query (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL) only costs a
    round trip per crossing.
    """

    def get_reset_query(self) -> str:
        return ""


class DatabaseError(OperatorError, RuntimeError):
    """Postgres could not be reached, or refused or failed a round trip.

    `sqlstate` is Postgres's error code when the server answered with one (23503 for a
    foreign key, 42P01 for a missing table), None when the round trip itself failed. The
    caller answers `error:` (a client) or stops with the message (a command)."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate

    @classmethod
    def of(cls, exc: BaseException) -> DatabaseError:
        """The boundary's error for a driver error."""
        sqlstate = getattr(exc, "sqlstate", None)
        return cls(str(exc) or type(exc).__name__, sqlstate if isinstance(sqlstate, str) else None)


class Database:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        # Called with the work's name and its seconds (the metrics' DB latency histogram).
        self.observe: Callable[[str, float], None] | None = None

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int = 1, max_size: int = 10) -> Database:
        try:
            pool = await trio_asyncio.aio_as_trio(asyncpg.create_pool)(
                dsn,
                min_size=min_size,
                max_size=max_size,
                command_timeout=60,
                connection_class=RelayConnection,
            )
        except DRIVER_ERRORS as exc:
            raise DatabaseError(f"cannot connect to the database: {exc}") from exc
        assert pool is not None
        return cls(pool)

    async def run(
        self,
        work: Callable[Concatenate[Connection, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run `work(connection, ...)` on the asyncio side with one pooled connection.

        A driver error that escapes `work` comes out as DatabaseError."""

        async def on_asyncio() -> T:
            async with self._pool.acquire() as conn:
                return await work(cast(Connection, conn), *args, **kwargs)

        started = time.perf_counter()
        try:
            result: T = await trio_asyncio.aio_as_trio(on_asyncio)()
        except DRIVER_ERRORS as exc:
            raise DatabaseError.of(exc) from exc
        finally:
            if self.observe is not None:
                name = getattr(work, "__name__", "query").lstrip("_")
                self.observe(name, time.perf_counter() - started)
        return result

    async def ping(self) -> bool:
        async def select_one(conn: Connection) -> Any:
            return await conn.fetchval("SELECT 1")

        try:
            return bool(await self.run(select_one) == 1)
        except DatabaseError:
            return False

    async def close(self) -> None:
        try:
            await trio_asyncio.aio_as_trio(self._pool.close)()
        except DRIVER_ERRORS as exc:
            raise DatabaseError.of(exc) from exc
