"""Members-only communities (NIP-43, NIP-42) over real sockets: two communities on one relay,
`alpha.test` public and `beta.test` members-only. A non-member reads and writes nothing there
(every message type), a member joins with an invite, reads and writes, is removed and loses
a live subscription; invites run out and expire; the relay's 13534 list follows the members
table; git needs a member's token; the public community is untouched."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import trio
import trio_asyncio
from coincurve import PrivateKey

from relay.admin import shell_moderation
from relay.keys import pubkey_hex
from relay.protocol import access
from relay.protocol.bech32 import hex_to_npub
from relay.server.membership import Membership
from relay.store.db import Database
from tests.git.gitclient import Git
from tests.git.hosting import hosted_relay
from tests.helpers import (
    RELAY_CLI,
    NostrClient,
    RelayUnderTest,
    announcement,
    auth_event,
    clean_environ,
    community_of,
    connect,
    http_get,
    make_event,
    new_key,
    relay_process,
    sql,
)
from tests.nip86 import ADMIN, rpc, rpc_raw
from tests.pods import new_secret, pod_env, unique_prefix
from tests.redis_server import RedisServer
from tests.services import free_port, start_relay

ADMIN_HEX = pubkey_hex(ADMIN)

PUBLIC, PRIVATE = "alpha.test", "beta.test"
REMOVAL_SECONDS = 1.5  # "within a second", and the reload's own time


@asynccontextmanager
async def operator(relay: RelayUnderTest) -> AsyncIterator[tuple[Membership, int]]:
    """Membership changes as the operator makes them from the shell (`relay member`, in
    this process): Postgres first, and the running relay applies them at its next reload,
    within a second, as another pod's change. `beta.test` is made members-only."""
    cid = await community_of(relay.db_url, PRIVATE)
    async with trio_asyncio.open_loop():
        db = await Database.connect(relay.db_url, max_size=2)
        try:
            async with shell_moderation(relay.settings, db) as moderation:
                membership = moderation.membership
                assert membership is not None
                await membership.set_access(cid, access.MEMBERS)
                await until_nip11_says_members_only(relay.port)
                yield membership, cid
        finally:
            await db.close()


async def until_nip11_says_members_only(port: int) -> None:
    with trio.fail_after(REMOVAL_SECONDS + 2):
        while True:
            _, _, body = await http_get(port, "/", host=PRIVATE, Accept="application/nostr+json")
            if orjson.loads(body)["limitation"]["auth_required"]:
                return
            await trio.sleep(0.05)


async def member_until_admitted(port: int, key: PrivateKey, host: str = PRIVATE) -> None:
    """Wait until the relay has applied `key`'s membership (its reload)."""
    with trio.fail_after(REMOVAL_SECONDS + 2):
        while True:
            async with signed_in(port, key, host) as client:
                await client.send(["COUNT", "c", {"kinds": [1]}])
                if (await client.recv())[0] == "COUNT":
                    return
            await trio.sleep(0.05)


@asynccontextmanager
async def signed_in(
    port: int, key: PrivateKey | None, host: str = PRIVATE
) -> AsyncIterator[NostrClient]:
    """A connection to `host`, AUTHed as `key` (None: not at all)."""
    async with connect(port, host) as client:
        if key is not None:
            challenge = await client.wait_challenge()
            answer = await client.publish_auth(auth_event(key, challenge, f"ws://{host}/"))
            assert answer[2] is True, answer
        yield client


def join_request(key: PrivateKey, code: str, created_at: int | None = None) -> Any:
    return make_event(key, kind=access.JOIN_REQUEST, content="",
                      tags=[["-"], ["claim", code]], created_at=created_at)  # fmt: skip


async def membership_list(db_url: str, cid: int, relay_pubkey: str) -> list[str]:
    """The member tags of the relay's stored kind 13534 in the community."""
    rows = await sql(
        db_url,
        "SELECT raw FROM events WHERE community_id = $1 AND kind = $2 AND pubkey = $3",
        cid, access.MEMBERSHIP_LIST, bytes.fromhex(relay_pubkey),
    )  # fmt: skip
    assert len(rows) == 1, rows
    event = orjson.loads(rows[0]["raw"])
    assert ["-"] in event["tags"]
    return sorted(t[1] for t in event["tags"] if t[0] == "member")


async def table(db_url: str, cid: int) -> list[str]:
    rows = await sql(db_url, "SELECT pubkey FROM community_members WHERE community_id = $1", cid)
    return sorted(r["pubkey"] for r in rows)


async def test_a_non_member_reads_and_writes_nothing(relay: RelayUnderTest) -> None:
    async with operator(relay) as (membership, cid):
        member, stranger = new_key(), new_key()
        await membership.add(cid, pubkey_hex(member))
        await member_until_admitted(relay.port, member)
    note = make_event(member, content="for members")
    async with signed_in(relay.port, member) as client:
        assert (await client.publish(note))[2] is True
        assert [e["id"] for e in await client.req("m", {"ids": [note.id]})] == [note.id]

    for key, prefix in ((None, "auth-required:"), (stranger, "restricted:")):
        async with signed_in(relay.port, key) as client:
            await client.send(["REQ", "r", {"kinds": [1]}])
            closed = await client.recv()
            assert closed[:2] == ["CLOSED", "r"] and closed[2].startswith(prefix), closed
            await client.send(["COUNT", "c", {"kinds": [1]}])
            closed = await client.recv()
            assert closed[:2] == ["CLOSED", "c"] and closed[2].startswith(prefix), closed
            await client.send(["NEG-OPEN", "n", {"kinds": [1]}, "6100000200"])
            refused = await client.recv()
            assert refused[:2] == ["NEG-ERR", "n"] and refused[2].startswith(prefix), refused
            mine = make_event(key or new_key())
            answer = await client.publish(mine)
            assert answer[2] is False and answer[3].startswith(prefix), answer
            ephemeral = make_event(key or new_key(), kind=20001)
            answer = await client.publish(ephemeral)
            assert answer[2] is False and answer[3].startswith(prefix), answer
    stored = await sql(relay.db_url, "SELECT count(*) AS n FROM events WHERE community_id = $1"
                       " AND kind = 1", cid)  # fmt: skip
    assert stored[0]["n"] == 1  # only the member's note

    # The public community of the same relay is untouched: no AUTH needed.
    async with connect(relay.port, PUBLIC) as client:
        assert (await client.publish(make_event(stranger)))[2] is True
        assert len(await client.req("p", {"kinds": [1]})) == 1

    # NIP-11 says so, for the members-only community only.
    _, _, body = await http_get(relay.port, "/", host=PRIVATE, Accept="application/nostr+json")
    doc = orjson.loads(body)
    assert doc["limitation"]["auth_required"] is True
    assert doc["limitation"]["restricted_writes"] is True
    assert 43 in doc["supported_nips"]
    _, _, body = await http_get(relay.port, "/", host=PUBLIC, Accept="application/nostr+json")
    doc = orjson.loads(body)
    assert doc["limitation"]["auth_required"] is False and 43 not in doc["supported_nips"]


async def test_a_member_joins_with_an_invite_and_loses_access_when_removed(
    relay: RelayUnderTest,
) -> None:
    async with operator(relay) as (membership, cid):
        await in_relay_context(relay, membership, cid)


async def in_relay_context(relay: RelayUnderTest, membership: Membership, cid: int) -> None:
    relay_pubkey = relay.app.pubkey
    joiner, friend = new_key(), new_key()
    invite = await membership.invite(cid, 1, int(time.time()) + 3600)
    async with signed_in(relay.port, joiner) as client:
        # Before joining: restricted.
        answer = await client.publish(make_event(joiner))
        assert answer[3].startswith("restricted:"), answer
        # A join request needs its author's AUTH, the '-' tag and a recent created_at.
        stale = join_request(joiner, invite.code, int(time.time()) - 3600)
        answer = await client.publish(stale)
        assert answer[2] is False and answer[3].startswith("invalid:"), answer
        answer = await client.publish(join_request(joiner, "not-a-code"))
        assert answer[2:] == [False, "restricted: that is an invalid invite code."]
        answer = await client.publish(join_request(joiner, invite.code))
        assert answer[2] is True and answer[3].startswith("info: welcome"), answer
        answer = await client.publish(join_request(joiner, invite.code))
        assert answer[2:] == [True, "duplicate: you are already a member of this relay."]
        assert await membership_list(relay.db_url, cid, relay_pubkey) == [pubkey_hex(joiner)]

        # A member reads and writes; asks for an invite and gets one signed by the relay.
        note = make_event(joiner, content="hello members")
        assert (await client.publish(note))[2] is True
        got = await client.req("invite", {"kinds": [access.INVITE_REQUEST]})
        assert len(got) == 1 and got[0]["pubkey"] == relay_pubkey
        assert ["-"] in got[0]["tags"]
        code = next(t[1] for t in got[0]["tags"] if t[0] == "claim")
        assert await client.req("live", {"kinds": [1]}, live=True) != []

        # The invite lets a friend in, once; the operator's single-use code is used up.
        async with signed_in(relay.port, friend) as other:
            answer = await other.publish(join_request(friend, invite.code))
            assert answer[2:] == [False, "restricted: that invite code has been used up."]
            answer = await other.publish(join_request(friend, code))
            assert answer[2] is True, answer
        assert await table(relay.db_url, cid) == sorted([pubkey_hex(joiner), pubkey_hex(friend)])
        assert await membership_list(relay.db_url, cid, relay_pubkey) == await table(
            relay.db_url, cid
        )

        # Removed by an admin: the live subscription is closed within a second, and nothing
        # more is served.
        await membership.remove(cid, pubkey_hex(joiner))
        with trio.fail_after(REMOVAL_SECONDS):
            closed = await client.recv()
        assert closed == ["CLOSED", "live", access.NO_LONGER_A_MEMBER], closed
        await client.send(["REQ", "again", {"kinds": [1]}])
        closed = await client.recv()
        assert closed[0] == "CLOSED" and closed[2].startswith("restricted:"), closed
    assert await membership_list(relay.db_url, cid, relay_pubkey) == [pubkey_hex(friend)]
    kinds = await sql(
        relay.db_url, "SELECT kind, raw FROM events WHERE community_id = $1 AND kind IN"
        " (8000, 8001) ORDER BY created_at, kind", cid,
    )  # fmt: skip
    changes = [(r["kind"], orjson.loads(r["raw"])["tags"][1][1]) for r in kinds]
    assert sorted(changes) == sorted([
        (8000, pubkey_hex(joiner)), (8000, pubkey_hex(friend)), (8001, pubkey_hex(joiner)),
    ])  # fmt: skip

    # The friend leaves with a leave request.
    async with signed_in(relay.port, friend) as other:
        leave = make_event(friend, kind=access.LEAVE_REQUEST, tags=[["-"]])
        answer = await other.publish(leave)
        assert answer[2] is True and answer[3].startswith("info:"), answer
    assert await table(relay.db_url, cid) == []
    assert await membership_list(relay.db_url, cid, relay_pubkey) == []


async def test_invites_expire_and_run_out(relay: RelayUnderTest) -> None:
    async with operator(relay) as (membership, cid):
        expired = await membership.invite(cid, 5, int(time.time()) - 1)
        twice = await membership.invite(cid, 2, None)
    keys = [new_key() for _ in range(3)]
    answers = []
    for key in keys:
        async with signed_in(relay.port, key) as client:
            answer = await client.publish(join_request(key, expired.code))
            assert answer[2:] == [False, "restricted: that invite code is expired."]
            answers.append((await client.publish(join_request(key, twice.code)))[2:])
    assert answers[:2] == [[True, answers[0][1]], [True, answers[1][1]]]
    assert answers[2] == [False, "restricted: that invite code has been used up."]
    assert len(await table(relay.db_url, cid)) == 2


async def test_concurrent_claims_of_a_last_use_admit_one(relay: RelayUnderTest) -> None:
    async with operator(relay) as (membership, cid):
        invite = await membership.invite(cid, 1, None)
    keys = [new_key() for _ in range(8)]
    results: list[bool] = []

    async def claim(key: PrivateKey) -> None:
        async with signed_in(relay.port, key) as client:
            results.append((await client.publish(join_request(key, invite.code)))[2])

    async with trio.open_nursery() as nursery:
        for key in keys:
            nursery.start_soon(claim, key)
    assert sorted(results) == [False] * 7 + [True]
    assert len(await table(relay.db_url, cid)) == 1


async def test_git_and_the_web_pages_are_for_members(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        member, stranger = new_key(), new_key()
        async with operator(h.relay) as (membership, cid):
            await membership.add(cid, pubkey_hex(member))
            await member_until_admitted(h.port, member)
        async with signed_in(h.port, member) as client:
            assert (await client.publish(announcement(member, "club", PRIVATE)))[2] is True
        owner = pubkey_hex(member)
        url = f"http://{PRIVATE}:{h.port}/git/{owner}/club.git"
        resolve = ("-c", f"http.curloptResolve={PRIVATE}:{h.port}:127.0.0.1")
        git = Git(tmp_path / "home")
        work = tmp_path / "work"
        await git.run("init", "-q", str(work))
        await git.commit(work, "README.md", "# club\n", "first")
        await git.run(*resolve, "push", "-q", url, "main", cwd=work, key=member, url=url)

        # A member clones with a token; a stranger's token is refused, and so is no token.
        await git.run(*resolve, "clone", "-q", url, str(tmp_path / "mine"), key=member, url=url)
        assert (tmp_path / "mine" / "README.md").read_text() == "# club\n"
        theirs = await git.run(*resolve, "clone", "-q", url, str(tmp_path / "theirs"),
                               key=stranger, url=url, check=False)  # fmt: skip
        assert theirs.returncode != 0 and b"403" in theirs.stderr, theirs.stderr
        anonymous = await git.run(*resolve, "clone", "-q", url, str(tmp_path / "anon"),
                                  check=False)  # fmt: skip
        assert anonymous.returncode != 0
        status, headers, _ = await http_get(
            h.port, f"/git/{owner}/club.git/info/refs?service=git-upload-pack", host=PRIVATE
        )
        assert status == 401 and headers["www-authenticate"].startswith("Nostr")
        # A GRASP-style push (no token, authorized by signed state) is refused here.
        await git.commit(work, "more.txt", "more\n", "second")
        pushed = await git.run(*resolve, "push", "-q", url, "main", cwd=work, check=False)
        assert pushed.returncode != 0
        # Removed: the next request with the same key is refused.
        async with operator(h.relay) as (membership, cid):
            await membership.remove(cid, owner)
            with trio.fail_after(REMOVAL_SECONDS + 2):
                while True:
                    again = await git.run(*resolve, "ls-remote", url, key=member, url=url,
                                          check=False)  # fmt: skip
                    if again.returncode != 0:
                        break
                    await trio.sleep(0.1)
            assert b"403" in again.stderr

        # The web pages show nothing of a members-only community.
        status, _, body = await http_get(h.port, "/", host=PRIVATE, Accept="text/html")
        assert status == 200 and b"club" not in body and b"for its members" in body
        status, _, _ = await http_get(
            h.port, f"/git/{owner}/club", host=PRIVATE, Accept="text/html"
        )
        assert status == 404


async def test_nip86_allowpubkey_and_banpubkey_change_the_members(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """In a members-only community the NIP-86 allow-list is its membership; an admin sets
    the access mode with changerelayaccess."""
    relay = await start_relay(nursery, db_url, tmp_path, admin_pubkeys=frozenset({ADMIN_HEX}))
    cid = await community_of(db_url, PRIVATE)
    assert await rpc(relay.port, "changerelayaccess", "members", host=PRIVATE) is True
    await until_nip11_says_members_only(relay.port)
    key = new_key()
    hexkey = pubkey_hex(key)
    assert await rpc(relay.port, "allowpubkey", hexkey, host=PRIVATE) is True
    assert await table(db_url, cid) == [hexkey]
    await member_until_admitted(relay.port, key)
    listed = await rpc(relay.port, "listallowedpubkeys", host=PRIVATE)
    assert listed == [{"pubkey": hexkey, "reason": "member (admin)"}]
    assert await membership_list(db_url, cid, relay.app.pubkey) == [hexkey]
    # A ban ends the membership too.
    assert await rpc(relay.port, "banpubkey", hexkey, "spam", host=PRIVATE) is True
    assert await table(db_url, cid) == []
    assert await membership_list(db_url, cid, relay.app.pubkey) == []
    banned = await rpc(relay.port, "listbannedpubkeys", host=PRIVATE)
    assert [entry["pubkey"] for entry in banned] == [hexkey]
    status, answer = await rpc_raw(relay.port, "changerelayaccess", ["secret"], host=PRIVATE)
    assert status == 200 and answer["error"] == "params[0] must be public or members"
    assert await rpc(relay.port, "changerelayaccess", "public", host=PRIVATE) is True
    async with connect(relay.port, PRIVATE) as client:  # open again: no AUTH needed
        await client.send(["COUNT", "c", {"kinds": [1]}])
        assert (await client.recv())[0] == "COUNT"


async def test_a_removal_on_one_pod_closes_the_subscription_on_the_other(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, redis: RedisServer
) -> None:
    """Pod A in this process, pod B `relay serve`, one database and one Redis: a member
    removed through A's NIP-86 loses the live subscription it holds on B within a second
    (B reloads the members only every 30 s unless told through Redis)."""
    secret, prefix = new_secret(), unique_prefix()
    a = await start_relay(
        nursery, db_url, tmp_path / "a", secret_key=secret, redis_url=redis.url,
        redis_prefix=prefix, admin_pubkeys=frozenset({ADMIN_HEX}),
    )  # fmt: skip
    host = "127.0.0.1"
    b_port = free_port()
    env = pod_env(db_url, tmp_path / "b", secret=secret, redis_url=redis.url, prefix=prefix)
    async with relay_process(env, b_port, tmp_path / "relay-b.log"):
        key = new_key()
        assert await rpc(a.port, "changerelayaccess", "members", host=host) is True
        assert await rpc(a.port, "allowpubkey", pubkey_hex(key), host=host) is True
        await member_until_admitted(b_port, key, host)
        async with signed_in(b_port, key, host) as client:
            await client.req("live", {"kinds": [1]}, live=True)
            assert await rpc(a.port, "unallowpubkey", pubkey_hex(key), host=host) is True
            with trio.fail_after(REMOVAL_SECONDS):
                closed = await client.recv()
            assert closed == ["CLOSED", "live", access.NO_LONGER_A_MEMBER], closed


async def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = await trio.run_process(
        [*RELAY_CLI, *args], env={**clean_environ(), "RELAY_LOG_LEVEL": "warning", **env},
        capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr, stderr
    return result.returncode, result.stdout.decode(), stderr


async def test_the_operators_commands(db_url: str, tmp_path: Path, relay: RelayUnderTest) -> None:
    """`relay community add --members-only`, `community set`, `member add|list|remove|
    invite`, on the database of a running relay, which applies them within a second."""
    env = {"RELAY_DATABASE_URL": db_url, "RELAY_DATA_DIR": str(tmp_path / "elsewhere")}
    code, _, err = await cli(env, "member", "list", PRIVATE)
    assert code == 2 and "the relay's key is not in" in err  # no key: nothing signed wrong
    env["RELAY_DATA_DIR"] = str(relay.settings.data_path)  # the relay's own key
    assert (await cli(env, "community", "add", "gamma.test", "--members-only"))[0] == 0
    gamma = await community_of(db_url, "gamma.test")
    rows = await sql(db_url, "SELECT access FROM community_access WHERE community_id = $1", gamma)
    assert rows[0]["access"] == access.MEMBERS
    code, out, _ = await cli(env, "community", "set", PRIVATE, "access=members")
    assert code == 0 and out.strip() == f"{PRIVATE}: access=members"
    await until_nip11_says_members_only(relay.port)
    code, _, err = await cli(env, "community", "set", PRIVATE, "access=everyone")
    assert code == 2 and "access=members or access=public" in err

    key = new_key()
    npub = hex_to_npub(pubkey_hex(key))
    code, out, _ = await cli(env, "member", "add", PRIVATE, npub)
    assert code == 0 and out.strip() == f"{pubkey_hex(key)} is now a member of {PRIVATE}"
    await member_until_admitted(relay.port, key)
    code, out, _ = await cli(env, "member", "list", PRIVATE)
    assert out.split()[:3] == [pubkey_hex(key), npub, "admin"]
    cid = await community_of(db_url, PRIVATE)
    assert await membership_list(db_url, cid, relay.app.pubkey) == [pubkey_hex(key)]
    code, out, err = await cli(env, "member", "invite", PRIVATE, "--uses", "3", "--expires", "2h")
    invite = out.strip()
    assert code == 0 and len(invite) >= 20 and "3 use(s), expires in 2h" in err
    rows = await sql(db_url, "SELECT uses_left, expires_at FROM community_invites WHERE code = $1",
                     invite)  # fmt: skip
    assert rows[0]["uses_left"] == 3 and abs(rows[0]["expires_at"] - time.time() - 7200) < 60
    code, _, err = await cli(env, "member", "invite", PRIVATE, "--expires", "soon")
    assert code == 2 and "--expires 'soon'" in err
    code, out, _ = await cli(env, "member", "remove", PRIVATE, pubkey_hex(key))
    assert code == 0 and out.strip() == f"{pubkey_hex(key)} is no longer a member of {PRIVATE}"
    assert await membership_list(db_url, cid, relay.app.pubkey) == []
