"""The Postgres event store: atomic replacement, NIP-09 deletion, filter queries, NIP-40 purge."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from relay.events import kinds
from relay.events.kinds import Storage, storage_class
from relay.events.model import Event, is_hex
from relay.events.rules import expiration_of
from relay.protocol.filters import TAG_LETTERS, Filter
from relay.store.db import Connection, Database


class Saved(Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    SUPERSEDED = "superseded"  # a newer version of the coordinate is already stored
    DELETED = "deleted"  # its author deleted it (NIP-09); it cannot come back
    REFUSED = "refused"  # the caller's precondition did not hold


@dataclass(frozen=True, slots=True)
class Coordinate:
    kind: int
    pubkey: str
    d: str


@dataclass(frozen=True, slots=True)
class SaveResult:
    outcome: Saved
    # Addressable/replaceable events removed by this save (a deletion or a replacement).
    removed: tuple[Coordinate, ...] = field(default=())


def coordinate_d(event: Event) -> str | None:
    """The key of a replaceable ('') or addressable (its d tag) event; None otherwise."""
    storage = storage_class(event.kind)
    if storage is Storage.REPLACEABLE:
        return ""
    if storage is Storage.ADDRESSABLE:
        return event.first_tag_value("d") or ""
    return None


def indexed_tags(event: Event) -> list[tuple[str, str]]:
    """The (name, value) pairs a `#x` filter can match: single-letter tags with a value."""
    pairs = {(tag[0], tag[1]) for tag in event.tags if len(tag) >= 2 and tag[0] in TAG_LETTERS}
    return sorted(pairs)


def parse_address(value: str) -> Coordinate | None:
    kind, sep, rest = value.partition(":")
    pubkey, sep2, d = rest.partition(":")
    if not sep or not sep2 or not (kind.isascii() and kind.isdigit()) or len(kind) > 5:
        return None
    if len(pubkey) != 64:
        return None
    return Coordinate(int(kind), pubkey, d)


class GroupWriter(Protocol):
    running: bool

    def accepts(self, event: Event) -> bool: ...

    async def save(
        self, community_id: int, event: Event, raw: str, timeout: float | None = None
    ) -> SaveResult:
        """BatchTimeout once `timeout` seconds pass (the event may still be stored)."""
        ...


RemovalHook = Callable[[Connection, int, tuple[Coordinate, ...]], Awaitable[None]]
Precondition = Callable[[Connection, int], Awaitable[bool]]


# -- queries -------------------------------------------------------------------------------


class _Args:
    def __init__(self, first: list[Any]) -> None:
        self.values = first

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _one_of(column: str, values: list[Any], args: _Args, cast: str = "") -> str:
    """`column = $n` for one value, which lets an index on it give rows already in
    created_at order (a LIMIT then stops early); `= ANY($n)` for several."""
    if len(values) == 1:
        return f"{column} = {args.add(values[0])}{cast}"
    return f"{column} = ANY({args.add(values)}{cast and cast + '[]'})"


# NIP-50: the text search configuration of the search index (sql/0006_events_search.sql).
# A query must spell the indexed expression exactly, config included, to use the index.
SEARCH_CONFIG = "simple"
SEARCH_DOCUMENT = f"to_tsvector('{SEARCH_CONFIG}'::regconfig, event_search_text(e.raw))"


def _search_query(text: str) -> str:
    """The tsquery of a search, its text written into the SQL as a literal: with a
    parameter, a prepared statement's generic plan cannot tell a rare word from a common one
    and once read every event's document for a rare one. An E'' literal reads the same
    whatever standard_conforming_strings says; the text holds no NUL (filters refuse it)."""
    literal = text.replace("\\", "\\\\").replace("'", "''")
    return f"websearch_to_tsquery('{SEARCH_CONFIG}'::regconfig, E'{literal}')"


def _conditions(flt: Filter, args: _Args) -> list[str]:
    where = ["e.community_id = $1", "(e.expires_at IS NULL OR e.expires_at > $2)"]
    if flt.ids is not None:
        where.append(_one_of("e.id", [bytes.fromhex(i) for i in sorted(flt.ids)], args))
    if flt.authors is not None:
        where.append(_one_of("e.pubkey", [bytes.fromhex(a) for a in sorted(flt.authors)], args))
    if flt.kinds is not None:
        where.append(_one_of("e.kind", sorted(flt.kinds), args, "::integer"))
    if flt.since is not None:
        where.append(f"e.created_at >= {args.add(flt.since)}")
    if flt.until is not None:
        where.append(f"e.created_at <= {args.add(flt.until)}")
    for name, values in flt.tags:
        where.append(
            "EXISTS (SELECT 1 FROM event_tags t WHERE t.community_id = e.community_id"
            f" AND t.event_id = e.id AND t.name = {args.add(name)}"
            f" AND t.value = ANY({args.add(sorted(values))}::text[]))"
        )
    if flt.search is not None:
        # The search index leads with ARRAY[community_id] (sql/0006_events_search.sql).
        where.append("ARRAY[e.community_id] @> ARRAY[$1::integer]")
        where.append(f"{SEARCH_DOCUMENT} @@ {_search_query(flt.search)}")
    return where


def select_sql(community_id: int, flt: Filter, now: int) -> tuple[str, list[Any]]:
    args = _Args([community_id, now])
    where = " AND ".join(_conditions(flt, args))
    if flt.search is not None:
        return _search_sql(where, flt, args)
    limit = args.add(flt.limit) if flt.limit is not None else "ALL"
    sql = (
        f"SELECT e.raw, e.created_at, e.id FROM events e WHERE {where}"
        f" ORDER BY e.created_at DESC, e.id ASC LIMIT {limit}"
    )
    return sql, args.values


# NIP-50: how many of a search's matches, the newest, are ranked by relevance. Ranking reads
# each candidate's document again: every match of a common word over 1,000,000 events took
# 18 s (docs/benchmarks.md), the newest 10,000 of them 0.2 s.
SEARCH_CANDIDATES = 10_000


def _search_sql(where: str, flt: Filter, args: _Args) -> tuple[str, list[Any]]:
    """The newest SEARCH_CANDIDATES matches (found through the search index), then the
    filter's `limit` of them by relevance (ts_rank), ties newest first."""
    assert flt.search is not None
    query = _search_query(flt.search)
    # A literal too: a generic plan that does not know the bound read every match.
    candidates = int(SEARCH_CANDIDATES)
    limit = args.add(flt.limit) if flt.limit is not None else "ALL"
    document = SEARCH_DOCUMENT.replace("e.raw", "m.raw")
    sql = (
        "WITH matched AS MATERIALIZED (SELECT e.raw, e.created_at, e.id FROM events e"
        f" WHERE {where} ORDER BY e.created_at DESC, e.id ASC LIMIT {candidates})"
        " SELECT m.raw, m.created_at, m.id FROM matched m"
        f" ORDER BY ts_rank({document}, {query}) DESC, m.created_at DESC, m.id ASC"
        f" LIMIT {limit}"
    )
    return sql, args.values


def items_sql(
    community_id: int, flt: Filter, now: int, max_records: int
) -> tuple[str, list[Any]]:
    """(created_at, id) of the filter's events, oldest first, at most `max_records` + 1 (so
    the caller tells "too many" from "exactly the limit"); the filter's own `limit` does not
    apply (NIP-77 reconciles the whole set). Only the key columns: no event bodies read."""
    args = _Args([community_id, now])
    where = " AND ".join(_conditions(flt, args))
    sql = (
        f"SELECT e.created_at, e.id FROM events e WHERE {where}"
        f" ORDER BY e.created_at, e.id LIMIT {args.add(max_records + 1)}"
    )
    return sql, args.values


def count_sql(community_id: int, filters: tuple[Filter, ...], now: int) -> tuple[str, list[Any]]:
    """One index-driven scan a filter, joined by UNION (an event that matches several
    counts once): filters ORed in one WHERE made the planner read every event."""
    args = _Args([community_id, now])
    clauses = [" AND ".join(_conditions(f, args)) for f in filters if f.can_match_anything()]
    if not clauses:
        return "SELECT 0", []
    scans = " UNION ".join(f"SELECT e.id FROM events e WHERE {c}" for c in clauses)
    return f"SELECT count(*) FROM ({scans}) AS matched", args.values


# -- the store -----------------------------------------------------------------------------


# NIP-09 under concurrency: an insert's already-deleted check and a deletion's removal of
# the same event would not see each other's uncommitted rows (READ COMMITTED), so both run
# under a transaction-scoped advisory lock on the target: its id, and for a replaceable or
# addressable event its coordinate too. Every transaction takes coordinate locks before id
# locks, and the locks of one step in key order, so two of them never wait on each other.
_LOCK_IN_ORDER = (
    "SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT DISTINCT hashtextextended(name, cid)"
    " AS k FROM unnest($1::integer[], $2::text[]) AS t(cid, name) ORDER BY k) AS keys"
)


def event_lock(event_id: str) -> str:
    return f"event:{event_id}"


def coordinate_lock(pubkey: str, kind: int, d: str) -> str:
    return f"{pubkey}:{kind}:{d}"


async def lock_targets(conn: Connection, targets: list[tuple[int, str]]) -> None:
    """Take the advisory locks of (community id, lock name) pairs, in key order."""
    if targets:
        await conn.fetchval(_LOCK_IN_ORDER, [c for c, _ in targets], [n for _, n in targets])


async def _already_deleted(conn: Connection, cid: int, event: Event, d: str | None) -> bool:
    if await conn.fetchval(
        "SELECT 1 FROM deleted_events WHERE community_id = $1 AND event_id = $2 AND pubkey = $3",
        cid,
        bytes.fromhex(event.id),
        bytes.fromhex(event.pubkey),
    ):
        return True
    if d is None:
        return False
    until = await conn.fetchval(
        "SELECT deleted_until FROM deleted_coordinates"
        " WHERE community_id = $1 AND pubkey = $2 AND kind = $3 AND d = $4",
        cid,
        bytes.fromhex(event.pubkey),
        event.kind,
        d,
    )
    return until is not None and event.created_at <= until


async def _replace_older(conn: Connection, cid: int, event: Event, d: str) -> Saved | None:
    """Remove an older version of the coordinate (its lock is held); None to go on."""
    current = await conn.fetchrow(
        "SELECT id, created_at FROM events"
        " WHERE community_id = $1 AND pubkey = $2 AND kind = $3 AND coordinate_d = $4",
        cid,
        bytes.fromhex(event.pubkey),
        event.kind,
        d,
    )
    if current is None:
        return None
    current_id = bytes(current["id"]).hex()
    if current_id == event.id:
        return Saved.DUPLICATE
    newest, lowest_id = current["created_at"], current_id
    if newest > event.created_at or (newest == event.created_at and lowest_id < event.id):
        return Saved.SUPERSEDED
    await conn.execute(
        "DELETE FROM events WHERE community_id = $1 AND id = $2", cid, current["id"]
    )
    return None


async def _apply_deletion(conn: Connection, cid: int, request: Event) -> list[Coordinate]:
    author = bytes.fromhex(request.pubkey)
    removed: list[Coordinate] = []
    targets = [parse_address(v) for v in request.tag_values("a")]
    addresses = [a for a in targets if a is not None and a.pubkey == request.pubkey]
    hex_ids = [v for v in request.tag_values("e") if is_hex(v, 64)]
    await lock_targets(conn, [(cid, coordinate_lock(a.pubkey, a.kind, a.d)) for a in addresses])
    await lock_targets(conn, [(cid, event_lock(i)) for i in hex_ids])
    ids = [bytes.fromhex(v) for v in hex_ids]
    if ids:
        rows = await conn.fetch(
            "DELETE FROM events WHERE community_id = $1 AND id = ANY($2) AND pubkey = $3"
            " AND kind <> $4 RETURNING kind, coordinate_d",
            cid,
            ids,
            author,
            kinds.DELETION,
        )
        removed += [
            Coordinate(r["kind"], request.pubkey, r["coordinate_d"])
            for r in rows
            if r["coordinate_d"] is not None
        ]
        await conn.executemany(
            "INSERT INTO deleted_events (community_id, event_id, pubkey) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING",
            [(cid, i, author) for i in ids],
        )
    for address in addresses:
        rows = await conn.fetch(
            "DELETE FROM events WHERE community_id = $1 AND pubkey = $2 AND kind = $3"
            " AND coordinate_d = $4 AND created_at <= $5 RETURNING kind",
            cid,
            author,
            address.kind,
            address.d,
            request.created_at,
        )
        removed += [address for _ in rows[:1]]
        await conn.execute(
            "INSERT INTO deleted_coordinates (community_id, pubkey, kind, d, deleted_until)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (community_id, pubkey, kind, d)"
            " DO UPDATE SET deleted_until ="
            " greatest(deleted_coordinates.deleted_until, excluded.deleted_until)",
            cid,
            author,
            address.kind,
            address.d,
            request.created_at,
        )
    return removed


async def _save_in_transaction(conn: Connection, cid: int, event: Event, raw: str) -> SaveResult:
    d = coordinate_d(event)
    if d is not None:  # also serializes the writers of one coordinate
        await lock_targets(conn, [(cid, coordinate_lock(event.pubkey, event.kind, d))])
    await lock_targets(conn, [(cid, event_lock(event.id))])
    if await _already_deleted(conn, cid, event, d):
        return SaveResult(Saved.DELETED)
    if d is not None:
        refused = await _replace_older(conn, cid, event, d)
        if refused is not None:
            return SaveResult(refused)
    inserted = await conn.fetchval(
        "INSERT INTO events (community_id, id, pubkey, kind, created_at, coordinate_d,"
        " expires_at, raw) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT DO NOTHING RETURNING 1",
        cid,
        bytes.fromhex(event.id),
        bytes.fromhex(event.pubkey),
        event.kind,
        event.created_at,
        d,
        expiration_of(event),
        raw,
    )
    if not inserted:
        return SaveResult(Saved.DUPLICATE)
    tags = indexed_tags(event)
    if tags:
        await conn.executemany(
            "INSERT INTO event_tags (community_id, name, value, created_at, event_id)"
            " VALUES ($1, $2, $3, $4, $5)",
            [(cid, n, v, event.created_at, bytes.fromhex(event.id)) for n, v in tags],
        )
    removed: list[Coordinate] = []
    if event.kind == kinds.DELETION:
        removed = await _apply_deletion(conn, cid, event)
    return SaveResult(Saved.STORED, tuple(removed))


class _Refused(Exception):
    def __init__(self, result: SaveResult) -> None:
        self.result = result


async def _save_together(
    conn: Connection,
    cid: int,
    events: list[tuple[Event, str]],
    hooks: tuple[RemovalHook, ...],
    precondition: Precondition | None,
) -> list[SaveResult]:
    """Save events in one transaction; all are kept only if the first is stored (or a
    duplicate). Removal hooks run in the same transaction; so does the precondition,
    first: when it does not hold, nothing is stored and the outcome is REFUSED."""
    try:
        async with conn.transaction():
            if precondition is not None and not await precondition(conn, cid):
                raise _Refused(SaveResult(Saved.REFUSED))
            results: list[SaveResult] = []
            for event, raw in events:
                result = await _save_in_transaction(conn, cid, event, raw)
                if not results and result.outcome not in (Saved.STORED, Saved.DUPLICATE):
                    raise _Refused(result)
                results.append(result)
                if result.removed:
                    for hook in hooks:
                        await hook(conn, cid, result.removed)
            return results
    except _Refused as refused:
        return [refused.result]


def single_tag_sql(cid: int, flt: Filter) -> tuple[str, list[Any]] | None:
    """A tag filter with one value and nothing else but since/until: the newest `limit`
    entries are read off the tag index in order, and only those events are fetched."""
    if flt.ids or flt.authors or flt.kinds or len(flt.tags) != 1 or flt.limit is None:
        return None
    if flt.search is not None:
        return None
    (name, values), = flt.tags
    if len(values) != 1:
        return None
    args = _Args([cid, name, next(iter(values))])
    where = ["t.community_id = $1", "t.name = $2", "t.value = $3"]
    if flt.since is not None:
        where.append(f"t.created_at >= {args.add(flt.since)}")
    if flt.until is not None:
        where.append(f"t.created_at <= {args.add(flt.until)}")
    limit = args.add(flt.limit)
    sql = (
        "WITH picked AS (SELECT t.event_id, t.created_at FROM event_tags t"
        f" WHERE {' AND '.join(where)} ORDER BY t.created_at DESC, t.event_id ASC"
        f" LIMIT {limit}) SELECT e.raw, e.created_at, e.id, e.expires_at FROM picked p"
        " JOIN events e ON e.community_id = $1 AND e.id = p.event_id"
    )
    return sql, args.values


# A query may run this long before it is cancelled (RELAY_QUERY_TIMEOUT_SECONDS).
QUERY_TIMEOUT_SECONDS = 2.0


class QueryTooExpensive(Exception):
    """A REQ or COUNT query ran past the query timeout and was cancelled."""


async def _fetch(conn: Connection, sql: str, args: list[Any], timeout: float) -> list[Any]:
    """Rows of one query, cancelled on the server past `timeout` seconds."""
    try:
        return list(await conn.fetch(sql, *args, timeout=timeout))
    except TimeoutError:
        raise QueryTooExpensive(f"the query ran over {timeout:g} s") from None


async def _select(
    conn: Connection, cid: int, flt: Filter, now: int, timeout: float
) -> list[Any]:
    fast = single_tag_sql(cid, flt)
    if fast is not None:
        rows = await _fetch(conn, fast[0], fast[1], timeout)
        live = [r for r in rows if r["expires_at"] is None or r["expires_at"] > now]
        # Expired events that the purge has not removed yet took places in the limit:
        # only then is the general query needed.
        if len(live) == len(rows) or len(rows) < (flt.limit or 0):
            return live
    sql, args = select_sql(cid, flt, now)
    if flt.search is not None:
        return await _fetch_custom_plan(conn, sql, args, timeout)
    return await _fetch(conn, sql, args, timeout)


async def _fetch_custom_plan(
    conn: Connection, sql: str, args: list[Any], timeout: float
) -> list[Any]:
    """_fetch, planned for these very arguments. A search's plan depends on how many events
    of the community match: the generic plan of a prepared statement guessed a few thousand
    and read every match of a common word (7.4 s over 1,000,000 events), where the plan made
    for the community reads the newest events until it has enough (0.2 s)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        return await _fetch(conn, sql, args, timeout)


async def _query(
    conn: Connection, cid: int, filters: tuple[Filter, ...], now: int, timeout: float
) -> list[tuple[str, str]]:
    seen: dict[bytes, tuple[int, bytes, str]] = {}
    # NIP-50: what a search filter matched comes first, in its filter's relevance order.
    ranked: dict[bytes, None] = {}
    for flt in filters:
        if flt.limit == 0 or not flt.can_match_anything():
            continue
        for row in await _select(conn, cid, flt, now, timeout):
            if flt.search is not None:
                ranked.setdefault(row["id"])
            seen[row["id"]] = (row["created_at"], row["id"], row["raw"])
    first = [seen.pop(event_id) for event_id in ranked]
    ordered = first + sorted(seen.values(), key=lambda r: (-r[0], r[1]))
    return [(event_id.hex(), raw) for _, event_id, raw in ordered]


class EventStore:
    def __init__(self, db: Database, query_timeout: float = QUERY_TIMEOUT_SECONDS) -> None:
        self.db = db
        self.query_timeout = query_timeout
        self.removal_hooks: tuple[RemovalHook, ...] = ()
        # Set while a group-commit writer runs: regular events are then stored in batches.
        self.group: GroupWriter | None = None

    def on_removal(self, hook: RemovalHook) -> None:
        """Run `hook` in the transaction that removes addressable or replaceable events."""
        self.removal_hooks = (*self.removal_hooks, hook)

    def group_for(self, event: Event) -> GroupWriter | None:
        """The group-commit writer that stores `event`, if one runs and takes it."""
        group = self.group
        if group is not None and group.running and group.accepts(event):
            return group
        return None

    async def save(self, community_id: int, event: Event, raw: str) -> SaveResult:
        group = self.group_for(event)
        if group is not None:
            return await group.save(community_id, event, raw)
        return (await self.save_together(community_id, [(event, raw)]))[0]

    async def save_together(
        self,
        community_id: int,
        events: list[tuple[Event, str]],
        precondition: Precondition | None = None,
    ) -> list[SaveResult]:
        """Store the first event and its companions atomically (see _save_together)."""
        return await self.db.run(
            _save_together, community_id, events, self.removal_hooks, precondition
        )

    async def query(
        self, community_id: int, filters: tuple[Filter, ...], now: int
    ) -> list[tuple[str, str]]:
        """(id, JSON) of stored events matching any filter: newest first, ties by lowest id.
        QueryTooExpensive past the query timeout."""
        return await self.db.run(_query, community_id, filters, now, self.query_timeout)

    async def latest_created_at(
        self, community_id: int, pubkey: str, kind: int, d: str
    ) -> int | None:
        """created_at of the stored version of a replaceable or addressable coordinate."""

        async def fetch(conn: Connection) -> int | None:
            value = await conn.fetchval(
                "SELECT max(created_at) FROM events WHERE community_id = $1 AND pubkey = $2"
                " AND kind = $3 AND coordinate_d = $4",
                community_id,
                bytes.fromhex(pubkey),
                kind,
                d,
            )
            return None if value is None else int(value)

        return await self.db.run(fetch)

    async def items(
        self, community_id: int, flt: Filter, now: int, max_records: int
    ) -> list[tuple[int, bytes]] | None:
        """(created_at, id) of the stored, unexpired events matching `flt`, oldest first
        (NIP-77's order); None when there are more than `max_records`. QueryTooExpensive
        past the query timeout."""
        if not flt.can_match_anything():
            return []
        sql, args = items_sql(community_id, flt, now, max_records)

        async def fetch(conn: Connection) -> list[Any]:
            return await _fetch(conn, sql, args, self.query_timeout)

        rows = await self.db.run(fetch)
        if len(rows) > max_records:
            return None
        return [(row["created_at"], bytes(row["id"])) for row in rows]

    async def count(self, community_id: int, filters: tuple[Filter, ...], now: int) -> int:
        sql, args = count_sql(community_id, filters, now)

        async def fetch(conn: Connection) -> int:
            if any(f.search is not None for f in filters):
                rows = await _fetch_custom_plan(conn, sql, args, self.query_timeout)
            else:
                rows = await _fetch(conn, sql, args, self.query_timeout)
            return int(rows[0][0])

        return await self.db.run(fetch)

    async def purge_expired(self, now: int, batch: int = 1000) -> int:
        """Delete expired events in bounded batches; returns how many went."""

        async def purge(conn: Connection) -> int:
            rows = await conn.fetch(
                "DELETE FROM events WHERE (community_id, id) IN (SELECT community_id, id"
                " FROM events WHERE expires_at <= $1 LIMIT $2) RETURNING 1",
                now,
                batch,
            )
            return len(rows)

        total = 0
        while (purged := await self.db.run(purge)) > 0:
            total += purged
            if purged < batch:
                break
        return total
