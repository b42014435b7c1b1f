"""The repo-name registry in Postgres: the primary key is the race guard.

`reserve` claims a name with one INSERT ... ON CONFLICT DO NOTHING and re-reads on
conflict; a row that vanished in between is TakenByOther, so a name is granted only when
it was atomically claimed. An owner's reservations are serialized by a transaction-scoped
advisory lock, so the per-owner quota holds under concurrent announcements.

Each claim records the attempt that made it. `release_attempt` deletes a row only for that
attempt, and only while no announcement of the repo is stored, so a compensation can be
registered before the reservation is even tried: whether the claim happened, happened
and was cancelled before its answer arrived, or belongs to someone else, it does the right
thing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from relay.events import kinds
from relay.store.db import Connection, Database


@dataclass(frozen=True, slots=True)
class Reserved:
    pass


@dataclass(frozen=True, slots=True)
class AlreadyOwned:
    pass


@dataclass(frozen=True, slots=True)
class TakenByOther:
    owner: str


@dataclass(frozen=True, slots=True)
class QuotaExceeded:
    limit: int


Reservation = Reserved | AlreadyOwned | TakenByOther | QuotaExceeded


def new_attempt() -> str:
    return secrets.token_hex(16)


async def _reserve(
    conn: Connection, community_id: int, repo_id: str, owner: str, attempt: str, quota: int
) -> Reservation:
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))",
            f"git-repo-quota:{owner}",
            community_id,
        )
        holder = await conn.fetchval(
            "SELECT owner_pubkey FROM git_repo_names WHERE community_id = $1 AND repo_id = $2",
            community_id,
            repo_id,
        )
        if holder == owner:
            return AlreadyOwned()
        if holder is not None:
            return TakenByOther(holder)
        owned = await conn.fetchval(
            "SELECT count(*) FROM git_repo_names WHERE community_id = $1 AND owner_pubkey = $2",
            community_id,
            owner,
        )
        if owned >= quota:
            return QuotaExceeded(quota)
        claimed = await conn.fetchval(
            "INSERT INTO git_repo_names (community_id, repo_id, owner_pubkey, attempt)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING owner_pubkey",
            community_id,
            repo_id,
            owner,
            attempt,
        )
        if claimed is not None:
            return Reserved()
        holder = await conn.fetchval(
            "SELECT owner_pubkey FROM git_repo_names WHERE community_id = $1 AND repo_id = $2",
            community_id,
            repo_id,
        )
    # Another owner's claim committed first, or it vanished again: never grant it here.
    if holder == owner:
        return AlreadyOwned()
    return TakenByOther(holder or "")


async def release_in(conn: Connection, community_id: int, repo_id: str, owner: str) -> int:
    """Delete the row only if `owner` holds it; returns the rows deleted (0 or 1)."""
    rows = await conn.fetch(
        "DELETE FROM git_repo_names WHERE community_id = $1 AND repo_id = $2"
        " AND owner_pubkey = $3 RETURNING 1",
        community_id,
        repo_id,
        owner,
    )
    return len(rows)


async def _release_attempt(
    conn: Connection, community_id: int, repo_id: str, owner: str, attempt: str
) -> int:
    """Compensation: undo this attempt's claim unless its announcement got stored.

    The row is locked first and the announcement looked for afterwards, in a statement of
    its own: a re-announcement that holds the row (FOR SHARE, while it stores its event)
    has committed by then, and a fresh statement sees its event. (One DELETE ... WHERE NOT
    EXISTS would wait for the lock but judge with the snapshot it started with, and release
    a name whose announcement had just been stored.)
    """
    async with conn.transaction():
        claimed = await conn.fetchval(
            "SELECT 1 FROM git_repo_names WHERE community_id = $1 AND repo_id = $2"
            " AND owner_pubkey = $3 AND attempt = $4 FOR UPDATE",
            community_id,
            repo_id,
            owner,
            attempt,
        )
        if claimed is None:
            return 0
        announced = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM events WHERE community_id = $1 AND pubkey = $2"
            " AND kind = $3 AND coordinate_d = $4)",
            community_id,
            bytes.fromhex(owner),
            kinds.REPO_ANNOUNCEMENT,
            repo_id,
        )
        if announced:
            return 0
        await conn.execute(
            "DELETE FROM git_repo_names WHERE community_id = $1 AND repo_id = $2",
            community_id,
            repo_id,
        )
        return 1


@dataclass(frozen=True, slots=True)
class Listed:
    """A hosted repository as the relay page lists it."""

    repo_id: str
    owner: str
    announcement: str  # the owner's kind 30617, JSON
    state: str | None  # the relay-signed kind 30618 (the refs after the last push), JSON


# The hosted repositories of a community: registry rows whose owner's announcement is
# stored; a page of them by name, each with the relay-signed ref state. Each join says
# `coordinate_d IS NOT NULL` so that it reads the one row of events_one_per_coordinate (a
# partial index) rather than every event of the relay's key and kind.
_ANNOUNCED = f"""
FROM git_repo_names n
JOIN events a ON a.community_id = n.community_id AND a.pubkey = decode(n.owner_pubkey, 'hex')
    AND a.kind = {kinds.REPO_ANNOUNCEMENT} AND a.coordinate_d = n.repo_id
    AND a.coordinate_d IS NOT NULL
"""
_COUNT_HOSTED = f"SELECT count(*) {_ANNOUNCED} WHERE n.community_id = $1"
_LISTING = f"""
SELECT n.repo_id, n.owner_pubkey, a.raw AS announcement, s.raw AS state
{_ANNOUNCED}
LEFT JOIN events s ON s.community_id = n.community_id AND s.pubkey = $2
    AND s.kind = {kinds.REPO_STATE} AND s.coordinate_d = n.repo_id AND s.coordinate_d IS NOT NULL
WHERE n.community_id = $1
ORDER BY n.repo_id
LIMIT $3 OFFSET $4
"""


class RepoRegistry:
    def __init__(self, db: Database, quota: int) -> None:
        self.db = db
        self.quota = quota

    async def reserve(
        self, community_id: int, repo_id: str, owner: str, attempt: str | None = None
    ) -> Reservation:
        """Claim a name for `owner`; `attempt` identifies the claim for release_attempt."""
        token = attempt or new_attempt()
        return await self.db.run(_reserve, community_id, repo_id, owner, token, self.quota)

    async def owner_of(self, community_id: int, repo_id: str) -> str | None:
        async def fetch(conn: Connection) -> str | None:
            value = await conn.fetchval(
                "SELECT owner_pubkey FROM git_repo_names WHERE community_id = $1 AND repo_id = $2",
                community_id,
                repo_id,
            )
            return None if value is None else str(value)

        return await self.db.run(fetch)

    async def all_names(self) -> list[tuple[int, str, str]]:
        """(community id, repo id, owner) of every hosted repository, in every community."""

        async def fetch(conn: Connection) -> list[tuple[int, str, str]]:
            rows = await conn.fetch(
                "SELECT community_id, repo_id, owner_pubkey FROM git_repo_names"
                " ORDER BY community_id, repo_id"
            )
            return [(r["community_id"], r["repo_id"], r["owner_pubkey"]) for r in rows]

        return await self.db.run(fetch)

    async def listing(
        self, community_id: int, relay_pubkey: str, offset: int, limit: int
    ) -> tuple[list[Listed], int]:
        """A page of the community's hosted repositories by name, and how many there are."""

        async def fetch(conn: Connection) -> tuple[list[Listed], int]:
            rows = await conn.fetch(
                _LISTING, community_id, bytes.fromhex(relay_pubkey), limit, offset
            )
            total = await conn.fetchval(_COUNT_HOSTED, community_id)
            listed = [
                Listed(r["repo_id"], r["owner_pubkey"], r["announcement"], r["state"]) for r in rows
            ]
            return listed, int(total)

        return await self.db.run(fetch)

    async def count_for_owner(self, community_id: int, owner: str) -> int:
        async def fetch(conn: Connection) -> int:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM git_repo_names"
                    " WHERE community_id = $1 AND owner_pubkey = $2",
                    community_id,
                    owner,
                )
            )

        return await self.db.run(fetch)

    async def release(self, community_id: int, repo_id: str, owner: str) -> int:
        return await self.db.run(release_in, community_id, repo_id, owner)

    async def release_attempt(
        self, community_id: int, repo_id: str, owner: str, attempt: str
    ) -> int:
        return await self.db.run(_release_attempt, community_id, repo_id, owner, attempt)
