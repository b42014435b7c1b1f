"""NIP-77 over real websockets: a client reconciles its set with the relay's in a few round
trips (with our own negentropy client and with rust-nostr's), within the limits."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import nostr_sdk as sdk
import orjson
import trio

from relay.events import kinds
from relay.events.model import Event, parse_event
from relay.protocol.negentropy import Negentropy, Storage
from tests.helpers import NostrClient, connect, make_event, new_key
from tests.services import start_relay

FILTER = {"kinds": [1]}


def items(events: list[Event]) -> list[tuple[int, bytes]]:
    return sorted((e.created_at, bytes.fromhex(e.id)) for e in events)


async def reconcile(
    client: NostrClient, mine: list[Event], flt: dict[str, Any], sub: str = "neg"
) -> tuple[set[str], set[str], int]:
    """Run NIP-77 as the client holding `mine`: (ids I have the relay lacks, ids the relay
    has I lack, round trips)."""
    neg = Negentropy(Storage(items(mine)))
    await client.send(["NEG-OPEN", sub, flt, neg.initiate().hex()])
    have: set[str] = set()
    need: set[str] = set()
    trips = 0
    while True:
        frame = await client.recv()
        assert frame[0] == "NEG-MSG" and frame[1] == sub, frame
        trips += 1
        reply, got_have, got_need = neg.reconcile_client(bytes.fromhex(frame[2]))
        have |= {i.hex() for i in got_have}
        need |= {i.hex() for i in got_need}
        if reply is None:
            await client.send(["NEG-CLOSE", sub])
            return have, need, trips
        await client.send(["NEG-MSG", sub, reply.hex()])


async def test_a_client_learns_what_it_lacks_and_what_the_relay_lacks(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, db_url, tmp_path)
    key = new_key()
    base = 1_700_000_000
    shared = [make_event(key, created_at=base + i % 50) for i in range(400)]  # ties too
    only_relay = [make_event(key, created_at=base + i) for i in range(60)]
    only_client = [make_event(key, created_at=base + i) for i in range(25)]
    other_kind = [make_event(key, kind=7, created_at=base) for _ in range(10)]
    async with connect(relay.port) as client:
        await client.publish_many(shared + only_relay + other_kind)
        # Deleted events are not in the relay's set.
        gone = shared[0]
        deletion = make_event(key, kind=kinds.DELETION, content="", tags=[["e", gone.id]])
        assert (await client.publish(deletion))[2] is True
        have, need, trips = await reconcile(client, shared + only_client, FILTER)
    assert need == {e.id for e in only_relay}
    assert have == {e.id for e in only_client} | {gone.id}
    assert trips <= 4
    # Another community's events are never in this community's set.
    async with connect(relay.port, "alpha.test") as elsewhere:
        have, need, _ = await reconcile(elsewhere, only_client, FILTER)
    assert need == set() and have == {e.id for e in only_client}


async def test_limits_and_errors(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> None:
    relay = await start_relay(
        nursery, db_url, tmp_path, max_neg_records=100, max_neg_sessions=2, neg_idle_seconds=1
    )
    key = new_key()
    async with connect(relay.port) as client:
        await client.publish_many([make_event(key) for _ in range(101)])
        empty = Negentropy(Storage([])).initiate().hex()
        await client.send(["NEG-OPEN", "big", FILTER, empty])
        frame = await client.recv()
        assert frame[:2] == ["NEG-ERR", "big"] and frame[3] == 100, frame
        assert frame[2].startswith("blocked: too many records"), frame
        # A narrower filter is within the limit.
        await client.send(["NEG-OPEN", "a", {"kinds": [1], "limit": 1, "until": 1}, empty])
        assert (await client.recv())[:2] == ["NEG-MSG", "a"]
        await client.send(["NEG-OPEN", "b", {"kinds": [9]}, empty])
        assert (await client.recv())[:2] == ["NEG-MSG", "b"]
        await client.send(["NEG-OPEN", "c", {"kinds": [9]}, empty])
        frame = await client.recv()
        assert frame[:2] == ["NEG-ERR", "c"] and "too many negentropy sessions" in frame[2]
        # Reopening an id replaces it; closing frees a place.
        await client.send(["NEG-OPEN", "b", {"kinds": [9]}, empty])
        assert (await client.recv())[:2] == ["NEG-MSG", "b"]
        await client.send(["NEG-CLOSE", "a"])
        await client.send(["NEG-OPEN", "c", {"kinds": [9]}, empty])
        assert (await client.recv())[:2] == ["NEG-MSG", "c"]
        # Malformed messages get NEG-ERR naming the problem.
        await client.send(["NEG-OPEN", "d", FILTER, "zz"])
        bad_hex = ["NEG-ERR", "d", "invalid: the negentropy message must be hex"]
        assert (await client.recv())[:3] == bad_hex
        await client.send(["NEG-MSG", "b", "61ff"])
        frame = await client.recv()
        assert frame[:2] == ["NEG-ERR", "b"] and frame[2].startswith("invalid: "), frame
        await client.send(["NEG-OPEN", "e", {"kinds": "x"}, empty])
        frame = await client.recv()
        assert frame[:2] == ["NEG-ERR", "e"] and frame[2].startswith("invalid: "), frame
        # Idle past the limit: closed.
        await trio.sleep(1.2)
        await client.send(["NEG-MSG", "c", empty])
        frame = await client.recv()
        assert frame[:2] == ["NEG-ERR", "c"] and frame[2].startswith("closed: "), frame


async def test_rust_nostr_syncs_against_the_relay(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """A client holding 10,000 of the relay's 11,000 events (and 500 of its own) learns
    exactly the 1,000 it lacks and the 500 the relay lacks, and downloads the 1,000."""
    relay = await start_relay(nursery, db_url, tmp_path)
    url = f"ws://127.0.0.1:{relay.port}"
    keys = sdk.Keys.generate()
    base = 1_700_000_000

    def signed(i: int, text: str) -> sdk.Event:
        builder = sdk.EventBuilder(sdk.Kind(1), f"{text} {i}")
        return builder.custom_created_at(sdk.Timestamp.from_secs(base + i)).finalize(keys)

    on_relay = [signed(i, "both") for i in range(11_000)]
    own = [signed(i, "mine") for i in range(500)]
    async with connect(relay.port) as client:
        await client.publish_many([_event(e) for e in on_relay], window=500)

    async def session() -> Any:
        """The client's own set given as negentropy items (rust-nostr's default client
        database only tracks ids; an on-disk one needs an asyncio loop in its callbacks)."""
        sdk_client = sdk.Client()
        await sdk_client.add_relay(sdk.RelayUrl.parse(url))
        await sdk_client.connect()
        relay_handle = await sdk_client.relay(sdk.RelayUrl.parse(url))
        assert relay_handle is not None
        mine = [sdk.NegentropyItem(id=e.id(), timestamp=e.created_at()) for e in held]
        flt = sdk.Filter().author(keys.public_key()).kind(sdk.Kind(1))
        opts = sdk.SyncOptions().direction(sdk.SyncDirection.DOWN).initial_timeout(
            timedelta(seconds=30)
        )
        summary = await relay_handle.sync(flt, mine, opts)
        await sdk_client.shutdown()
        return summary

    held = on_relay[:10_000] + own
    summary = await trio.to_thread.run_sync(asyncio.run, session())
    lacking = {e.id().to_hex() for e in on_relay[10_000:]}
    assert {i.to_hex() for i in summary.remote} == lacking
    assert {i.to_hex() for i in summary.local} == {e.id().to_hex() for e in own}
    assert {i.to_hex() for i in summary.received} == lacking  # and downloaded them


def _event(event: sdk.Event) -> Event:
    return parse_event(orjson.loads(event.as_json()))
