"""Replaceable, addressable and ephemeral kinds (NIP-01) over real websockets."""

from __future__ import annotations

import time

from tests.helpers import RelayUnderTest, connect, make_event, new_key, sql


async def test_replaceable_newest_wins_and_older_is_refused(relay: RelayUnderTest) -> None:
    key = new_key()
    now = int(time.time())
    old, new = make_event(key, kind=0, created_at=now - 10), make_event(key, kind=0, created_at=now)
    async with connect(relay.port) as client:
        assert (await client.publish(old))[2] is True
        assert (await client.publish(new))[2] is True
        late = make_event(key, kind=0, created_at=now - 5)
        assert await client.publish(late) == [
            "OK", late.id, False, "duplicate: a newer version of this event is stored"
        ]
        got = await client.req("s", {"kinds": [0], "authors": [new.pubkey]})
    assert [e["id"] for e in got] == [new.id]
    rows = await sql(relay.db_url, "SELECT count(*) AS n FROM events WHERE kind = 0")
    assert rows[0]["n"] == 1


async def test_replaceable_tie_keeps_lowest_id(relay: RelayUnderTest) -> None:
    key = new_key()
    now = int(time.time())
    a, b = (make_event(key, kind=10002, created_at=now) for _ in range(2))
    low, high = sorted((a, b), key=lambda e: e.id)
    async with connect(relay.port) as client:
        assert (await client.publish(high))[2] is True
        assert (await client.publish(low))[2] is True
        assert (await client.publish(high))[2] is False
        got = await client.req("s", {"kinds": [10002], "authors": [low.pubkey]})
    assert [e["id"] for e in got] == [low.id]


async def test_addressable_versions_are_keyed_by_d_tag(relay: RelayUnderTest) -> None:
    key = new_key()
    now = int(time.time())
    a1 = make_event(key, kind=30023, tags=[["d", "a"]], created_at=now - 5)
    a2 = make_event(key, kind=30023, tags=[["d", "a"]], created_at=now)
    b1 = make_event(key, kind=30023, tags=[["d", "b"]], created_at=now - 5)
    async with connect(relay.port) as client:
        for e in (a1, a2, b1):
            assert (await client.publish(e))[2] is True
        got = await client.req("s", {"kinds": [30023], "authors": [a1.pubkey]})
    assert sorted(e["id"] for e in got) == sorted([a2.id, b1.id])


async def test_ephemeral_is_delivered_live_and_never_stored(relay: RelayUnderTest) -> None:
    event = make_event(kind=20001)
    async with connect(relay.port) as sub, connect(relay.port) as pub:
        assert await sub.req("s", {"kinds": [20001]}, live=True) == []
        assert await pub.publish(event) == ["OK", event.id, True, ""]
        frame = await sub.recv()
        assert frame == ["EVENT", "s", event.to_dict()]
        assert await pub.req("again", {"kinds": [20001]}) == []
    rows = await sql(relay.db_url, "SELECT count(*) AS n FROM events")
    assert rows[0]["n"] == 0
