"""The SQL query path and the pure matcher agree, for random events and random filters.

`EventStore.query` answers REQs from Postgres; `Filter.matches` decides which live events a
subscription gets. A REQ must see the same events either way. Each Hypothesis example stores a
pool of events in a fresh community, then asks many random filter sets of both and compares:
the model applies NIP-01 (newest first, ties by lowest id, each filter's limit, the union of
the filters without duplicates), keeps only the newest version of a replaceable or addressable
event, and hides events whose NIP-40 expiration has passed.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.app import open_database
from relay.events.model import Event
from relay.protocol.filters import Filter, parse_filters
from relay.protocol.limits import Limits
from relay.store.db import Connection
from relay.store.events import EventStore
from tests.query_spec import (
    ADDRESSABLE_KIND,
    NOW,
    REPLACEABLE_KIND,
    Spec,
    filter_dict,
    spec,
)
from tests.services import relay_settings

LIMITS = Limits()


# --- the model ---------------------------------------------------------------------------------


def newest_first(event: Event) -> tuple[int, str]:
    return (-event.created_at, event.id)


def coordinate(event: Event) -> tuple[str, int, str] | None:
    if event.kind == REPLACEABLE_KIND:
        return (event.pubkey, event.kind, "")
    if event.kind == ADDRESSABLE_KIND:
        d = next((t[1] for t in event.tags if len(t) >= 2 and t[0] == "d"), "")
        return (event.pubkey, event.kind, d)
    return None


def expired(event: Event) -> bool:
    value = next((t[1] for t in event.tags if len(t) >= 2 and t[0] == "expiration"), None)
    return value is not None and int(value) <= NOW


def visible(pool: list[Event]) -> list[Event]:
    """What the store should hold and show at NOW after saving the whole pool."""
    # BIP-340 signing is randomized: the same id may come with different signatures, and the
    # first one saved is the one kept.
    unique: dict[str, Event] = {}
    for event in pool:
        unique.setdefault(event.id, event)
    latest: dict[tuple[str, int, str], Event] = {}
    kept = []
    for event in unique.values():
        coord = coordinate(event)
        if coord is None:
            kept.append(event)
        elif coord not in latest or newest_first(event) < newest_first(latest[coord]):
            latest[coord] = event
    kept += latest.values()
    return [e for e in kept if not expired(e)]


def expected(events: list[Event], filters: tuple[Filter, ...]) -> list[str]:
    chosen: dict[str, Event] = {}
    for flt in filters:
        matched = sorted((e for e in events if flt.matches(e)), key=newest_first)
        assert flt.limit is not None
        chosen.update((e.id, e) for e in matched[: flt.limit])
    return [e.id for e in sorted(chosen.values(), key=newest_first)]


# --- the property ------------------------------------------------------------------------------


async def new_community(conn: Connection) -> int:
    host = f"prop-{uuid.uuid4().hex[:12]}.test"
    return int(await conn.fetchval("INSERT INTO communities (host) VALUES ($1) RETURNING id", host))


async def store_and_query(
    db_url: str, data_dir: Path, pool: list[Event], queries: list[tuple[Filter, ...]]
) -> list[list[tuple[str, str]]]:
    async with open_database(relay_settings(db_url, data_dir, db_pool_size=1)) as db:
        community = await db.run(new_community)
        store = EventStore(db)
        for event in pool:
            await store.save(community, event, event.to_json())
        return [await store.query(community, filters, NOW) for filters in queries]


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(specs=st.lists(spec, min_size=1, max_size=24), data=st.data())
def test_sql_query_agrees_with_the_matcher(
    db_url: str, tmp_path: Path, specs: list[Spec], data: st.DataObject
) -> None:
    pool = [s.sign() for s in specs]
    ids = sorted({e.id for e in pool})
    filter_sets: list[list[dict[str, Any]]] = [[{}], [{"limit": 3}]]
    filter_sets += data.draw(
        st.lists(st.lists(filter_dict(ids), min_size=1, max_size=3), min_size=8, max_size=16),
        label="filter sets",
    )
    queries = [parse_filters(list(fs), LIMITS) for fs in filter_sets]

    results = trio.run(store_and_query, db_url, tmp_path, pool, queries)

    shown = visible(pool)
    by_id = {e.id: e for e in shown}
    for dicts, filters, got in zip(filter_sets, queries, results, strict=True):
        got_ids = [event_id for event_id, _ in got]
        assert got_ids == expected(shown, filters), f"filters {dicts}"
        for event_id, raw in got:
            assert orjson.loads(raw) == by_id[event_id].to_dict()
