"""Concurrent writers of one replaceable coordinate end with the right winner."""

from __future__ import annotations

import time

import trio

from tests.helpers import RelayUnderTest, connect, make_event, new_key, sql


async def test_concurrent_versions_leave_the_newest_lowest_id(relay: RelayUnderTest) -> None:
    key = new_key()
    now = int(time.time())
    versions = [
        make_event(key, kind=30000, tags=[["d", "list"]], created_at=now - (i % 5))
        for i in range(40)
    ]
    winner = min(versions, key=lambda e: (-e.created_at, e.id))

    async def writer(chunk: list) -> None:  # type: ignore[type-arg]
        async with connect(relay.port) as client:
            for event in chunk:
                await client.publish(event)

    for _ in range(3):
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(writer, versions[i::8])
        rows = await sql(
            relay.db_url, "SELECT encode(id, 'hex') AS id FROM events WHERE kind = 30000"
        )
        assert [r["id"] for r in rows] == [winner.id]
        versions.reverse()
