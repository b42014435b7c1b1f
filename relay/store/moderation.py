"""NIP-86 moderation state in Postgres, per community (sql/0007_moderation.sql).

Every change is written here first; each pod's in-memory copy (relay/server/management.py)
is then reloaded whole from `load`. Pubkeys and event ids are lowercase hex text, client
addresses their normalized text form.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.store.db import Connection, Database

BANNED = "banned"
ALLOWED = "allowed"


@dataclass(frozen=True)
class ModerationRows:
    """Every community's moderation rows, as `load` read them."""

    pubkeys: tuple[tuple[int, str, str, str], ...] = ()  # community, list, pubkey, reason
    events: tuple[tuple[int, str, str], ...] = ()  # community, event id, reason
    ips: tuple[tuple[int, str, str], ...] = ()  # community, address, reason
    info: tuple[tuple[int, str, str], ...] = ()  # community, field, value
    access: tuple[tuple[int, str], ...] = ()  # community, mode (sql/0008_membership.sql)
    members: tuple[tuple[int, str], ...] = ()  # community, pubkey


async def _load(conn: Connection) -> ModerationRows:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        pubkeys = await conn.fetch(
            "SELECT community_id, list, pubkey, reason FROM moderation_pubkeys"
        )
        events = await conn.fetch("SELECT community_id, event_id, reason FROM moderation_events")
        ips = await conn.fetch("SELECT community_id, ip, reason FROM moderation_ips")
        info = await conn.fetch("SELECT community_id, field, value FROM community_info")
        access = await conn.fetch("SELECT community_id, access FROM community_access")
        members = await conn.fetch("SELECT community_id, pubkey FROM community_members")
    return ModerationRows(
        pubkeys=tuple((r[0], r[1], r[2], r[3]) for r in pubkeys),
        events=tuple((r[0], r[1], r[2]) for r in events),
        ips=tuple((r[0], r[1], r[2]) for r in ips),
        info=tuple((r[0], r[1], r[2]) for r in info),
        access=tuple((r[0], r[1]) for r in access),
        members=tuple((r[0], r[1]) for r in members),
    )


async def _set_pubkey(
    conn: Connection, community_id: int, list_name: str, pubkey: str, reason: str, purge: bool
) -> int:
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO moderation_pubkeys (community_id, list, pubkey, reason)"
            " VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (community_id, list, pubkey) DO UPDATE SET reason = EXCLUDED.reason",
            community_id, list_name, pubkey, reason,
        )  # fmt: skip
        if not purge:
            return 0
        status = await conn.execute(
            "DELETE FROM events WHERE community_id = $1 AND pubkey = $2",
            community_id, bytes.fromhex(pubkey),
        )  # fmt: skip
        return int(status.split()[-1])


async def _purge_banned(conn: Connection, community_id: int, pubkey: str) -> int:
    status = await conn.execute(
        "DELETE FROM events WHERE community_id = $1 AND pubkey = $2 AND EXISTS (SELECT 1"
        " FROM moderation_pubkeys WHERE community_id = $1 AND list = 'banned' AND pubkey = $3)",
        community_id, bytes.fromhex(pubkey), pubkey,
    )  # fmt: skip
    return int(status.split()[-1])


async def _unset_pubkey(conn: Connection, community_id: int, list_name: str, pubkey: str) -> None:
    await conn.execute(
        "DELETE FROM moderation_pubkeys WHERE community_id = $1 AND list = $2 AND pubkey = $3",
        community_id, list_name, pubkey,
    )  # fmt: skip


async def _ban_event(conn: Connection, community_id: int, event_id: str, reason: str) -> bool:
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO moderation_events (community_id, event_id, reason) VALUES ($1, $2, $3)"
            " ON CONFLICT (community_id, event_id) DO UPDATE SET reason = EXCLUDED.reason",
            community_id, event_id, reason,
        )  # fmt: skip
        status = await conn.execute(
            "DELETE FROM events WHERE community_id = $1 AND id = $2",
            community_id, bytes.fromhex(event_id),
        )  # fmt: skip
        return status != "DELETE 0"


async def _unban_event(conn: Connection, community_id: int, event_id: str) -> None:
    await conn.execute(
        "DELETE FROM moderation_events WHERE community_id = $1 AND event_id = $2",
        community_id, event_id,
    )  # fmt: skip


async def _block_ip(conn: Connection, community_id: int, ip: str, reason: str) -> None:
    await conn.execute(
        "INSERT INTO moderation_ips (community_id, ip, reason) VALUES ($1, $2, $3)"
        " ON CONFLICT (community_id, ip) DO UPDATE SET reason = EXCLUDED.reason",
        community_id, ip, reason,
    )  # fmt: skip


async def _unblock_ip(conn: Connection, community_id: int, ip: str) -> None:
    await conn.execute(
        "DELETE FROM moderation_ips WHERE community_id = $1 AND ip = $2", community_id, ip
    )


async def _set_info(conn: Connection, community_id: int, field: str, value: str) -> None:
    await conn.execute(
        "INSERT INTO community_info (community_id, field, value) VALUES ($1, $2, $3)"
        " ON CONFLICT (community_id, field) DO UPDATE SET value = EXCLUDED.value",
        community_id, field, value,
    )  # fmt: skip


async def _is_admin(conn: Connection, community_id: int, pubkey: str) -> bool:
    found = await conn.fetchval(
        "SELECT 1 FROM community_admins WHERE community_id = $1 AND pubkey = $2",
        community_id, pubkey,
    )  # fmt: skip
    return found is not None


class ModerationStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def load(self) -> ModerationRows:
        return await self._db.run(_load)

    async def set_pubkey(
        self, community_id: int, list_name: str, pubkey: str, reason: str, *, purge: bool = False
    ) -> int:
        """Put `pubkey` on a list; with `purge`, delete its stored events (how many)."""
        return await self._db.run(_set_pubkey, community_id, list_name, pubkey, reason, purge)

    async def purge_banned(self, community_id: int, pubkey: str) -> int:
        """Delete the stored events of `pubkey` if it is still banned; how many."""
        return await self._db.run(_purge_banned, community_id, pubkey)

    async def unset_pubkey(self, community_id: int, list_name: str, pubkey: str) -> None:
        await self._db.run(_unset_pubkey, community_id, list_name, pubkey)

    async def ban_event(self, community_id: int, event_id: str, reason: str) -> bool:
        """Ban the event id and delete the stored event; whether one was stored."""
        return await self._db.run(_ban_event, community_id, event_id, reason)

    async def unban_event(self, community_id: int, event_id: str) -> None:
        await self._db.run(_unban_event, community_id, event_id)

    async def block_ip(self, community_id: int, ip: str, reason: str) -> None:
        await self._db.run(_block_ip, community_id, ip, reason)

    async def unblock_ip(self, community_id: int, ip: str) -> None:
        await self._db.run(_unblock_ip, community_id, ip)

    async def set_info(self, community_id: int, field: str, value: str) -> None:
        await self._db.run(_set_info, community_id, field, value)

    async def is_admin(self, community_id: int, pubkey: str) -> bool:
        return await self._db.run(_is_admin, community_id, pubkey)
