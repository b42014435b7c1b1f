"""Communities: the host names the relay serves, each with its own isolated data."""

from __future__ import annotations

import trio

from relay.store.db import Connection, Database

# An unknown host is asked of the database again at most this often.
UNKNOWN_HOST_RECHECK_SECONDS = 10.0


async def _ensure(conn: Connection, hosts: list[str]) -> dict[str, int]:
    await conn.executemany(
        "INSERT INTO communities (host) VALUES ($1) ON CONFLICT (host) DO NOTHING",
        [(h,) for h in hosts],
    )
    rows = await conn.fetch("SELECT host, id FROM communities")
    return {row["host"]: row["id"] for row in rows}


async def _hosts_of(conn: Connection, community_id: int) -> list[str]:
    rows = await conn.fetch("SELECT host FROM communities WHERE id = $1", community_id)
    return [row["host"] for row in rows]


async def _lookup(conn: Connection, host: str) -> int | None:
    value = await conn.fetchval("SELECT id FROM communities WHERE host = $1", host)
    return None if value is None else int(value)


class Communities:
    """Host name to community id, cached; communities added elsewhere are found on a miss."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._known: dict[str, int] = {}
        self._unknown_until: dict[str, float] = {}

    async def ensure(self, hosts: list[str]) -> None:
        """Create the communities of these hosts if missing, and learn every one."""
        self._known = await self._db.run(_ensure, hosts)

    async def hosts(self) -> list[str]:
        return sorted(self._known)

    async def hosts_of(self, community_id: int) -> frozenset[str]:
        """The host names of a community (the ones its clients may write in URLs)."""
        known = frozenset(h for h, cid in self._known.items() if cid == community_id)
        return known or frozenset(await self._db.run(_hosts_of, community_id))

    async def resolve(self, host: str) -> int | None:
        found = self._known.get(host)
        if found is not None:
            return found
        now = trio.current_time()
        if self._unknown_until.get(host, 0.0) > now:
            return None
        found = await self._db.run(_lookup, host)
        if found is None:
            if len(self._unknown_until) > 10_000:
                self._unknown_until.clear()
            self._unknown_until[host] = now + UNKNOWN_HOST_RECHECK_SECONDS
        else:
            self._known[host] = found
        return found
