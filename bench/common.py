"""Pieces every benchmark runner shares: a throw-away PostgreSQL database, a free loopback
port, and bounded command-line numbers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Callable, Iterator

import asyncpg

ADMIN_URL = os.environ.get("RELAY_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


class SetupError(Exception):
    """The benchmark could not be set up (exit status 2)."""


def admin(sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(ADMIN_URL, timeout=10)
        try:
            await conn.execute(sql, timeout=60)
        finally:
            await conn.close()

    asyncio.run(run())


@contextlib.contextmanager
def fresh_database(prefix: str, error: type[Exception] = SetupError) -> Iterator[str]:
    """A new, empty database named `<prefix>_<random>`, dropped on the way out."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    try:
        admin(f"CREATE DATABASE {name}")
    except (OSError, asyncpg.PostgresError) as exc:
        raise error(f"cannot create a database on {ADMIN_URL}: {exc}") from exc
    try:
        base, _, _ = ADMIN_URL.rpartition("/")
        yield f"{base}/{name}"
    finally:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bounded(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value
