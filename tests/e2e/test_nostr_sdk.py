"""The relay driven by a client library nobody here wrote: rust-nostr's `nostr-sdk`."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import nostr_sdk as sdk
import trio

from tests.helpers import RelayUnderTest, sql


async def test_nostr_sdk_publishes_and_fetches(relay: RelayUnderTest) -> None:
    url = f"ws://127.0.0.1:{relay.port}"

    async def client_session() -> tuple[str, list[str], bool]:
        keys = sdk.Keys.generate()
        client = sdk.Client()
        await client.add_relay(sdk.RelayUrl.parse(url))
        await client.connect()
        note = sdk.EventBuilder(sdk.Kind(1), "hello from nostr-sdk").tags(
            [sdk.Tag.hashtag("relaytest")]
        ).finalize(keys)
        output = await client.send_event(note)
        accepted = url in [str(u).rstrip("/") for u in output.success]
        flt = sdk.Filter().author(keys.public_key()).hashtag("relaytest")
        fetched = await client.fetch_events(
            sdk.ReqTarget.auto([flt]), timedelta(seconds=5)
        )
        await client.shutdown()
        return note.id().to_hex(), [e.id().to_hex() for e in fetched], accepted

    event_id, fetched, accepted = await trio.to_thread.run_sync(asyncio.run, client_session())
    assert accepted
    assert fetched == [event_id]
    rows = await sql(relay.db_url, "SELECT encode(id, 'hex') AS id FROM events")
    assert [r["id"] for r in rows] == [event_id]
