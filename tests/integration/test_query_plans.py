"""Every query plan starts from community_id and an index: no filter shape reads every
event (DESIGN invariant 12).

A database of 60,000 events in 20 communities (made in SQL, then ANALYZEd, so the planner
sees a multi-tenant table: one community is a small part of it) and EXPLAIN of the SQL the
store builds for each shape: no plan node may be a sequential scan of `events` or
`event_tags`. COUNT with several filters used to OR them in one WHERE, and the planner
read every event of every community.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from relay.protocol.filters import Filter
from relay.store.events import count_sql, select_sql, single_tag_sql
from tests.helpers import sql

NOW = 2_000_000_000
COMMUNITIES = 20
HEX = "ab" * 32


async def seed(db_url: str) -> int:
    rows = await sql(
        db_url,
        "INSERT INTO communities (host) SELECT 'p' || i || '.test'"
        " FROM generate_series(1, $1) AS i RETURNING id",
        COMMUNITIES,
    )
    cids = [r["id"] for r in rows]
    await sql(
        db_url,
        "INSERT INTO events (community_id, id, pubkey, kind, created_at, raw)"
        " SELECT ($1::integer[])[1 + i % $2], sha256(int8send(i)),"
        " sha256(int8send(i % 500)), i % 40, 1700000000 + i,"
        " '{\"content\":\"word' || (i % 1000) || ' common\",\"tags\":[]}'"
        " FROM generate_series(1, 60000) AS i",
        cids,
        COMMUNITIES,
    )
    await sql(
        db_url,
        "INSERT INTO event_tags (community_id, name, value, created_at, event_id)"
        " SELECT community_id, 'p', encode(sha256(int8send(created_at % 700)), 'hex'),"
        " created_at, id FROM events UNION ALL"
        " SELECT community_id, 't', 'topic' || (created_at % 50), created_at, id FROM events",
    )
    await sql(db_url, "ANALYZE events")
    await sql(db_url, "ANALYZE event_tags")
    return int(cids[0])


def pubkeys(n: int) -> frozenset[str]:
    return frozenset(f"{i:064x}" for i in range(n))


SHAPES: dict[str, tuple[Filter, ...]] = {
    "kinds": (Filter(kinds=frozenset({1}), limit=500),),
    "99 kinds": (Filter(kinds=frozenset(range(99)), limit=500),),
    "one author": (Filter(authors=frozenset({HEX}), limit=500),),
    "authors and kinds": (Filter(authors=pubkeys(50), kinds=frozenset({1, 7}), limit=500),),
    "ids": (Filter(ids=pubkeys(20)),),
    "one tag value": (Filter(tags=(("t", frozenset({"topic1"})),), limit=500),),
    "tag values and kinds": (
        Filter(kinds=frozenset(range(99)), tags=(("p", pubkeys(50)),), limit=500),
    ),
    "since and until": (Filter(since=1700001000, until=1700002000, limit=500),),
    "nothing but a limit": (Filter(limit=500),),
    "search": (Filter(search="word7", limit=500),),
    "search and kinds": (Filter(kinds=frozenset({1, 7}), search="word7 common", limit=500),),
    "search and an author": (Filter(authors=frozenset({HEX}), search="word7", limit=500),),
    "ten filters of 99 kinds and 50 #p": tuple(
        Filter(kinds=frozenset(range(i, i + 99)), tags=(("p", pubkeys(50)),), limit=500)
        for i in range(10)
    ),
}


def seq_scans(plan: dict[str, Any]) -> list[str]:
    found = []
    if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name") in (
        "events", "event_tags",
    ):  # fmt: skip
        found.append(plan["Relation Name"])
    for child in plan.get("Plans", []):
        found += seq_scans(child)
    return found


async def plan_of(db_url: str, query: str, args: list[Any]) -> dict[str, Any]:
    rows = await sql(db_url, f"EXPLAIN (FORMAT JSON) {query}", *args)
    plan: dict[str, Any] = json.loads(rows[0][0])[0]["Plan"]
    return plan


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_no_filter_shape_reads_every_event(db_url: str, shape: str) -> None:
    cid = await seed(db_url)
    filters = SHAPES[shape]
    queries = [select_sql(cid, f, NOW) for f in filters]
    queries += [q for q in (single_tag_sql(cid, f) for f in filters) if q is not None]
    queries.append(count_sql(cid, filters, NOW))
    for query, args in queries:
        plan = await plan_of(db_url, query, args)
        assert not seq_scans(plan), f"{shape}: sequential scan in\n{query}\n{plan}"


async def test_search_reads_the_search_index(db_url: str) -> None:
    """NIP-50: the query spells the indexed expression (config included), so the plan reads
    events_search, led by community_id, rather than each event's document."""
    cid = await seed(db_url)
    for flt in (Filter(search="word7", limit=500), Filter(kinds=frozenset({7}), search="word7")):
        query, args = select_sql(cid, flt, NOW)
        plan = await plan_of(db_url, query, args)
        assert "events_search" in index_names(plan), f"{query}\n{plan}"
        query, args = count_sql(cid, (flt,), NOW)
        assert "events_search" in index_names(await plan_of(db_url, query, args))


def index_names(plan: dict[str, Any]) -> list[str]:
    found = [plan["Index Name"]] if "Index Name" in plan else []
    for child in plan.get("Plans", []):
        found += index_names(child)
    return found
