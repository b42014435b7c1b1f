"""Group commit for regular events: the events that arrive while a write is in flight are
stored together, in one crossing into asyncio and one transaction.

Each submitter still gets its own outcome (stored, duplicate, or deleted by its author),
and only after the transaction that holds its event committed: OK still means durable.
Replaceable, addressable and deletion events take the one-at-a-time path, since their
rules need a lock per coordinate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay.batching import Batcher
from relay.events import kinds
from relay.events.kinds import Storage, storage_class
from relay.events.model import Event
from relay.events.rules import expiration_of
from relay.store.db import Connection, Database
from relay.store.events import Saved, SaveResult, event_lock, indexed_tags, lock_targets

MAX_BATCH = 500
WRITERS = 3


def batchable(event: Event) -> bool:
    return storage_class(event.kind) is Storage.REGULAR and event.kind != kinds.DELETION


@dataclass(frozen=True, slots=True)
class Pending:
    community_id: int
    event: Event
    raw: str


async def save_regular(conn: Connection, batch: list[Pending]) -> list[Saved]:
    """Store regular, non-deletion events in one transaction; an outcome each, in order
    (an id twice in the batch is stored once, then a duplicate)."""
    cids = [p.community_id for p in batch]
    ids = [bytes.fromhex(p.event.id) for p in batch]
    pubkeys = [bytes.fromhex(p.event.pubkey) for p in batch]
    async with conn.transaction():
        # Before the already-deleted check: a deletion of one of these holds it meanwhile.
        await lock_targets(conn, [(p.community_id, event_lock(p.event.id)) for p in batch])
        deleted = {
            (r["community_id"], bytes(r["event_id"]))
            for r in await conn.fetch(
                "SELECT d.community_id, d.event_id FROM deleted_events d"
                " JOIN unnest($1::integer[], $2::bytea[], $3::bytea[]) AS b(cid, id, pubkey)"
                " ON d.community_id = b.cid AND d.event_id = b.id AND d.pubkey = b.pubkey",
                cids,
                ids,
                pubkeys,
            )
        }
        keep = [i for i, key in enumerate(zip(cids, ids, strict=True)) if key not in deleted]
        rows: list[Any] = []
        if keep:
            rows = await conn.fetch(
                "INSERT INTO events (community_id, id, pubkey, kind, created_at, coordinate_d,"
                " expires_at, raw) SELECT cid, id, pubkey, kind, created_at, NULL, expires_at,"
                " raw FROM unnest($1::integer[], $2::bytea[], $3::bytea[], $4::integer[],"
                " $5::bigint[], $6::bigint[], $7::text[])"
                " AS b(cid, id, pubkey, kind, created_at, expires_at, raw)"
                " ON CONFLICT DO NOTHING RETURNING community_id, id",
                [cids[i] for i in keep],
                [ids[i] for i in keep],
                [pubkeys[i] for i in keep],
                [batch[i].event.kind for i in keep],
                [batch[i].event.created_at for i in keep],
                [expiration_of(batch[i].event) for i in keep],
                [batch[i].raw for i in keep],
            )
        inserted = {(r["community_id"], bytes(r["id"])) for r in rows}
        outcomes: list[Saved] = []
        claimed: set[tuple[int, bytes]] = set()
        tag_rows: list[tuple[int, str, str, int, bytes]] = []
        for p, key in zip(batch, zip(cids, ids, strict=True), strict=True):
            if key in deleted:
                outcomes.append(Saved.DELETED)
            elif key in inserted and key not in claimed:
                claimed.add(key)
                outcomes.append(Saved.STORED)
                tag_rows += [
                    (key[0], n, v, p.event.created_at, key[1]) for n, v in indexed_tags(p.event)
                ]
            else:
                outcomes.append(Saved.DUPLICATE)
        if tag_rows:
            await conn.execute(
                "INSERT INTO event_tags (community_id, name, value, created_at, event_id)"
                " SELECT * FROM unnest($1::integer[], $2::text[], $3::text[], $4::bigint[],"
                " $5::bytea[])",
                *[list(column) for column in zip(*tag_rows, strict=True)],
            )
    return outcomes


class GroupCommit(Batcher[Pending, SaveResult]):
    def __init__(self, db: Database, max_batch: int = MAX_BATCH, writers: int = WRITERS) -> None:
        super().__init__(self._write, max_batch=max_batch, workers=writers)
        self.db = db

    @staticmethod
    def accepts(event: Event) -> bool:
        return batchable(event)

    async def save(
        self, community_id: int, event: Event, raw: str, timeout: float | None = None
    ) -> SaveResult:
        return await self.submit(Pending(community_id, event, raw), timeout)

    async def _write(self, batch: list[Pending]) -> list[SaveResult]:
        return [SaveResult(outcome) for outcome in await self.db.run(save_regular, batch)]
