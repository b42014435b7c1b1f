"""NIP-01 over real websockets against a relay backed by a fresh Postgres database."""

from __future__ import annotations

import time

import trio

from tests.helpers import RelayUnderTest, connect, make_event, new_key, sql
from tests.services import ADMIN_URL


async def test_event_is_stored_and_returned_by_req(relay: RelayUnderTest) -> None:
    event = make_event(tags=[["t", "nostr"]])
    async with connect(relay.port) as client:
        assert await client.publish(event) == ["OK", event.id, True, ""]
        got = await client.req("s1", {"ids": [event.id]})
    assert got == [event.to_dict()]
    rows = await sql(relay.db_url, "SELECT count(*) AS n FROM events")
    assert rows[0]["n"] == 1


async def test_duplicate_is_accepted_with_prefix(relay: RelayUnderTest) -> None:
    event = make_event()
    async with connect(relay.port) as client:
        await client.publish(event)
        assert await client.publish(event) == [
            "OK", event.id, True, "duplicate: already have this event"
        ]


async def test_challenge_is_sent_on_connect(relay: RelayUnderTest) -> None:
    async with connect(relay.port) as client:
        challenge = await client.wait_challenge()
    assert len(challenge) == 32


async def test_live_event_reaches_matching_subscription_once(relay: RelayUnderTest) -> None:
    key = new_key()
    async with connect(relay.port) as sub, connect(relay.port) as pub:
        author = make_event(key).pubkey
        assert await sub.req("a", {"authors": [author]}, live=True) == []
        assert await sub.req("b", {"kinds": [1]}, live=True) == []
        event = make_event(key)
        assert (await pub.publish(event))[2] is True
        frames = [await sub.recv(), await sub.recv()]
        assert sorted(f[1] for f in frames) == ["a", "b"]
        assert all(f[2]["id"] == event.id for f in frames)
        await sub.expect_nothing()


async def test_req_orders_newest_first_ties_by_lowest_id_and_limits(
    relay: RelayUnderTest,
) -> None:
    key = new_key()
    now = int(time.time())
    events = [make_event(key, created_at=now - (i // 2)) for i in range(6)]
    async with connect(relay.port) as client:
        for e in events:
            assert (await client.publish(e))[2] is True
        got = await client.req("s", {"authors": [events[0].pubkey], "limit": 4})
    expected = sorted(events, key=lambda e: (-e.created_at, e.id))[:4]
    assert [g["id"] for g in got] == [e.id for e in expected]


async def test_close_stops_live_delivery(relay: RelayUnderTest) -> None:
    async with connect(relay.port) as sub, connect(relay.port) as pub:
        await sub.req("s", {"kinds": [1]}, live=True)
        await sub.send(["CLOSE", "s"])
        await trio.sleep(0.1)
        await pub.publish(make_event())
        await sub.expect_nothing()


async def test_database_failure_answers_error_and_the_connection_survives(
    relay: RelayUnderTest,
) -> None:
    """A database that turns read-only is a real fault, produced on demand."""
    db = relay.db_url.rsplit("/", 1)[1]
    kill_sessions = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    async with connect(relay.port) as client:
        assert (await client.publish(make_event()))[2] is True
        await sql(ADMIN_URL, f"ALTER DATABASE {db} SET default_transaction_read_only = on")
        await sql(relay.db_url, kill_sessions)
        refused = make_event()
        assert await client.publish(refused) == [
            "OK", refused.id, False, "error: the event could not be stored, try again"
        ]
        await sql(ADMIN_URL, f"ALTER DATABASE {db} SET default_transaction_read_only = off")
        await sql(relay.db_url, kill_sessions)
        # The pool may hand out a session it has not yet seen terminated: that publish
        # gets `error:` too, and the next one a fresh session.
        answers = []
        for _ in range(3):
            answers.append(await client.publish(refused))
            if answers[-1][2] is True:
                break
        assert answers[-1] == ["OK", refused.id, True, ""]
        assert all(a[3].startswith("error:") for a in answers[:-1])
        assert len(await client.req("s", {"kinds": [1]})) == 2
