"""NIP-09, NIP-11, NIP-40, NIP-42, NIP-45 and NIP-70 over real sockets."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import trio

from relay.server.nip11 import SOFTWARE_URL, SUPPORTED_NIPS
from tests.helpers import (
    RelayUnderTest,
    auth_event,
    connect,
    http_get,
    make_event,
    new_key,
    sql,
)
from tests.services import start_relay


async def test_nip11_document_with_cors(relay: RelayUnderTest) -> None:
    status, headers, body = await http_get(relay.port, "/", Accept="application/nostr+json")
    assert status == 200
    assert headers["content-type"] == "application/nostr+json"
    assert headers["access-control-allow-origin"] == "*"
    doc = orjson.loads(body)
    assert doc["supported_nips"] == list(SUPPORTED_NIPS)
    assert doc["supported_grasps"] == ["GRASP-01"]
    criteria = doc["repo_acceptance_criteria"]
    assert "30617" in criteria and "clone" in criteria and "/<npub>/<repo>.git" in criteria
    assert doc["software"] == SOFTWARE_URL and SOFTWARE_URL.startswith("https://")
    assert len(doc["self"]) == 64
    for key in ("name", "description", "pubkey", "version"):
        assert doc[key]
    assert doc["limitation"]["max_message_length"] == 128 * 1024
    assert doc["limitation"]["max_limit"] == 500


async def test_nip11_acceptance_criteria_follow_the_provisioning_setting(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, git_provision="any")
    _, _, body = await http_get(relay.port, "/", Accept="application/nostr+json")
    criteria = orjson.loads(body)["repo_acceptance_criteria"]
    assert "every valid kind 30617" in criteria and "clone tag" not in criteria


async def test_plain_get_and_unknown_paths_are_404(relay: RelayUnderTest) -> None:
    assert (await http_get(relay.port, "/"))[0] == 404
    assert (await http_get(relay.port, "/nope", Accept="application/nostr+json"))[0] == 404
    assert (await http_get(relay.port, "/healthz"))[0] == 200
    status, _, body = await http_get(relay.port, "/readyz")
    assert status == 200 and orjson.loads(body)["ready"] is True


async def test_deletion_by_e_tag_removes_and_blocks_resubmission(relay: RelayUnderTest) -> None:
    key = new_key()
    note = make_event(key)
    other = make_event()
    async with connect(relay.port) as client:
        await client.publish(note)
        await client.publish(other)
        deletion = make_event(key, kind=5, tags=[["e", note.id], ["e", other.id]])
        assert (await client.publish(deletion))[2] is True
        assert await client.req("s", {"ids": [note.id]}) == []
        # someone else's event is untouched
        assert len(await client.req("s2", {"ids": [other.id]})) == 1
        assert await client.publish(note) == [
            "OK", note.id, False, "blocked: this event was deleted by its author"
        ]
        # the deletion request itself is served
        assert [e["id"] for e in await client.req("s3", {"kinds": [5]})] == [deletion.id]


async def test_deletion_by_a_tag_up_to_its_created_at(relay: RelayUnderTest) -> None:
    key = new_key()
    now = int(time.time())
    pub = make_event(key).pubkey
    old = make_event(key, kind=30023, tags=[["d", "post"]], created_at=now - 100)
    async with connect(relay.port) as client:
        await client.publish(old)
        deletion = make_event(
            key, kind=5, tags=[["a", f"30023:{pub}:post"]], created_at=now - 50
        )
        assert (await client.publish(deletion))[2] is True
        assert await client.req("s", {"kinds": [30023]}) == []
        again = make_event(key, kind=30023, tags=[["d", "post"]], created_at=now - 60)
        assert (await client.publish(again))[2] is False
        newer = make_event(key, kind=30023, tags=[["d", "post"]], created_at=now)
        assert (await client.publish(newer))[2] is True
        assert [e["id"] for e in await client.req("s2", {"kinds": [30023]})] == [newer.id]


async def test_expired_events_are_not_served_and_are_purged(
    nursery: trio.Nursery, db_url: str, tmp_path: object
) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, expiration_purge_seconds=0.2)
    soon = str(int(time.time()) + 2)
    event = make_event(tags=[["expiration", soon]])
    async with connect(relay.port) as client:
        assert (await client.publish(event))[2] is True
        assert len(await client.req("s", {"ids": [event.id]})) == 1
        await trio.sleep(2.5)
        assert await client.req("s2", {"ids": [event.id]}) == []
    with trio.fail_after(5):
        while (await sql(db_url, "SELECT count(*) AS n FROM events"))[0]["n"]:
            await trio.sleep(0.1)


async def test_auth_accepts_matching_challenge_and_host(relay: RelayUnderTest) -> None:
    key = new_key()
    async with connect(relay.port, "alpha.test") as client:
        challenge = await client.wait_challenge()
        bad_host = auth_event(key, challenge, "wss://beta.test/")
        assert (await client.publish_auth(bad_host))[2:] == [
            False, "invalid: AUTH relay tag does not name this relay"
        ]
        wrong = auth_event(key, "nope", "wss://alpha.test/")
        assert (await client.publish_auth(wrong))[2:] == [
            False, "invalid: AUTH challenge does not match"
        ]
        stale = auth_event(key, challenge, "wss://alpha.test/", int(time.time()) - 700)
        assert (await client.publish_auth(stale))[2] is False
        good = auth_event(key, challenge, "wss://alpha.test/")
        assert await client.publish_auth(good) == ["OK", good.id, True, ""]
    rows = await sql(relay.db_url, "SELECT count(*) AS n FROM events")
    assert rows[0]["n"] == 0


async def test_protected_event_needs_its_author_authenticated(relay: RelayUnderTest) -> None:
    author, stranger = new_key(), new_key()
    event = make_event(author, tags=[["-"]])
    async with connect(relay.port) as client:
        challenge = await client.wait_challenge()
        assert (await client.publish(event))[3].startswith("auth-required:")
        url = f"ws://127.0.0.1:{relay.port}"
        assert (await client.publish_auth(auth_event(stranger, challenge, url)))[2] is True
        assert (await client.publish(event))[3].startswith("blocked:")
        assert (await client.publish_auth(auth_event(author, challenge, url)))[2] is True
        assert (await client.publish(event))[2] is True


async def test_count(relay: RelayUnderTest) -> None:
    key = new_key()
    async with connect(relay.port) as client:
        for i in range(3):
            await client.publish(make_event(key, tags=[["t", str(i % 2)]]))
        await client.send(["COUNT", "c", {"authors": [make_event(key).pubkey]}])
        assert await client.recv() == ["COUNT", "c", {"count": 3}]
        await client.send(["COUNT", "c", {"#t": ["0"]}, {"#t": ["1"]}, {"kinds": [1]}])
        assert await client.recv() == ["COUNT", "c", {"count": 3}]
        await client.send(["COUNT", "c", {"#t": ["0"]}])
        assert await client.recv() == ["COUNT", "c", {"count": 2}]
