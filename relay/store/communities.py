"""Communities: the host names the relay serves, each with its own isolated data.

A community is its own host (`communities.host`) and any number of aliases
(`community_aliases`): every name reaches the same community. A name belongs to one
community at most; aliases never merge two communities that already hold data.
"""

from __future__ import annotations

import logging

import trio

from relay.protocol.hosts import host_group
from relay.store.db import Connection, Database

log = logging.getLogger(__name__)

# An unknown host is asked of the database again at most this often.
UNKNOWN_HOST_RECHECK_SECONDS = 10.0

_ALL_NAMES = (
    "SELECT host, id FROM communities"
    " UNION ALL SELECT host, community_id FROM community_aliases"
)


async def _known(conn: Connection) -> dict[str, int]:
    return {row["host"]: row["id"] for row in await conn.fetch(_ALL_NAMES)}


async def _ensure(conn: Connection, groups: list[tuple[str, ...]]) -> dict[str, int]:
    """Create each group's community (its first name) and aliases; a name that already
    belongs elsewhere is left where it is, with a warning."""
    async with conn.transaction():
        for group in groups:
            known = await _known(conn)
            primary, aliases = group[0], group[1:]
            community_id = known.get(primary)
            if community_id is None:  # (pods starting together: one inserts, all read it)
                await conn.execute(
                    "INSERT INTO communities (host) VALUES ($1) ON CONFLICT (host) DO NOTHING",
                    primary,
                )
                community_id = await conn.fetchval(
                    "SELECT id FROM communities WHERE host = $1", primary
                )
            for alias in aliases:
                elsewhere = known.get(alias)
                if elsewhere is None:
                    await conn.execute(
                        "INSERT INTO community_aliases (host, community_id) VALUES ($1, $2)"
                        " ON CONFLICT (host) DO NOTHING",
                        alias, community_id,
                    )  # fmt: skip
                elif elsewhere != community_id:
                    log.warning(
                        "%s is already a community of its own in this database; it stays one "
                        "(an alias never merges two communities' data)",
                        alias,
                    )
        return await _known(conn)


async def _add_alias(conn: Connection, alias: str, of: str) -> str | None:
    """Make `alias` a name of the community of `of`; why not, or None."""
    async with conn.transaction():
        known = await _known(conn)
        if of not in known:
            return f"{of} is not a community of this relay"
        if alias in known:
            return f"{alias} already names a community"
        await conn.execute(
            "INSERT INTO community_aliases (host, community_id) VALUES ($1, $2)",
            alias, known[of],
        )  # fmt: skip
        return None


async def _lookup(conn: Connection, host: str) -> int | None:
    value = await conn.fetchval(f"SELECT id FROM ({_ALL_NAMES}) AS names WHERE host = $1", host)
    return None if value is None else int(value)


class Communities:
    """Host name to community id, cached; communities added elsewhere are found on a miss."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._known: dict[str, int] = {}
        self._names: dict[int, frozenset[str]] = {}
        self._unknown_until: dict[str, float] = {}

    async def ensure(self, specs: list[str]) -> None:
        """Create the communities of these RELAY_HOSTS entries (`name` or `name|alias|...`)
        if missing, with their aliases, and learn every name."""
        self._learn(await self._db.run(_ensure, [host_group(spec) for spec in specs]))

    async def load(self) -> None:
        """Learn every name (what `ensure` does, without creating any)."""
        self._learn(await self._db.run(_known))

    async def add_alias(self, alias: str, of: str) -> str | None:
        """Make `alias` reach the community of `of`; the refusal, or None."""
        refusal = await self._db.run(_add_alias, alias, of)
        if refusal is None:
            self._learn(await self._db.run(_known))
        return refusal

    async def hosts(self) -> list[str]:
        """Every name the relay serves, communities' own and aliases."""
        return sorted(self._known)

    async def names(self) -> dict[int, list[str]]:
        """Each community's names, sorted."""
        own: dict[int, list[str]] = {}
        for host, community_id in sorted(self._known.items()):
            own.setdefault(community_id, []).append(host)
        return own

    async def hosts_of(self, community_id: int) -> frozenset[str]:
        """The host names of a community (the ones its clients may write in URLs); one
        shared object per community until its names change."""
        names = self._names.get(community_id)
        if names is None:
            names = frozenset(h for h, cid in self._known.items() if cid == community_id)
            if not names:
                self._learn(await self._db.run(_known))
                names = frozenset(h for h, cid in self._known.items() if cid == community_id)
            self._names[community_id] = names
        return names

    def _learn(self, known: dict[str, int]) -> None:
        self._known = known
        self._names = {}

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
            self._names.pop(found, None)
        return found
