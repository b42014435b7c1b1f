"""Invariant 1: the Host header picks the community, and nothing crosses between them."""

from __future__ import annotations

import trio

from tests.helpers import RelayUnderTest, connect, http_get, make_event, new_key, sql


async def test_events_and_subscriptions_never_cross_communities(relay: RelayUnderTest) -> None:
    key = new_key()
    event = make_event(key, kind=1)
    async with (
        connect(relay.port, "alpha.test") as alpha,
        connect(relay.port, "beta.test") as beta,
        connect(relay.port, "ALPHA.test.:8080") as alpha_again,
    ):
        await beta.req("live", {"kinds": [1]}, live=True)
        await alpha_again.req("live", {"kinds": [1]}, live=True)
        assert (await alpha.publish(event))[2] is True
        assert (await alpha_again.recv())[2]["id"] == event.id
        await beta.expect_nothing()
        assert await beta.req("s", {"ids": [event.id]}) == []
        # the same event is a new event in the other community
        await beta.send(["CLOSE", "live"])
        assert await beta.publish(event) == ["OK", event.id, True, ""]
        await beta.send(["COUNT", "c", {"ids": [event.id]}])
        assert await beta.recv() == ["COUNT", "c", {"count": 1}]
    rows = await sql(
        relay.db_url,
        "SELECT c.host FROM events e JOIN communities c ON c.id = e.community_id ORDER BY 1",
    )
    assert [r["host"] for r in rows] == ["alpha.test", "beta.test"]


async def test_deletion_in_one_community_leaves_the_other(relay: RelayUnderTest) -> None:
    key = new_key()
    event = make_event(key)
    async with connect(relay.port, "alpha.test") as alpha, connect(relay.port, "beta.test") as beta:
        await alpha.publish(event)
        await beta.publish(event)
        await alpha.publish(make_event(key, kind=5, tags=[["e", event.id]]))
        assert await alpha.req("s", {"ids": [event.id]}) == []
        assert len(await beta.req("s", {"ids": [event.id]})) == 1


async def test_unknown_or_missing_host_gets_404_and_no_upgrade(relay: RelayUnderTest) -> None:
    for host in ("unknown.test", "", "bad host", "a..b"):
        raw = (
            f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
        async with stream:
            await stream.send_all(raw.encode())
            data = b""
            with trio.fail_after(5):
                while chunk := await stream.receive_some(4096):
                    data += chunk
        assert data.startswith(b"HTTP/1.1 404"), (host, data[:40])
    status, _, _ = await http_get(relay.port, "/", "unknown.test", Accept="application/nostr+json")
    assert status == 404
