"""NIP-86 relay management over real HTTP, authorized with real NIP-98 tokens: every
method, its effects on ingest (websocket), on NIP-11 and on client addresses, across pods
(shared Postgres, with and without Redis) and across a restart."""

from __future__ import annotations

import base64
import logging
import time
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from coincurve import PrivateKey

from relay.keys import pubkey_hex
from tests.helpers import (
    community_of,
    connect,
    http_get,
    make_event,
    new_key,
    relay_process,
    sql,
)
from tests.nip86 import ADMIN, RPC, post, rpc, rpc_raw, token
from tests.pods import new_secret, pod_env, unique_prefix
from tests.redis_server import RedisServer
from tests.services import free_port, start_relay


async def nip11(port: int, host: str = "127.0.0.1", **headers: str) -> tuple[int, bytes]:
    status, _, body = await http_get(port, "/", host, Accept="application/nostr+json", **headers)
    return status, body


async def stored_by(port: int, pubkey: str, host: str = "127.0.0.1") -> list[dict[str, Any]]:
    async with connect(port, host) as client:
        return await client.req("q", {"authors": [pubkey]})


async def test_every_method_answers_and_is_logged(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay.server.management")
    relay = await start_relay(nursery, db_url, tmp_path, admin_pubkeys=frozenset({ADMIN_HEX}))
    port = relay.port
    methods = await rpc(port, "supportedmethods")
    assert {"banpubkey", "listbannedpubkeys", "allowpubkey", "listallowedpubkeys", "banevent",
            "allowevent", "listbannedevents", "changerelayname", "changerelaydescription",
            "blockip", "unblockip", "listblockedips"} <= set(methods)  # fmt: skip
    someone, event_id = pubkey_hex(new_key()), "ab" * 32
    assert await rpc(port, "banpubkey", someone, "spam") is True
    assert await rpc(port, "listbannedpubkeys") == [{"pubkey": someone, "reason": "spam"}]
    assert await rpc(port, "unbanpubkey", someone) is True
    assert await rpc(port, "listbannedpubkeys") == []
    assert await rpc(port, "allowpubkey", someone, "friend") is True
    assert await rpc(port, "listallowedpubkeys") == [{"pubkey": someone, "reason": "friend"}]
    assert await rpc(port, "unallowpubkey", someone) is True
    assert await rpc(port, "banevent", event_id, "nope") is True
    assert await rpc(port, "listbannedevents") == [{"id": event_id, "reason": "nope"}]
    assert await rpc(port, "allowevent", event_id) is True
    assert await rpc(port, "listbannedevents") == []
    assert await rpc(port, "blockip", "203.0.113.9", "abuse") is True
    assert await rpc(port, "listblockedips") == [{"ip": "203.0.113.9", "reason": "abuse"}]
    assert await rpc(port, "unblockip", "203.0.113.9") is True
    assert await rpc(port, "listblockedips") == []

    assert await rpc(port, "changerelayname", "Moderated") is True
    assert await rpc(port, "changerelaydescription", "kept tidy") is True
    doc = orjson.loads((await nip11(port))[1])
    assert (doc["name"], doc["description"]) == ("Moderated", "kept tidy")
    other = orjson.loads((await nip11(port, "alpha.test"))[1])  # another community
    assert other["name"] == relay.settings.name

    status, answer = await rpc_raw(port, "createrole", ["x"])
    assert status == 200 and "unsupported method" in answer["error"]
    status, answer = await rpc_raw(port, "banpubkey", ["not hex"])
    assert status == 200 and answer["error"] and answer["result"] is None
    assert f"management: banpubkey by {ADMIN_HEX}" in caplog.text
    assert someone in caplog.text


ADMIN_HEX = pubkey_hex(ADMIN)


async def test_authorization_is_checked(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> None:
    relay = await start_relay(
        nursery, db_url, tmp_path, admin_pubkeys=frozenset({ADMIN_HEX}),
        hosts=("127.0.0.1|localhost", "alpha.test"),
    )  # fmt: skip
    port = relay.port
    body = orjson.dumps({"method": "supportedmethods", "params": []})
    status, head, _ = await post(port, body, Content_Type=RPC)
    assert status == 401 and head["www-authenticate"].startswith("Nostr")
    status, answer = await rpc_raw(port, "supportedmethods", payload="00" * 32)
    assert status == 401 and "payload" in answer["error"]
    status, answer = await rpc_raw(port, "supportedmethods", key=new_key())
    assert status == 403, answer
    # A token for another community's host is not for this one.
    bad = token(ADMIN, f"http://alpha.test:{port}/", body)
    status, _, _ = await post(port, body, Content_Type=RPC, Authorization=bad)
    assert status == 401

    # A community's own admin (a row in community_admins) administers that community only.
    local = new_key()
    cid = await community_of(db_url, "127.0.0.1")
    await sql(db_url, "INSERT INTO community_admins VALUES ($1, $2)", cid, pubkey_hex(local))
    assert "banpubkey" in await rpc(port, "supportedmethods", key=local)
    status, _ = await rpc_raw(port, "supportedmethods", key=local, host="alpha.test")
    assert status == 403
    # The token may name the community by any of its names.
    body = orjson.dumps({"method": "supportedmethods", "params": []})
    aliased = token(local, f"http://localhost:{port}/", body)
    status, _, _ = await post(port, body, Content_Type=RPC, Authorization=aliased)
    assert status == 200


async def test_a_banned_pubkey_is_refused_and_its_events_deleted(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, admin_pubkeys=frozenset({ADMIN_HEX}))
    port, key = relay.port, new_key()
    pubkey = pubkey_hex(key)
    async with connect(port) as client, connect(port, "alpha.test") as elsewhere:
        before = [make_event(key) for _ in range(3)]
        for event in before:
            assert (await client.publish(event))[2] is True
        assert (await elsewhere.publish(make_event(key)))[2] is True
        # A ban without the third parameter keeps what is stored.
        assert await rpc(port, "banpubkey", pubkey, "spam") is True
        refused = await client.publish(make_event(key))
        assert refused[2] is False and refused[3].startswith("blocked:"), refused
        assert len(await stored_by(port, pubkey)) == 3
        # With `true` as third parameter, its stored events are deleted too.
        assert await rpc(port, "banpubkey", pubkey, "spam", True) is True
        assert await stored_by(port, pubkey) == []
        # Another community is untouched.
        assert (await elsewhere.publish(make_event(key)))[2] is True
        assert len(await stored_by(port, pubkey, "alpha.test")) == 2
        assert await rpc(port, "unbanpubkey", pubkey) is True
        assert (await client.publish(make_event(key)))[2] is True


async def test_a_banned_event_is_deleted_and_refused(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, admin_pubkeys=frozenset({ADMIN_HEX}))
    port, key = relay.port, new_key()
    event = make_event(key)
    async with connect(port) as client:
        assert (await client.publish(event))[2] is True
        assert await rpc(port, "banevent", event.id, "off-topic") is True
        assert await client.req("q", {"ids": [event.id]}) == []
        answer = await client.publish(event)
        assert answer[2] is False and answer[3].startswith("blocked:"), answer
        assert await rpc(port, "allowevent", event.id) is True
        assert (await client.publish(event))[2] is True


async def test_an_allow_list_admits_only_its_pubkeys(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, admin_pubkeys=frozenset({ADMIN_HEX}))
    port, member, stranger = relay.port, new_key(), new_key()
    async with connect(port) as client:
        assert (await client.publish(make_event(stranger)))[2] is True
        assert await rpc(port, "allowpubkey", pubkey_hex(member)) is True
        assert (await client.publish(make_event(member)))[2] is True
        answer = await client.publish(make_event(stranger))
        assert answer[2] is False and answer[3].startswith("blocked:"), answer
        async with connect(port, "alpha.test") as elsewhere:
            assert (await elsewhere.publish(make_event(stranger)))[2] is True
        assert await rpc(port, "unallowpubkey", pubkey_hex(member)) is True
        assert (await client.publish(make_event(stranger)))[2] is True


async def test_a_blocked_address_gets_403(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    relay = await start_relay(
        nursery, db_url, tmp_path, admin_pubkeys=frozenset({ADMIN_HEX}),
        trusted_proxies=(ip_network("127.0.0.0/8"),),
    )  # fmt: skip
    port, blocked = relay.port, {"X_Forwarded_For": "203.0.113.7"}
    assert (await nip11(port, **blocked))[0] == 200
    assert await rpc(port, "blockip", "203.0.113.7", "abuse") is True
    assert (await nip11(port, **blocked))[0] == 403
    upgrade = {
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
    }  # fmt: skip
    assert (await http_get(port, "/", **upgrade, **blocked))[0] == 403
    body = orjson.dumps({"method": "unblockip", "params": ["203.0.113.7"]})
    auth = token(ADMIN, f"http://127.0.0.1:{port}/", body)
    status, _, _ = await post(port, body, Content_Type=RPC, Authorization=auth, **blocked)
    assert status == 403  # the management endpoint too
    # Other addresses, and the same address on another community, are served.
    assert (await nip11(port, X_Forwarded_For="203.0.113.8"))[0] == 200
    assert (await nip11(port, "alpha.test", **blocked))[0] == 200
    assert await rpc(port, "unblockip", "203.0.113.7") is True
    assert (await nip11(port, **blocked))[0] == 200


async def refused_within(port: int, key: PrivateKey, seconds: float) -> float:
    """Publish until the relay refuses `key`'s events; how long it took."""
    started = trio.current_time()
    async with connect(port) as client:
        with trio.fail_after(seconds):
            while True:
                answer = await client.publish(make_event(key))
                if answer[2] is False:
                    assert answer[3].startswith("blocked:"), answer
                    return trio.current_time() - started
                await trio.sleep(0.02)


@pytest.mark.parametrize("with_redis", [True, False], ids=["redis", "postgres-polling"])
async def test_a_ban_on_one_pod_holds_on_the_other_within_a_second(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, redis: RedisServer, with_redis: bool
) -> None:
    common: dict[str, Any] = {"admin_pubkeys": frozenset({ADMIN_HEX})}
    if with_redis:
        common.update(secret_key=new_secret(), redis_url=redis.url, redis_prefix=unique_prefix())
    a = await start_relay(nursery, db_url, tmp_path / "a", **common)
    b = await start_relay(nursery, db_url, tmp_path / "b", **common)
    # Wait until B follows A's changes at all (its subscription is up).
    await rpc(a.port, "changerelayname", "pods")
    with trio.fail_after(10):
        while orjson.loads((await nip11(b.port))[1])["name"] != "pods":
            await trio.sleep(0.05)
    key = new_key()
    assert (await connect_publish(b.port, key))[2] is True
    await rpc(a.port, "banpubkey", pubkey_hex(key))
    assert await refused_within(b.port, key, 1.0) < 1.0


async def test_a_ban_through_a_pod_process_holds_on_the_other_pod(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, redis: RedisServer
) -> None:
    """Pod B is `relay serve` configured only through RELAY_* (RELAY_ADMIN_PUBKEYS included);
    the ban made through B holds on pod A within a second."""
    secret, prefix = new_secret(), unique_prefix()
    a = await start_relay(
        nursery, db_url, tmp_path / "a", secret_key=secret, redis_url=redis.url,
        redis_prefix=prefix, admin_pubkeys=frozenset({ADMIN_HEX}),
    )  # fmt: skip
    b_port = free_port()
    env = pod_env(
        db_url, tmp_path / "b", secret=secret, redis_url=redis.url, prefix=prefix,
        RELAY_ADMIN_PUBKEYS=f"{pubkey_hex(new_key())}, {ADMIN_HEX}",
    )  # fmt: skip
    async with relay_process(env, b_port, tmp_path / "relay-b.log"):
        with trio.fail_after(10):
            while True:  # until A follows B's changes (A's subscription is up)
                await rpc(b_port, "changerelaydescription", f"probe {time.monotonic()}")
                await trio.sleep(0.2)
                doc = orjson.loads((await nip11(a.port))[1])
                if doc["description"].startswith("probe"):
                    break
        key = new_key()
        before = make_event(key)
        async with connect(a.port) as client:
            assert (await client.publish(before))[2] is True
        await rpc(b_port, "banpubkey", pubkey_hex(key), "spam", True)
        assert await refused_within(a.port, key, 1.0) < 1.0
        assert before.id not in {e["id"] for e in await stored_by(a.port, pubkey_hex(key))}
        # What A accepted while the ban was on its way is deleted again shortly after.
        with trio.fail_after(5):
            while await stored_by(a.port, pubkey_hex(key)):
                await trio.sleep(0.2)


async def connect_publish(port: int, key: PrivateKey) -> list[Any]:
    async with connect(port) as client:
        return await client.publish(make_event(key))


async def test_bans_survive_a_restart(db_url: str, tmp_path: Path) -> None:
    key = new_key()
    settings: dict[str, Any] = {"admin_pubkeys": frozenset({ADMIN_HEX})}
    async with trio.open_nursery() as first:
        relay = await start_relay(first, db_url, tmp_path / "first", **settings)
        await rpc(relay.port, "banpubkey", pubkey_hex(key), "spam")
        await rpc(relay.port, "blockip", "203.0.113.7")
        await rpc(relay.port, "changerelayname", "kept")
        first.cancel_scope.cancel()
    async with trio.open_nursery() as second:
        relay = await start_relay(second, db_url, tmp_path / "second", **settings)
        answer = await connect_publish(relay.port, key)
        assert answer[2] is False and answer[3].startswith("blocked:"), answer
        assert await rpc(relay.port, "listblockedips") == [{"ip": "203.0.113.7", "reason": ""}]
        assert orjson.loads((await nip11(relay.port))[1])["name"] == "kept"
        second.cancel_scope.cancel()
