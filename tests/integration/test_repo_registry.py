"""The repo-name registry against a real Postgres, and the migration that created its table.

`RepoRegistry` is driven directly (no relay, no websockets): outcomes of `reserve`, the
per-owner quota, owner-scoped release, per-community uniqueness, and the two races the
primary key and the advisory lock must win (many owners, one name; one owner, many names).
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from relay.app import open_database
from relay.events import kinds
from relay.git.registry import (
    AlreadyOwned,
    QuotaExceeded,
    RepoRegistry,
    Reservation,
    Reserved,
    TakenByOther,
)
from relay.keys import pubkey_hex
from relay.store.db import Database, DatabaseError
from relay.store.events import EventStore, Saved
from relay.store.migrations import (
    Migration,
    MigrationError,
    applied_versions,
    load_migrations,
    migrate,
)
from tests.helpers import make_event, new_key, sql, transaction_held
from tests.services import relay_settings

RACERS = 20
RACE_ROUNDS = 3


def owner() -> str:
    return secrets.token_hex(32)


async def add_communities(db_url: str, *hosts: str) -> list[int]:
    values = ", ".join(f"('{h}')" for h in hosts)
    rows = await sql(db_url, f"INSERT INTO communities (host) VALUES {values} RETURNING host, id")
    by_host = {r["host"]: r["id"] for r in rows}
    return [by_host[h] for h in hosts]


async def all_name_rows(db_url: str) -> list[tuple[int, str, str]]:
    rows = await sql(
        db_url,
        "SELECT community_id, repo_id, owner_pubkey FROM git_repo_names"
        " ORDER BY community_id, repo_id",
    )
    return [(r["community_id"], r["repo_id"], r["owner_pubkey"]) for r in rows]


@asynccontextmanager
async def database(db_url: str, tmp_path: Path, pool: int = 4) -> AsyncIterator[Database]:
    async with open_database(relay_settings(db_url, tmp_path, db_pool_size=pool)) as db:
        yield db


# -- outcomes ----------------------------------------------------------------------------------


async def test_reserve_outcomes_and_owner_of(db_url: str, tmp_path: Path) -> None:
    (cid,) = await add_communities(db_url, "a.test")
    alice, bob = owner(), owner()
    async with database(db_url, tmp_path) as db:
        registry = RepoRegistry(db, quota=10)
        assert await registry.owner_of(cid, "myrepo") is None
        assert await registry.reserve(cid, "myrepo", alice) == Reserved()
        assert await registry.reserve(cid, "myrepo", alice) == AlreadyOwned()
        assert await registry.reserve(cid, "myrepo", bob) == TakenByOther(alice)
        assert await registry.owner_of(cid, "myrepo") == alice
        assert await registry.count_for_owner(cid, alice) == 1
        assert await registry.count_for_owner(cid, bob) == 0
    assert await all_name_rows(db_url) == [(cid, "myrepo", alice)]


async def test_re_reserving_does_not_count_twice_against_the_quota(
    db_url: str, tmp_path: Path
) -> None:
    (cid,) = await add_communities(db_url, "a.test")
    alice = owner()
    async with database(db_url, tmp_path) as db:
        registry = RepoRegistry(db, quota=2)
        assert await registry.reserve(cid, "one", alice) == Reserved()
        for _ in range(3):
            assert await registry.reserve(cid, "one", alice) == AlreadyOwned()
        assert await registry.count_for_owner(cid, alice) == 1
        assert await registry.reserve(cid, "two", alice) == Reserved()
        assert await registry.count_for_owner(cid, alice) == 2
        # At the quota, a name already held is still AlreadyOwned, never QuotaExceeded.
        assert await registry.reserve(cid, "one", alice) == AlreadyOwned()
        assert await registry.reserve(cid, "two", alice) == AlreadyOwned()
        assert await registry.reserve(cid, "three", alice) == QuotaExceeded(2)
        assert await registry.owner_of(cid, "three") is None
        assert await registry.count_for_owner(cid, alice) == 2
    assert [r[1] for r in await all_name_rows(db_url)] == ["one", "two"]


async def test_quota_is_per_community(db_url: str, tmp_path: Path) -> None:
    a, b = await add_communities(db_url, "a.test", "b.test")
    alice = owner()
    async with database(db_url, tmp_path) as db:
        registry = RepoRegistry(db, quota=1)
        assert await registry.reserve(a, "one", alice) == Reserved()
        assert await registry.reserve(a, "two", alice) == QuotaExceeded(1)
        assert await registry.reserve(b, "two", alice) == Reserved()
        assert await registry.count_for_owner(a, alice) == 1
        assert await registry.count_for_owner(b, alice) == 1


async def test_release_is_owner_scoped_and_the_name_is_reclaimable(
    db_url: str, tmp_path: Path
) -> None:
    (cid,) = await add_communities(db_url, "a.test")
    alice, stranger, carol = owner(), owner(), owner()
    async with database(db_url, tmp_path) as db:
        registry = RepoRegistry(db, quota=10)
        assert await registry.reserve(cid, "myrepo", alice) == Reserved()
        assert await registry.release(cid, "myrepo", stranger) == 0
        assert await registry.owner_of(cid, "myrepo") == alice
        assert await registry.release(cid, "other", alice) == 0
        assert await registry.release(cid, "myrepo", alice) == 1
        assert await registry.release(cid, "myrepo", alice) == 0
        assert await registry.owner_of(cid, "myrepo") is None
        assert await registry.count_for_owner(cid, alice) == 0
        assert await registry.reserve(cid, "myrepo", carol) == Reserved()
        assert await registry.reserve(cid, "myrepo", alice) == TakenByOther(carol)
    assert await all_name_rows(db_url) == [(cid, "myrepo", carol)]


async def test_the_same_name_in_two_communities_has_two_owners(
    db_url: str, tmp_path: Path
) -> None:
    a, b = await add_communities(db_url, "a.test", "b.test")
    alice, bob = owner(), owner()
    async with database(db_url, tmp_path) as db:
        registry = RepoRegistry(db, quota=10)
        assert await registry.reserve(a, "myrepo", alice) == Reserved()
        assert await registry.reserve(b, "myrepo", bob) == Reserved()
        assert await registry.owner_of(a, "myrepo") == alice
        assert await registry.owner_of(b, "myrepo") == bob
        assert await registry.reserve(a, "myrepo", bob) == TakenByOther(alice)
        assert await registry.reserve(b, "myrepo", alice) == TakenByOther(bob)
        # Releasing in one community leaves the other untouched.
        assert await registry.release(b, "myrepo", alice) == 0
        assert await registry.release(a, "myrepo", alice) == 1
        assert await registry.owner_of(b, "myrepo") == bob
    assert await all_name_rows(db_url) == [(b, "myrepo", bob)]


async def test_a_name_needs_an_existing_community(db_url: str, tmp_path: Path) -> None:
    async with database(db_url, tmp_path) as db:
        registry = RepoRegistry(db, quota=10)
        with pytest.raises(DatabaseError) as refused:
            await registry.reserve(987_654, "myrepo", owner())
        assert refused.value.sqlstate == "23503"  # foreign_key_violation
    assert await all_name_rows(db_url) == []


# -- races -------------------------------------------------------------------------------------


async def _all_at_once(calls: list[tuple[str, str]], registry: RepoRegistry, cid: int) -> list[
    Reservation
]:
    """Run every (repo_id, owner) reservation as its own task, released together."""
    results: list[Reservation | None] = [None] * len(calls)
    go = trio.Event()

    async def one(i: int, repo_id: str, who: str) -> None:
        await go.wait()
        results[i] = await registry.reserve(cid, repo_id, who)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i, (repo_id, who) in enumerate(calls):
                nursery.start_soon(one, i, repo_id, who)
            await trio.sleep(0.05)
            go.set()
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


async def test_quota_race_one_owner_many_names(db_url: str, tmp_path: Path) -> None:
    communities = await add_communities(db_url, *(f"q{i}.test" for i in range(RACE_ROUNDS)))
    async with database(db_url, tmp_path, pool=RACERS + 2) as db:
        registry = RepoRegistry(db, quota=5)
        for cid in communities:
            alice = owner()
            calls = [(f"repo-{i}", alice) for i in range(RACERS)]
            results = await _all_at_once(calls, registry, cid)
            assert Counter(type(r) for r in results) == {Reserved: 5, QuotaExceeded: 15}
            assert all(r == QuotaExceeded(5) for r in results if not isinstance(r, Reserved))
            assert await registry.count_for_owner(cid, alice) == 5
            granted = sorted(c[0] for c, r in zip(calls, results, strict=True) if r == Reserved())
            rows = [r for r in await all_name_rows(db_url) if r[0] == cid]
            assert sorted(r[1] for r in rows) == granted
            assert {r[2] for r in rows} == {alice}


async def test_name_race_many_owners_one_name(db_url: str, tmp_path: Path) -> None:
    communities = await add_communities(db_url, *(f"n{i}.test" for i in range(RACE_ROUNDS)))
    async with database(db_url, tmp_path, pool=RACERS + 2) as db:
        registry = RepoRegistry(db, quota=5)
        for cid in communities:
            owners = [owner() for _ in range(RACERS)]
            results = await _all_at_once([("myrepo", o) for o in owners], registry, cid)
            winners = [o for o, r in zip(owners, results, strict=True) if r == Reserved()]
            assert len(winners) == 1
            (winner,) = winners
            losers = [r for r in results if r != Reserved()]
            assert len(losers) == RACERS - 1
            assert all(r == TakenByOther(winner) for r in losers)
            assert [r for r in await all_name_rows(db_url) if r[0] == cid] == [
                (cid, "myrepo", winner)
            ]
            for o in owners:
                assert await registry.count_for_owner(cid, o) == (1 if o == winner else 0)


# -- compensation --------------------------------------------------------------------------------


async def test_release_attempt_only_undoes_its_own_unannounced_claim(
    db_url: str, tmp_path: Path
) -> None:
    """The compensation of an announcement (called `release_unless_announced` in earlier
    drafts): only the attempt that made the claim releases it, and never once the owner's
    30617 for that repo id is stored."""
    (cid,) = await add_communities(db_url, "a.test")
    key = new_key()
    alice = pubkey_hex(key)
    async with database(db_url, tmp_path) as db:
        registry = RepoRegistry(db, quota=10)
        store = EventStore(db)
        assert await registry.reserve(cid, "myrepo", alice, "attempt-1") == Reserved()
        assert await registry.reserve(cid, "other", alice, "attempt-2") == Reserved()
        # A re-announcement's attempt does not take over the claim.
        assert await registry.reserve(cid, "other", alice, "attempt-3") == AlreadyOwned()
        assert await registry.release_attempt(cid, "other", alice, "attempt-3") == 0
        assert await registry.release_attempt(cid, "other", owner(), "attempt-2") == 0
        assert await registry.owner_of(cid, "other") == alice
        # Events that are not this owner's 30617 for this d do not protect the name.
        unrelated = [
            make_event(key, kind=kinds.REPO_ANNOUNCEMENT, content="", tags=[["d", "else"]]),
            make_event(key, kind=kinds.REPO_STATE, content="", tags=[["d", "other"]]),
            make_event(new_key(), kind=kinds.REPO_ANNOUNCEMENT, content="", tags=[["d", "other"]]),
        ]
        for event in unrelated:
            assert (await store.save(cid, event, event.to_json())).outcome is Saved.STORED
        assert await registry.release_attempt(cid, "other", alice, "attempt-2") == 1
        assert await registry.owner_of(cid, "other") is None

        announcement = make_event(
            key,
            kind=kinds.REPO_ANNOUNCEMENT,
            content="",
            tags=[["d", "myrepo"], ["name", "My repo"]],
        )
        saved = await store.save(cid, announcement, announcement.to_json())
        assert saved.outcome is Saved.STORED
        assert await registry.release_attempt(cid, "myrepo", alice, "attempt-1") == 0
        assert await registry.owner_of(cid, "myrepo") == alice
        assert await registry.count_for_owner(cid, alice) == 1


async def test_a_release_waits_for_a_re_announcement_that_holds_the_name(
    db_url: str, tmp_path: Path
) -> None:
    """Two attempts of one owner on one name at once: the first one's compensation runs
    while the second stores its announcement (holding the registry row FOR SHARE, as
    `name_held` does). The release must see that announcement once it gets the row, and
    keep the name; it used to judge by the snapshot it started with and release it."""
    (cid,) = await add_communities(db_url, "a.test")
    key = new_key()
    alice = pubkey_hex(key)
    announcement = make_event(key, kind=kinds.REPO_ANNOUNCEMENT, content="", tags=[["d", "r"]])
    re_announcing = (
        ("SELECT 1 FROM git_repo_names WHERE community_id = $1 AND repo_id = $2 FOR SHARE",
         (cid, "r")),
        ("INSERT INTO events (community_id, id, pubkey, kind, created_at, coordinate_d, raw)"
         " VALUES ($1, $2, $3, $4, $5, $6, $7)",
         (cid, bytes.fromhex(announcement.id), bytes.fromhex(alice), kinds.REPO_ANNOUNCEMENT,
          announcement.created_at, "r", announcement.to_json())),
    )  # fmt: skip
    async with database(db_url, tmp_path) as db:
        registry = RepoRegistry(db, quota=10)
        assert await registry.reserve(cid, "r", alice, "first") == Reserved()
        released: list[int] = []

        async def release() -> None:
            released.append(await registry.release_attempt(cid, "r", alice, "first"))

        async with trio.open_nursery() as nursery, transaction_held(db_url, *re_announcing):
            nursery.start_soon(release)
            await trio.sleep(0.5)  # the release is now waiting for the row
            assert released == []
            # The re-announcement has committed.
        assert released == [0]
        assert await registry.owner_of(cid, "r") == alice


# -- the migration that created the table -------------------------------------------------------


def test_git_repo_names_is_its_own_migration() -> None:
    files = load_migrations()
    assert [m.version for m in files[:2]] == [1, 2]
    first, second = files[0], files[1]
    assert first.name == "0001_events.sql"
    assert second.name == "0002_git_repo_names.sql"
    assert "git_repo_names" not in first.sql
    assert "CREATE TABLE git_repo_names" in second.sql


async def test_brownfield_upgrade_adds_git_repo_names_and_keeps_data(
    empty_database_url: str, tmp_path: Path
) -> None:
    url = empty_database_url
    files = load_migrations()
    async with database(url, tmp_path) as db:
        assert await migrate(db, files[:1]) == [1]
        assert await applied_versions(db) == [1]
        assert (await sql(url, "SELECT to_regclass('git_repo_names') AS t"))[0]["t"] is None
        (cid,) = await add_communities(url, "old.test")
        event = make_event(new_key(), kind=1, content="from before the upgrade")
        await sql(
            url,
            "INSERT INTO events (community_id, id, pubkey, kind, created_at, raw)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            cid,
            bytes.fromhex(event.id),
            bytes.fromhex(event.pubkey),
            event.kind,
            event.created_at,
            event.to_json(),
        )

        assert await migrate(db) == [m.version for m in files[1:]]
        assert (await applied_versions(db))[:2] == [1, 2]
        assert await applied_versions(db) == [m.version for m in files]
        assert await migrate(db) == []

        communities = await sql(url, "SELECT id, host FROM communities")
        assert [(r["id"], r["host"]) for r in communities] == [(cid, "old.test")]
        events = await sql(url, "SELECT encode(id, 'hex') AS id, raw FROM events")
        assert [(r["id"], r["raw"]) for r in events] == [(event.id, event.to_json())]
        assert (await sql(url, "SELECT to_regclass('git_repo_names') AS t"))[0]["t"] is not None
        registry = RepoRegistry(db, quota=1)
        assert await registry.reserve(cid, "myrepo", event.pubkey) == Reserved()


async def test_editing_the_applied_git_migration_is_detected(
    empty_database_url: str, tmp_path: Path
) -> None:
    files = load_migrations()
    second = files[1]
    edited = Migration(second.version, second.name, second.sql.replace("text", "varchar"))
    assert edited.checksum != second.checksum
    async with database(empty_database_url, tmp_path) as db:
        await migrate(db)
        with pytest.raises(MigrationError, match=second.name):
            await migrate(db, [files[0], edited, *files[2:]])
        assert await applied_versions(db) == [m.version for m in files]
