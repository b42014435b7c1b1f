"""Members-only communities in Postgres (sql/0008_membership.sql): access modes, members
and invite codes. Every change is written here first; each pod's copy of the modes and
members (with the moderation state, relay/server/management.py) is then reloaded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from relay.store.db import Connection, Database

VIA_ADMIN = "admin"
VIA_INVITE = "invite"


class Claim(Enum):
    JOINED = "joined"
    ALREADY_MEMBER = "already a member"
    INVALID = "invalid"
    EXPIRED = "expired"
    USED_UP = "used up"


@dataclass(frozen=True, slots=True)
class Member:
    pubkey: str
    via: str
    added_at: datetime


@dataclass(frozen=True, slots=True)
class Invite:
    code: str
    uses_left: int | None
    expires_at: int | None
    created_by: str


async def _set_access(conn: Connection, community_id: int, mode: str) -> None:
    await conn.execute(
        "INSERT INTO community_access (community_id, access) VALUES ($1, $2)"
        " ON CONFLICT (community_id) DO UPDATE SET access = EXCLUDED.access",
        community_id, mode,
    )  # fmt: skip


async def _add(conn: Connection, community_id: int, pubkey: str, via: str) -> bool:
    status = await conn.execute(
        "INSERT INTO community_members (community_id, pubkey, via) VALUES ($1, $2, $3)"
        " ON CONFLICT (community_id, pubkey) DO NOTHING",
        community_id, pubkey, via,
    )  # fmt: skip
    return status == "INSERT 0 1"


async def _remove(conn: Connection, community_id: int, pubkey: str) -> bool:
    status = await conn.execute(
        "DELETE FROM community_members WHERE community_id = $1 AND pubkey = $2",
        community_id, pubkey,
    )  # fmt: skip
    return status != "DELETE 0"


async def _members(conn: Connection, community_id: int) -> list[Member]:
    rows = await conn.fetch(
        "SELECT pubkey, via, added_at FROM community_members WHERE community_id = $1"
        " ORDER BY added_at, pubkey",
        community_id,
    )
    return [Member(r["pubkey"], r["via"], r["added_at"]) for r in rows]


async def _create_invite(conn: Connection, community_id: int, invite: Invite) -> None:
    await conn.execute(
        "INSERT INTO community_invites (community_id, code, uses_left, expires_at, created_by)"
        " VALUES ($1, $2, $3, $4, $5)",
        community_id, invite.code, invite.uses_left, invite.expires_at, invite.created_by,
    )  # fmt: skip


async def _open_invites_by(conn: Connection, community_id: int, creator: str, now: int) -> int:
    value = await conn.fetchval(
        "SELECT count(*) FROM community_invites WHERE community_id = $1 AND created_by = $2"
        " AND (expires_at IS NULL OR expires_at > $3) AND (uses_left IS NULL OR uses_left > 0)",
        community_id, creator, now,
    )  # fmt: skip
    return int(value)


async def _claim(conn: Connection, community_id: int, code: str, pubkey: str, now: int) -> Claim:
    """Spend one use of `code` on `pubkey`'s membership, atomically: the invite row is
    locked, so two claims of a last use never both succeed. A member's claim spends
    nothing."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT uses_left, expires_at FROM community_invites"
            " WHERE community_id = $1 AND code = $2 FOR UPDATE",
            community_id, code,
        )  # fmt: skip
        if row is None:
            return Claim.INVALID
        member = await conn.fetchval(
            "SELECT 1 FROM community_members WHERE community_id = $1 AND pubkey = $2",
            community_id, pubkey,
        )  # fmt: skip
        if member is not None:
            return Claim.ALREADY_MEMBER
        if row["expires_at"] is not None and row["expires_at"] <= now:
            return Claim.EXPIRED
        if row["uses_left"] is not None and row["uses_left"] <= 0:
            return Claim.USED_UP
        if row["uses_left"] is not None:
            await conn.execute(
                "UPDATE community_invites SET uses_left = uses_left - 1"
                " WHERE community_id = $1 AND code = $2",
                community_id, code,
            )  # fmt: skip
        await _add(conn, community_id, pubkey, VIA_INVITE)
        return Claim.JOINED


class MembershipStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def set_access(self, community_id: int, mode: str) -> None:
        await self._db.run(_set_access, community_id, mode)

    async def add(self, community_id: int, pubkey: str, via: str = VIA_ADMIN) -> bool:
        """Make `pubkey` a member; False when it was one already."""
        return await self._db.run(_add, community_id, pubkey, via)

    async def remove(self, community_id: int, pubkey: str) -> bool:
        """Remove a member; False when it was none."""
        return await self._db.run(_remove, community_id, pubkey)

    async def members(self, community_id: int) -> list[Member]:
        """The community's members, oldest first."""
        return await self._db.run(_members, community_id)

    async def create_invite(self, community_id: int, invite: Invite) -> None:
        await self._db.run(_create_invite, community_id, invite)

    async def open_invites_by(self, community_id: int, creator: str, now: int) -> int:
        """Invites `creator` asked for that can still be claimed."""
        return await self._db.run(_open_invites_by, community_id, creator, now)

    async def claim(self, community_id: int, code: str, pubkey: str, now: int) -> Claim:
        return await self._db.run(_claim, community_id, code, pubkey, now)
