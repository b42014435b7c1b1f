"""Repo announcements (kind 30617) over real websockets: races, lifecycle, refusals, deletion.

Everything is observed from outside the relay: OK frames on the wire, rows in Postgres, the
pointer objects in the store the relay writes to (its data directory, or a moto bucket), and
the events stored. Every wait is bounded; every socket is on loopback.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import coincurve
import orjson
import pytest
import trio

from relay.events import kinds
from relay.events.model import Event
from relay.git import model
from relay.git.fsstore import FilesystemStore
from relay.git.objectstore import GitObjects, Won
from relay.keys import pubkey_hex
from tests.git.hosting import EMPTY, Hosted, hosted_relay, self_pubkey
from tests.helpers import (
    announcement as hosted_announcement,
)
from tests.helpers import (
    community_of,
    connect,
    make_event,
    new_key,
    publish,
    relay_process,
    sql,
)
from tests.services import free_port, moto_bucket, start_relay

REPO = "myrepo"
RACERS = 20
BACKENDS = ("filesystem", "s3")


# -- helpers ---------------------------------------------------------------------------------


def announcement(
    key: coincurve.PrivateKey,
    repo: str = REPO,
    *,
    created_at: int | None = None,
    tags: list[list[str]] | None = None,
) -> Event:
    if tags is not None:
        return make_event(key, kind=kinds.REPO_ANNOUNCEMENT, content="", tags=tags,
                          created_at=created_at)  # fmt: skip
    return hosted_announcement(key, repo, extra_tags=[["name", "My repo"]], created_at=created_at)


def deletion(key: coincurve.PrivateKey, tags: list[list[str]]) -> Event:
    return make_event(key, kind=kinds.DELETION, content="", tags=tags)


async def publish_concurrently(jobs: Sequence[tuple[int, Sequence[Event]]]) -> dict[str, list[Any]]:
    """Each job is (port, events) on a connection of its own. Every connection is open
    before any event is sent; then each sends all its events at once. OK frames by id."""
    answers: dict[str, list[Any]] = {}
    opened = 0
    all_open, go = trio.Event(), trio.Event()

    async def job(port: int, events: Sequence[Event]) -> None:
        nonlocal opened
        async with connect(port) as client:
            opened += 1
            if opened == len(jobs):
                all_open.set()
            await go.wait()
            for event in events:
                await client.send(["EVENT", event.to_dict()])
            for _ in events:
                frame = await client.recv(timeout=30)
                assert frame[0] == "OK", frame
                answers[frame[1]] = frame

    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            for port, events in jobs:
                nursery.start_soon(job, port, events)
            await all_open.wait()
            go.set()
    assert len(answers) == sum(len(events) for _, events in jobs)
    return answers


async def name_rows(db_url: str, community_id: int) -> list[tuple[str, str]]:
    rows = await sql(
        db_url,
        "SELECT repo_id, owner_pubkey FROM git_repo_names WHERE community_id = $1"
        " ORDER BY repo_id, owner_pubkey",
        community_id,
    )
    return [(r["repo_id"], r["owner_pubkey"]) for r in rows]


async def stored(
    db_url: str, community_id: int, kind: int, d: str | None = None
) -> list[dict[str, Any]]:
    rows = await sql(
        db_url,
        "SELECT raw FROM events WHERE community_id = $1 AND kind = $2"
        " AND ($3::text IS NULL OR coordinate_d = $3) ORDER BY created_at, id",
        community_id,
        kind,
        d,
    )
    return [orjson.loads(r["raw"]) for r in rows]


def assert_initial_ref_state(
    event: dict[str, Any], relay_pubkey: str, repo: str, owner: str
) -> None:
    assert event["kind"] == kinds.REPO_STATE
    assert event["pubkey"] == relay_pubkey
    assert event["tags"] == [["d", repo], ["HEAD", "ref: refs/heads/main"], ["p", owner]]
    assert not [t for t in event["tags"] if t[0].startswith("refs/")]


async def assert_one_winner(
    *,
    db_url: str,
    community_id: int,
    objects: GitObjects,
    relay_pubkey: str,
    keys: list[coincurve.PrivateKey],
    events: list[Event],
    answers: dict[str, list[Any]],
    repo: str = REPO,
) -> None:
    accepted = [e for e in events if answers[e.id][2] is True]
    assert len(accepted) == 1, [answers[e.id] for e in events]
    winner = accepted[0].pubkey
    for event in events:
        if event.pubkey != winner:
            assert answers[event.id][2] is False
            assert answers[event.id][3].startswith("blocked:"), answers[event.id]
            assert answers[event.id][3] == f"blocked: repo name {repo} is taken"
    assert await name_rows(db_url, community_id) == [(repo, winner)]
    pointers: dict[str, tuple[str, str] | None] = {}
    for key in keys:
        owner = pubkey_hex(key)
        pointers[owner] = await objects.read_pointer(model.pointer_key(community_id, owner, repo))
    assert {o for o, p in pointers.items() if p is not None} == {winner}
    winner_pointer = pointers[winner]
    assert winner_pointer is not None and winner_pointer[1] == EMPTY
    states = await stored(db_url, community_id, kinds.REPO_STATE, repo)
    assert len(states) == 1
    assert_initial_ref_state(states[0], relay_pubkey, repo, winner)
    announcements = await stored(db_url, community_id, kinds.REPO_ANNOUNCEMENT, repo)
    assert [e["id"] for e in announcements] == [accepted[0].id]


async def race_one_name(
    ports: list[int], db_url: str, objects: GitObjects, relay_pubkey: str
) -> None:
    """RACERS owners announce REPO at once, owner i through ports[i % len(ports)]."""
    community_id = await community_of(db_url)
    keys = [new_key() for _ in range(RACERS)]
    events = [announcement(k) for k in keys]
    answers = await publish_concurrently(
        [(ports[i % len(ports)], [e]) for i, e in enumerate(events)]
    )
    await assert_one_winner(
        db_url=db_url,
        community_id=community_id,
        objects=objects,
        relay_pubkey=relay_pubkey,
        keys=keys,
        events=events,
        answers=answers,
    )


# -- the name race across two relays -------------------------------------------------------------


async def test_name_race_across_two_relay_instances(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, moto_endpoint: str
) -> None:
    """Two independent relay instances, A and B, share one Postgres database and one moto
    bucket and sign with one key. They run in this one Python process (one trio run), but
    each has its own data directory, its own Postgres connection pool, its own object store
    client and its own listening socket: nothing is shared between them except what two
    pods would share. Owners alternate between A and B."""
    secret = coincurve.PrivateKey().secret.hex()
    relay_pubkey = pubkey_hex(coincurve.PrivateKey(bytes.fromhex(secret)))
    async with moto_bucket(moto_endpoint) as (s3, store):
        a = await start_relay(
            nursery, db_url, tmp_path / "a", secret_key=secret, db_pool_size=10, **s3
        )
        b = await start_relay(
            nursery, db_url, tmp_path / "b", secret_key=secret, db_pool_size=10, **s3
        )
        assert a.port != b.port
        assert await self_pubkey(a.port) == await self_pubkey(b.port) == relay_pubkey
        await race_one_name([a.port, b.port], db_url, GitObjects(store), relay_pubkey)


async def test_name_race_across_a_relay_and_a_relay_subprocess(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, moto_endpoint: str
) -> None:
    """Like the test above, but relay B is a real second OS process (`relay.cli serve`),
    configured only through RELAY_* environment variables: one database, one bucket, one
    signing key, two processes."""
    secret = coincurve.PrivateKey().secret.hex()
    relay_pubkey = pubkey_hex(coincurve.PrivateKey(bytes.fromhex(secret)))
    async with moto_bucket(moto_endpoint) as (s3, store):
        a = await start_relay(
            nursery, db_url, tmp_path / "a", secret_key=secret, db_pool_size=10, **s3
        )
        env = {
            "RELAY_DATABASE_URL": db_url,
            "RELAY_DATA_DIR": str(tmp_path / "b"),
            "RELAY_HOSTS": "localhost,127.0.0.1",
            "RELAY_SECRET_KEY": secret,
            "RELAY_S3_ENDPOINT": s3["s3_endpoint"],
            "RELAY_S3_BUCKET": s3["s3_bucket"],
            "RELAY_S3_ACCESS_KEY": s3["s3_access_key"],
            "RELAY_S3_SECRET_KEY": s3["s3_secret_key"],
            "RELAY_GIT_PROBE_WRITERS": "4",
            "RELAY_GIT_PROBE_ROUNDS": "1",
            "RELAY_DB_POOL_SIZE": "10",
            "RELAY_LOG_LEVEL": "warning",
        }
        b_port = free_port()
        async with relay_process(env, b_port, tmp_path / "relay-b.log"):
            assert await self_pubkey(a.port) == await self_pubkey(b_port) == relay_pubkey
            await race_one_name([a.port, b_port], db_url, GitObjects(store), relay_pubkey)


# -- the quota race ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_quota_race_one_owner_many_names(
    backend: str, nursery: trio.Nursery, db_url: str, tmp_path: Path, moto_endpoint: str
) -> None:
    async with hosted_relay(
        backend, nursery, db_url, tmp_path, moto_endpoint,
        git_max_repos_per_pubkey=5, db_pool_size=10,
    ) as hosted:
        key = new_key()
        owner = pubkey_hex(key)
        events = [announcement(key, f"repo-{i}") for i in range(RACERS)]
        # Ten connections, two announcements sent back to back on each.
        answers = await publish_concurrently(
            [(hosted.port, events[i : i + 2]) for i in range(0, RACERS, 2)]
        )
        granted = sorted(e.first_tag_value("d") or "" for e in events if answers[e.id][2])
        refused = [answers[e.id] for e in events if not answers[e.id][2]]
        assert len(granted) == 5
        assert len(refused) == 15
        assert all(f[3] == "blocked: limit of 5 repos per pubkey" for f in refused), refused
        assert await name_rows(hosted.db_url, hosted.community_id) == [
            (repo, owner) for repo in granted
        ]
        announced = await stored(hosted.db_url, hosted.community_id, kinds.REPO_ANNOUNCEMENT)
        assert sorted(e["tags"][0][1] for e in announced) == granted
        assert {e["pubkey"] for e in announced} == {owner}
        states = await stored(hosted.db_url, hosted.community_id, kinds.REPO_STATE)
        assert sorted(e["tags"][0][1] for e in states) == granted
        for event in events:
            repo = event.first_tag_value("d") or ""
            pointer = await hosted.pointer(owner, repo)
            if repo in granted:
                assert pointer is not None and pointer[1] == EMPTY
            else:
                assert pointer is None


# -- lifecycle -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_re_announcement_keeps_the_pushed_pointer_and_emits_no_ref_state(
    backend: str, nursery: trio.Nursery, db_url: str, tmp_path: Path, moto_endpoint: str
) -> None:
    async with hosted_relay(backend, nursery, db_url, tmp_path, moto_endpoint) as hosted:
        key = new_key()
        owner = pubkey_hex(key)
        now = int(time.time())
        first = announcement(key, created_at=now - 10)
        assert (await publish(hosted.port, first))[2:] == [True, ""]

        assert await name_rows(hosted.db_url, hosted.community_id) == [(REPO, owner)]
        states = await stored(hosted.db_url, hosted.community_id, kinds.REPO_STATE, REPO)
        assert len(states) == 1
        assert_initial_ref_state(states[0], hosted.relay_pubkey, REPO, owner)
        seeded = await hosted.pointer(owner, REPO)
        assert seeded is not None
        token, digest = seeded
        assert digest == EMPTY

        # A push: a non-empty manifest on top of the empty one, CASed onto the pointer.
        pushed = model.Manifest(refs={"refs/heads/main": "a" * 40}, parent=EMPTY)
        pushed_digest = await hosted.objects.put_manifest(pushed)
        key_ = model.pointer_key(hosted.community_id, owner, REPO)
        cas = await hosted.objects.cas_pointer(key_, pushed_digest, token)
        assert isinstance(cas, Won)
        after_push = await hosted.pointer(owner, REPO)
        assert after_push == (cas.token, pushed_digest)

        second = announcement(key, created_at=now)
        assert (await publish(hosted.port, second))[2:] == [True, ""]
        # The same event again is a harmless duplicate.
        again = await publish(hosted.port, second)
        assert again[2] is True and again[3].startswith("duplicate:")

        assert await hosted.pointer(owner, REPO) == after_push
        assert [s["id"] for s in await stored(
            hosted.db_url, hosted.community_id, kinds.REPO_STATE
        )] == [states[0]["id"]]
        announced = await stored(hosted.db_url, hosted.community_id, kinds.REPO_ANNOUNCEMENT)
        assert [e["id"] for e in announced] == [second.id]
        assert await name_rows(hosted.db_url, hosted.community_id) == [(REPO, owner)]
        # An older version arriving late is refused and changes nothing.
        late = await publish(hosted.port, announcement(key, created_at=now - 5))
        assert late[2] is False and late[3].startswith("duplicate:")
        assert await hosted.pointer(owner, REPO) == after_push
        assert len(await stored(hosted.db_url, hosted.community_id, kinds.REPO_STATE)) == 1


# -- refusals leave nothing behind ---------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_taken_name_is_refused_without_trace(
    backend: str, nursery: trio.Nursery, db_url: str, tmp_path: Path, moto_endpoint: str
) -> None:
    async with hosted_relay(backend, nursery, db_url, tmp_path, moto_endpoint) as hosted:
        alice, bob = new_key(), new_key()
        assert (await publish(hosted.port, announcement(alice)))[2] is True
        before = await hosted.pointer(pubkey_hex(alice), REPO)
        answer = await publish(hosted.port, announcement(bob))
        assert answer[2:] == [False, f"blocked: repo name {REPO} is taken"]
        assert await name_rows(hosted.db_url, hosted.community_id) == [
            (REPO, pubkey_hex(alice))
        ]
        assert await hosted.pointer(pubkey_hex(bob), REPO) is None
        assert await hosted.pointer(pubkey_hex(alice), REPO) == before
        announced = await stored(hosted.db_url, hosted.community_id, kinds.REPO_ANNOUNCEMENT)
        assert [e["pubkey"] for e in announced] == [pubkey_hex(alice)]
        states = await stored(hosted.db_url, hosted.community_id, kinds.REPO_STATE)
        assert len(states) == 1
        assert_initial_ref_state(states[0], hosted.relay_pubkey, REPO, pubkey_hex(alice))


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_announcement_over_quota_is_refused_without_trace(
    backend: str, nursery: trio.Nursery, db_url: str, tmp_path: Path, moto_endpoint: str
) -> None:
    async with hosted_relay(
        backend, nursery, db_url, tmp_path, moto_endpoint, git_max_repos_per_pubkey=1
    ) as hosted:
        key = new_key()
        owner = pubkey_hex(key)
        assert (await publish(hosted.port, announcement(key, "one")))[2] is True
        answer = await publish(hosted.port, announcement(key, "two"))
        assert answer[2:] == [False, "blocked: limit of 1 repos per pubkey"]
        assert await name_rows(hosted.db_url, hosted.community_id) == [("one", owner)]
        assert await hosted.pointer(owner, "two") is None
        for kind in (kinds.REPO_ANNOUNCEMENT, kinds.REPO_STATE):
            assert await stored(hosted.db_url, hosted.community_id, kind, "two") == []
        # Re-announcing the name it holds is still fine at the limit.
        assert (await publish(hosted.port, announcement(key, "one")))[2] is True


def pointer_files(objects_dir: Path) -> list[Path]:
    repos = objects_dir / "repos"
    return sorted(p for p in repos.rglob("*") if p.is_file()) if repos.exists() else []


@pytest.mark.parametrize(
    "tags",
    [
        [["d", ".."], ["name", "x"]],
        [["d", "a/b"], ["name", "x"]],
        [["d", "a" * 65], ["name", "x"]],
        [["name", "no d tag"]],
        [["d", "x.git"], ["name", "x"]],
        [["d", ""], ["name", "x"]],
        [["d", ".hidden"], ["name", "x"]],
    ],
    ids=["dotdot", "slash", "65-chars", "missing-d", "dot-git", "empty", "leading-dot"],
)
async def test_an_invalid_repo_id_is_refused_without_trace(
    tags: list[list[str]], nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, db_url, tmp_path)
    community_id = await community_of(db_url)
    key = new_key()
    answer = await publish(relay.port, announcement(key, tags=tags))
    assert answer[2] is False
    assert answer[3].startswith("invalid:"), answer
    assert await name_rows(db_url, community_id) == []
    assert await stored(db_url, community_id, kinds.REPO_ANNOUNCEMENT) == []
    assert await stored(db_url, community_id, kinds.REPO_STATE) == []
    assert pointer_files(tmp_path / "objects") == []
    objects = GitObjects(FilesystemStore(tmp_path / "objects"))
    assert await objects.read_pointer(model.pointer_key(community_id, pubkey_hex(key), "x")) is None


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_fresh_claim_adopts_the_pointer_a_deletion_left_behind(
    backend: str, nursery: trio.Nursery, db_url: str, tmp_path: Path, moto_endpoint: str
) -> None:
    """A deletion whose pointer removal failed (the store refused the DELETE) leaves the
    owner's pointer with the name released. The owner's next announcement used to get
    `error: ... try again` for ever (a permanent condition described as transient). The
    pointer's key holds the owner, so it is theirs: it is adopted as it is, never
    overwritten, and the relay's 30618 says what it holds."""
    async with hosted_relay(backend, nursery, db_url, tmp_path, moto_endpoint) as hosted:
        key = new_key()
        owner = pubkey_hex(key)
        leftover = model.Manifest(refs={"refs/heads/main": "b" * 40}, parent=EMPTY)
        leftover_digest = await hosted.objects.put_manifest(leftover)
        pointer_key = model.pointer_key(hosted.community_id, owner, REPO)
        written = await hosted.objects.cas_pointer(pointer_key, leftover_digest, None)
        assert isinstance(written, Won)

        answer = await publish(hosted.port, announcement(key))
        assert answer[2] is True, answer
        assert await name_rows(hosted.db_url, hosted.community_id) == [(REPO, owner)]
        assert await hosted.pointer(owner, REPO) == (written.token, leftover_digest)
        [state] = await stored(hosted.db_url, hosted.community_id, kinds.REPO_STATE)
        assert ["refs/heads/main", "b" * 40] in state["tags"]

        # Nobody else can take the name meanwhile, and the owner's next announcement is an
        # ordinary re-announcement.
        assert (await publish(hosted.port, announcement(new_key())))[2] is False
        assert (await publish(hosted.port, announcement(key)))[2] is True
        assert await hosted.pointer(owner, REPO) == (written.token, leftover_digest)


async def announce_after_deleting(hosted: Hosted) -> tuple[str, list[Any]]:
    """The owner `a`-deletes its repo at time T, then sends an announcement dated before T:
    the event store refuses it (NIP-09), after the claim was made and the pointer seeded."""
    key = new_key()
    owner = pubkey_hex(key)
    now = int(time.time())
    assert (await publish(hosted.port, announcement(key, created_at=now - 10)))[2] is True
    delete = make_event(
        key,
        kind=kinds.DELETION,
        content="",
        tags=[["a", f"{kinds.REPO_ANNOUNCEMENT}:{owner}:{REPO}"]],
        created_at=now,
    )
    assert (await publish(hosted.port, delete))[2] is True
    assert await hosted.pointer(owner, REPO) is None
    return owner, await publish(hosted.port, announcement(key, created_at=now - 5))


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_re_announcement_of_a_deleted_coordinate_is_refused_and_releases_the_name(
    backend: str, nursery: trio.Nursery, db_url: str, tmp_path: Path, moto_endpoint: str
) -> None:
    async with hosted_relay(backend, nursery, db_url, tmp_path, moto_endpoint) as hosted:
        _, answer = await announce_after_deleting(hosted)
        assert answer[2:] == [False, "blocked: this event was deleted by its author"]
        assert await name_rows(hosted.db_url, hosted.community_id) == []
        assert await stored(hosted.db_url, hosted.community_id, kinds.REPO_ANNOUNCEMENT) == []
        assert await stored(hosted.db_url, hosted.community_id, kinds.REPO_STATE) == []


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_re_announcement_of_a_deleted_coordinate_leaves_no_pointer(
    backend: str, nursery: trio.Nursery, db_url: str, tmp_path: Path, moto_endpoint: str
) -> None:
    async with hosted_relay(backend, nursery, db_url, tmp_path, moto_endpoint) as hosted:
        owner, answer = await announce_after_deleting(hosted)
        assert answer[2] is False
        assert await hosted.pointer(owner, REPO) is None


# -- deletion --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("by", ["a", "e"])
async def test_deleting_an_announcement_frees_the_name(
    by: str, backend: str, nursery: trio.Nursery, db_url: str, tmp_path: Path, moto_endpoint: str
) -> None:
    async with hosted_relay(backend, nursery, db_url, tmp_path, moto_endpoint) as hosted:
        alice, stranger, bob = new_key(), new_key(), new_key()
        owner = pubkey_hex(alice)
        first = announcement(alice, created_at=int(time.time()) - 10)
        assert (await publish(hosted.port, first))[2] is True
        address = f"{kinds.REPO_ANNOUNCEMENT}:{owner}:{REPO}"
        state = await stored(hosted.db_url, hosted.community_id, kinds.REPO_STATE, REPO)
        pointer = await hosted.pointer(owner, REPO)
        assert len(state) == 1 and pointer is not None

        # A stranger's deletion, by address and by id, does nothing.
        stranger_deletes = deletion(stranger, [["a", address], ["e", first.id]])
        assert (await publish(hosted.port, stranger_deletes))[2] is True
        assert await name_rows(hosted.db_url, hosted.community_id) == [(REPO, owner)]
        assert await hosted.pointer(owner, REPO) == pointer
        assert await stored(hosted.db_url, hosted.community_id, kinds.REPO_STATE, REPO) == state
        announced = await stored(hosted.db_url, hosted.community_id, kinds.REPO_ANNOUNCEMENT)
        assert [e["id"] for e in announced] == [first.id]
        assert (await publish(hosted.port, announcement(bob)))[3].startswith("blocked:")

        tags = [["a", address]] if by == "a" else [["e", first.id]]
        assert (await publish(hosted.port, deletion(alice, tags)))[2:] == [True, ""]
        assert await name_rows(hosted.db_url, hosted.community_id) == []
        assert await hosted.pointer(owner, REPO) is None
        assert await stored(hosted.db_url, hosted.community_id, kinds.REPO_STATE) == []
        assert await stored(hosted.db_url, hosted.community_id, kinds.REPO_ANNOUNCEMENT) == []

        # The name is free for another owner, who gets a fresh repo.
        assert (await publish(hosted.port, announcement(bob)))[2:] == [True, ""]
        assert await name_rows(hosted.db_url, hosted.community_id) == [(REPO, pubkey_hex(bob))]
        bob_pointer = await hosted.pointer(pubkey_hex(bob), REPO)
        assert bob_pointer is not None and bob_pointer[1] == EMPTY
        states = await stored(hosted.db_url, hosted.community_id, kinds.REPO_STATE)
        assert len(states) == 1
        assert_initial_ref_state(states[0], hosted.relay_pubkey, REPO, pubkey_hex(bob))
        assert (await publish(hosted.port, announcement(alice)))[2:] == [
            False,
            f"blocked: repo name {REPO} is taken",
        ]
