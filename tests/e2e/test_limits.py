"""Every configurable limit, on a relay started with a small value, and the slow consumer.

Each limit is checked on both sides of its boundary, and NIP-11 must advertise the value
the relay actually enforces.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio_websocket

from relay.events.model import Event
from tests.helpers import (
    RECEIVE_TIMEOUT,
    NostrClient,
    RelayUnderTest,
    auth_event,
    close_code_after,
    connect,
    http_get,
    make_event,
    new_key,
    sql,
    stored_ids,
    transaction_held,
)
from tests.services import start_relay


async def tag_count(relay: RelayUnderTest) -> int:
    return int((await sql(relay.db_url, "SELECT count(*) AS n FROM event_tags"))[0]["n"])


def event_of_size(size: int, **kwargs: Any) -> Event:
    """A signed event whose JSON (as the relay serialises it) is exactly `size` bytes."""
    created_at = int(time.time())
    key = new_key()
    base = len(make_event(key, content="", created_at=created_at, **kwargs).to_json().encode())
    event = make_event(key, content="x" * (size - base), created_at=created_at, **kwargs)
    assert len(event.to_json().encode()) == size
    return event


# -- subscriptions and filters -------------------------------------------------------------


async def test_max_subscriptions(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, max_subscriptions=3)
    full = "blocked: too many open subscriptions (max 3)"
    async with connect(relay.port) as client, connect(relay.port) as pub:
        for sub_id in ("a", "b", "c"):
            assert await client.req(sub_id, {"kinds": [7]}, live=True) == []
        await client.send(["REQ", "d", {"kinds": [1]}])
        assert await client.recv() == ["CLOSED", "d", full]
        # Re-using an open id replaces that subscription and is allowed at the limit.
        assert await client.req("a", {"kinds": [1]}, live=True) == []
        note = make_event(kind=1)
        assert await pub.publish(note) == ["OK", note.id, True, ""]
        frame = await client.recv()
        assert frame[:2] == ["EVENT", "a"] and frame[2]["id"] == note.id
        await client.expect_nothing()  # "d" was never opened
        # Closing one frees its slot for a new id.
        await client.send(["CLOSE", "b"])
        assert await client.req("d", {"kinds": [1]}, live=True) == [note.to_dict()]
        await client.send(["REQ", "e", {"kinds": [1]}])
        assert await client.recv() == ["CLOSED", "e", full]
        # The limit is per connection: another connection opens its own three.
        for sub_id in ("a", "b", "c"):
            assert await pub.req(sub_id, {"kinds": [7]}, live=True) == []


async def test_max_filters(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, max_filters=2)
    async with connect(relay.port) as client:
        assert await client.req("two", {"kinds": [1]}, {"kinds": [2]}) == []
        for verb in ("REQ", "COUNT"):
            await client.send([verb, "three", {"kinds": [1]}, {"kinds": [2]}, {"kinds": [3]}])
            assert await client.recv() == ["CLOSED", "three", "invalid: too many filters (max 2)"]
        await client.send(["COUNT", "two", {"kinds": [1]}, {"kinds": [2]}])
        assert await client.recv() == ["COUNT", "two", {"count": 0}]


async def test_max_limit_clamps_and_default_limit_applies(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, max_limit=5, default_limit=3)
    key = new_key()
    now = int(time.time())
    events = [make_event(key, created_at=now - i) for i in range(8)]  # events[0] is newest
    newest_first = [e.id for e in events]
    async with connect(relay.port) as client:
        for event in events:
            assert (await client.publish(event))[2] is True
        author = events[0].pubkey
        got = await client.req("big", {"authors": [author], "limit": 100})
        assert [e["id"] for e in got] == newest_first[:5]
        got = await client.req("none", {"authors": [author]})
        assert [e["id"] for e in got] == newest_first[:3]
        got = await client.req("small", {"authors": [author], "limit": 4})
        assert [e["id"] for e in got] == newest_first[:4]
        assert await client.req("zero", {"authors": [author], "limit": 0}) == []
        # COUNT counts everything that matches; the clamp is about returned events.
        await client.send(["COUNT", "n", {"authors": [author], "limit": 100}])
        assert await client.recv() == ["COUNT", "n", {"count": 8}]
    assert len(await stored_ids(relay.db_url)) == 8


async def test_max_subid_length(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, max_subid_length=8)
    async with connect(relay.port) as client:
        assert await client.req("s" * 8, {"kinds": [1]}) == []
        for verb in ("REQ", "COUNT"):
            await client.send([verb, "s" * 9, {"kinds": [1]}])
            assert await client.recv() == [
                "CLOSED", "s" * 9, "invalid: subscription id must have 1 to 8 characters"
            ]
        note = make_event()
        assert await client.publish(note) == ["OK", note.id, True, ""]


async def test_max_filter_values(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, max_filter_values=3)
    hexes = [f"{i:064x}" for i in range(4)]
    too_many: dict[str, list[Any]] = {
        "ids": hexes,
        "authors": hexes,
        "kinds": [1, 2, 3, 4],
        "#e": hexes,
        "#t": ["a", "b", "c", "d"],
    }
    async with connect(relay.port) as client:
        for field, values in too_many.items():
            assert await client.req("ok", {field: values[:3]}) == []
            await client.send(["REQ", "many", {field: values}])
            assert await client.recv() == [
                "CLOSED", "many", f"invalid: too many values in {field} (max 3)"
            ]


# -- events --------------------------------------------------------------------------------


async def test_max_event_tags(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, max_event_tags=5)
    five = make_event(tags=[["t", f"v{i}"] for i in range(5)])
    six = make_event(tags=[["t", f"v{i}"] for i in range(6)])
    async with connect(relay.port) as client:
        assert await client.publish(five) == ["OK", five.id, True, ""]
        assert await client.publish(six) == [
            "OK", six.id, False, "invalid: event has more than 5 tags"
        ]
    assert await stored_ids(relay.db_url) == [five.id]
    assert await tag_count(relay) == 5


async def test_max_tag_value_bytes(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, max_tag_value_bytes=64)
    fits = make_event(tags=[["t", "x" * 64], ["title", "y" * 500]])  # only 1-letter tags count
    too_long = make_event(tags=[["t", "x" * 65]])
    too_many_bytes = make_event(tags=[["e", "é" * 33]])  # 33 characters, 66 bytes
    async with connect(relay.port) as client:
        assert await client.publish(fits) == ["OK", fits.id, True, ""]
        for event in (too_long, too_many_bytes):
            assert await client.publish(event) == [
                "OK", event.id, False, "invalid: single-letter tag values are limited to 64 bytes"
            ]
    assert await stored_ids(relay.db_url) == [fits.id]


async def test_max_future_seconds(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, max_future_seconds=60)
    now = int(time.time())
    soon = make_event(created_at=now + 30)
    later = make_event(created_at=now + 120)
    async with connect(relay.port) as client:
        assert await client.publish(soon) == ["OK", soon.id, True, ""]
        assert await client.publish(later) == [
            "OK", later.id, False, "invalid: created_at is more than 60 seconds in the future"
        ]
    assert await stored_ids(relay.db_url) == [soon.id]


async def test_max_event_bytes(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, max_event_bytes=1024)
    exact = event_of_size(1024)
    over = event_of_size(1025)
    async with connect(relay.port) as client:
        assert await client.publish(exact) == ["OK", exact.id, True, ""]
        assert await client.publish(over) == [
            "OK", over.id, False, "invalid: event is larger than 1024 bytes"
        ]
    assert await stored_ids(relay.db_url) == [exact.id]


def event_frame_of_size(size: int) -> tuple[Event, str]:
    """An ["EVENT", …] text frame of exactly `size` bytes, and its event."""
    overhead = len(orjson.dumps(["EVENT", {}])) - len(b"{}")
    event = event_of_size(size - overhead)
    frame = orjson.dumps(["EVENT", event.to_dict()]).decode()
    assert len(frame.encode()) == size
    return event, frame


async def test_max_message_bytes(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, max_message_bytes=4096)
    fits, fits_frame = event_frame_of_size(4096)
    over, over_frame = event_frame_of_size(4097)
    async with connect(relay.port) as client:
        await client.send(fits_frame)
        assert await client.recv() == ["OK", fits.id, True, ""]
        await client.send(over_frame)
        assert await close_code_after(client) == 1009
    assert await stored_ids(relay.db_url) == [fits.id]
    # Only that connection was closed; the relay serves new ones.
    async with connect(relay.port) as client:
        note = make_event()
        assert await client.publish(note) == ["OK", note.id, True, ""]
    assert over.id not in await stored_ids(relay.db_url)


# -- NIP-11 --------------------------------------------------------------------------------

CONFIGURED = {
    "max_message_bytes": 8192,
    "max_event_bytes": 4096,
    "max_subscriptions": 3,
    "max_filters": 2,
    "max_limit": 50,
    "default_limit": 20,
    "max_event_tags": 5,
    "max_tag_value_bytes": 64,
    "max_subid_length": 8,
    "max_filter_values": 3,
    "max_future_seconds": 60,
    "max_outbound_bytes": 65536,
    "max_auth_keys": 2,
}


async def test_nip11_advertises_every_configured_limit(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, **CONFIGURED)
    status, _, body = await http_get(relay.port, "/", Accept="application/nostr+json")
    assert status == 200
    assert orjson.loads(body)["limitation"] == {
        "max_message_length": 8192,
        "max_subscriptions": 3,
        "max_limit": 50,
        "default_limit": 20,
        "max_subid_length": 8,
        "max_event_tags": 5,
        "created_at_upper_limit": 60,
        "auth_required": False,
        "payment_required": False,
        "restricted_writes": False,
        "max_event_bytes": 4096,
        "max_tag_value_bytes": 64,
        "max_filters": 2,
        "max_filter_values": 3,
        "max_outbound_bytes": 65536,
        "max_auth_keys": 2,
    }


# -- NIP-42 keys per connection ----------------------------------------------------------------


async def test_max_auth_keys(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> None:
    """Every key a connection authenticates is rate-limited on each of its later messages:
    50,000 of them made each message 50,000 checks. The keys are capped."""
    relay = await start_relay(nursery, db_url, tmp_path, max_auth_keys=2)
    url = f"ws://127.0.0.1:{relay.port}"
    first, second, third = new_key(), new_key(), new_key()
    async with connect(relay.port) as client:
        challenge = await client.wait_challenge()
        for key in (first, second, first):  # the same key again takes no new place
            auth = auth_event(key, challenge, url)
            assert await client.publish_auth(auth) == ["OK", auth.id, True, ""]
        refused = auth_event(third, challenge, url)
        assert await client.publish_auth(refused) == [
            "OK", refused.id, False,
            "blocked: too many keys authenticated on this connection (max 2)",
        ]  # fmt: skip
        # The keys that did authenticate still count: a protected event of `second` is taken.
        note = make_event(second, tags=[["-"]])
        assert await client.publish(note) == ["OK", note.id, True, ""]
        protected = make_event(third, tags=[["-"]])
        assert (await client.publish(protected))[2] is False


async def test_auth_is_rate_limited_like_req(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    relay = await start_relay(
        nursery, db_url, tmp_path,
        rate_limits=True, rate_limit_loopback=True, rate_reqs_per_second=0.01, rate_reqs_burst=2,
    )  # fmt: skip
    async with connect(relay.port) as client:
        challenge = await client.wait_challenge()
        answers = []
        for _ in range(3):
            auth = auth_event(new_key(), challenge, f"ws://127.0.0.1:{relay.port}")
            answers.append((await client.publish_auth(auth))[2:])
    assert answers[:2] == [[True, ""], [True, ""]]
    assert answers[2] == [False, "rate-limited: slow down, too many requests"]


# -- the slow consumer ---------------------------------------------------------------------

MAX_PUBLISHED = 2000
PUBLISH_TIMEOUT = 5.0
TOO_SLOW = "error: too slow"


def slow_consumer_dropped(caplog: pytest.LogCaptureFixture) -> bool:
    return any("slow consumer" in record.getMessage() for record in caplog.records)


async def publish_until_slow_consumer_dropped(
    pub: NostrClient, fast: NostrClient, caplog: pytest.LogCaptureFixture
) -> list[str]:
    """Publish ~1 KiB notes until the relay drops the stalled subscriber; their ids.

    The relay's log line is only the signal to stop publishing (so the stalled client can
    start reading within the relay's goodbye grace period); every assertion is on the wire.
    """
    published: list[str] = []
    while len(published) < MAX_PUBLISHED and not slow_consumer_dropped(caplog):
        await publish_and_follow(pub, fast, published)
    assert slow_consumer_dropped(caplog), f"no overflow after {len(published)} events"
    return published


async def publish_and_follow(pub: NostrClient, fast: NostrClient, published: list[str]) -> None:
    """One publish must get OK true promptly, and the reading subscriber must get the event."""
    event = make_event(kind=1, content="x" * 1024)
    with trio.fail_after(PUBLISH_TIMEOUT):
        assert await pub.publish(event) == ["OK", event.id, True, ""]
        frame = await fast.recv()
    assert frame[:2] == ["EVENT", "fast"] and frame[2]["id"] == event.id
    published.append(event.id)


async def drain(client: NostrClient) -> tuple[list[list[Any]], int]:
    """Every frame the client can still read, and the close code that ended them."""
    frames: list[list[Any]] = []
    with trio.fail_after(RECEIVE_TIMEOUT):
        while True:
            try:
                frames.append(orjson.loads(await client.ws.get_message()))
            except trio_websocket.ConnectionClosed as exc:
                assert exc.reason is not None
                return frames, int(exc.reason.code)


async def test_slow_consumer_is_dropped_without_slowing_anyone_else(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    relay = await start_relay(nursery, db_url, tmp_path, max_outbound_bytes=65536)
    async with (
        connect(relay.port) as slow,
        connect(relay.port) as fast,
        connect(relay.port) as pub,
    ):
        assert await slow.req("slow", {"kinds": [1]}, live=True) == []
        assert await fast.req("fast", {"kinds": [1]}, live=True) == []
        # From here on nobody reads `slow`: its socket buffers and then its outbox fill up.
        published = await publish_until_slow_consumer_dropped(pub, fast, caplog)
        # More than the outbox can hold went out before the relay gave up on `slow`.
        assert len(published) * 1024 > 65536
        frames, code = await drain(slow)
        # The publisher and the reading subscriber are unaffected after the drop too.
        for _ in range(5):
            await publish_and_follow(pub, fast, published)
        await fast.expect_nothing(0.1)

    # The stalled client got a prefix of the stream, then the reason, then close 1008.
    events = [f for f in frames if f[0] == "EVENT"]
    assert all(f[1] == "slow" for f in events)
    received = [f[2]["id"] for f in events]
    assert 0 < len(received) < len(published)
    assert received == published[: len(received)]
    assert frames[-1][0] == "NOTICE" and frames[-1][1].startswith(TOO_SLOW)
    assert frames[len(events):] == [frames[-1]]
    assert code == 1008
    assert sorted(await stored_ids(relay.db_url)) == sorted(published)


async def test_stalled_consumer_that_never_reads_again_is_still_closed(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No goodbye can reach a client that does not read; the connection is still ended."""
    caplog.set_level(logging.INFO, logger="relay")
    relay = await start_relay(nursery, db_url, tmp_path, max_outbound_bytes=65536)
    async with (
        connect(relay.port) as slow,
        connect(relay.port) as fast,
        connect(relay.port) as pub,
    ):
        assert await slow.req("slow", {"kinds": [1]}, live=True) == []
        assert await fast.req("fast", {"kinds": [1]}, live=True) == []
        published = await publish_until_slow_consumer_dropped(pub, fast, caplog)
        # Keep not reading past the relay's grace period, publishing all along.
        with trio.move_on_after(4.0):
            while len(published) < MAX_PUBLISHED:
                await publish_and_follow(pub, fast, published)
        frames, _ = await drain(slow)
    received = [f[2]["id"] for f in frames if f[0] == "EVENT"]
    assert len(received) < len(published)
    assert received == published[: len(received)]


# -- the ingest timeout ------------------------------------------------------------------------


def events_table_locked(db_url: str) -> AbstractAsyncContextManager[None]:
    """Another session holds an exclusive lock on `events`: Postgres answers no write to it
    until the block ends (a real stall, not a fake one)."""
    return transaction_held(db_url, ("LOCK TABLE events IN ACCESS EXCLUSIVE MODE", ()))


TIMED_OUT = "error: storing the event took too long, try again"


# kind 1 waits in the group commit, kind 0 (replaceable) is stored one at a time: both are
# bounded by RELAY_INGEST_TIMEOUT_SECONDS.
@pytest.mark.parametrize("kind", [1, 0])
async def test_an_event_not_stored_in_time_gets_ok_false(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, kind: int
) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, ingest_timeout_seconds=1)
    event = make_event(kind=kind)
    async with events_table_locked(db_url), connect(relay.port) as client:
        started = trio.current_time()
        assert await client.publish(event) == ["OK", event.id, False, TIMED_OUT]
        assert trio.current_time() - started >= 1
    # Postgres answers again: the relay serves as before, and the same event sent again is
    # stored (or was, once the lock went: then it is a duplicate).
    async with connect(relay.port) as client:
        answer = await client.publish(event)
        assert answer[:3] == ["OK", event.id, True]
    assert event.id in await stored_ids(relay.db_url)


# -- the query timeout -------------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["REQ", "COUNT"])
async def test_a_query_over_the_timeout_is_cancelled_and_closed(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, verb: str
) -> None:
    """A query that runs past RELAY_QUERY_TIMEOUT_SECONDS is cancelled on the server and
    the subscription closed. Here it waits for a real lock held by another session; an
    expensive filter ends the same way."""
    relay = await start_relay(nursery, db_url, tmp_path, query_timeout_seconds=0.5)
    async with events_table_locked(db_url), connect(relay.port) as client:
        await client.send([verb, "slow", {"kinds": [1]}])
        assert await client.recv() == ["CLOSED", "slow", "error: query too expensive"]
    # Nothing is left behind: the relay answers the same query once the lock is gone.
    async with connect(relay.port) as client:
        assert await client.req("fast", {"kinds": [1]}) == []
