"""The same behavioural tests against the S3 store (moto) and the filesystem store."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from relay.git import model
from relay.git.objectstore import (
    DigestMismatch,
    GitObjects,
    LostRace,
    ObjectStore,
    TooLarge,
    Won,
)
from relay.git.probe import Probe
from relay.git.s3store import S3Store


async def test_absent_object_reads_as_none(object_store: ObjectStore) -> None:
    assert await object_store.get("packs/" + "0" * 64) is None


async def test_create_only_then_replace_if_unchanged(object_store: ObjectStore) -> None:
    key = "repos/1/" + "a" * 64 + "/demo/pointer"
    created = await object_store.put(key, b"one", None)
    assert isinstance(created, Won)
    assert isinstance(await object_store.put(key, b"two", None), LostRace)
    found = await object_store.get(key)
    assert found is not None and found.body == b"one" and found.token == created.token
    replaced = await object_store.put(key, b"two", found.token)
    assert isinstance(replaced, Won) and replaced.token != created.token
    assert isinstance(await object_store.put(key, b"three", created.token), LostRace)
    found = await object_store.get(key)
    assert found is not None and found.body == b"two" and found.token == replaced.token


async def test_if_match_on_a_missing_object_loses(object_store: ObjectStore) -> None:
    assert isinstance(await object_store.put("probe/none", b"x", '"abc"'), LostRace)
    assert await object_store.get("probe/none") is None


async def test_delete(object_store: ObjectStore) -> None:
    await object_store.put("probe/gone", b"x", None)
    await object_store.delete("probe/gone")
    await object_store.delete("probe/gone")
    assert await object_store.get("probe/gone") is None


async def test_size_cap_is_checked(object_store: ObjectStore) -> None:
    await object_store.put("probe/big", b"x" * 2000, None)
    with pytest.raises(TooLarge):
        await object_store.get("probe/big", 1000)
    found = await object_store.get("probe/big", 2000)
    assert found is not None and len(found.body) == 2000


async def test_immutable_objects_are_keyed_by_their_bytes(object_store: ObjectStore) -> None:
    objects = GitObjects(object_store)
    digest = await objects.put_pack(b"pack bytes")
    assert digest == model.sha256_hex(b"pack bytes")
    assert await objects.put_pack(b"pack bytes") == digest  # already there is success
    assert await objects.get_verified(model.pack_key(digest), 100) == b"pack bytes"
    manifest = model.Manifest(refs={"refs/heads/main": "1" * 40}, packs=(model.pack_key(digest),))
    m_digest = await objects.put_manifest(manifest)
    assert m_digest == manifest.digest
    assert await objects.get_manifest(m_digest) == manifest


async def test_verified_read_detects_wrong_bytes(object_store: ObjectStore) -> None:
    digest = model.sha256_hex(b"right")
    await object_store.put(model.pack_key(digest), b"wrong", None)
    with pytest.raises(DigestMismatch):
        await GitObjects(object_store).get_verified(model.pack_key(digest), 100)


async def test_pointer_round_trip(object_store: ObjectStore) -> None:
    objects = GitObjects(object_store)
    key = model.pointer_key(7, "b" * 64, "demo.git")
    assert key == "repos/7/" + "b" * 64 + "/demo/pointer"
    assert await objects.read_pointer(key) is None
    empty = await objects.put_manifest(model.EMPTY_MANIFEST)
    won = await objects.cas_pointer(key, empty, None)
    assert isinstance(won, Won)
    assert await objects.read_pointer(key) == (won.token, empty)


async def test_32_concurrent_if_match_writers_one_winner(object_store: ObjectStore) -> None:
    key = "probe/race"
    seeded = await object_store.put(key, b"seed", None)
    assert isinstance(seeded, Won)
    results: list[object] = []

    async def writer(i: int) -> None:
        results.append(await object_store.put(key, f"w{i}".encode(), seeded.token))

    async with trio.open_nursery() as nursery:
        for i in range(32):
            nursery.start_soon(writer, i)
    winners = [r for r in results if isinstance(r, Won)]
    assert len(winners) == 1
    assert sum(isinstance(r, LostRace) for r in results) == 31
    found = await object_store.get(key)
    assert found is not None and found.token == winners[0].token


async def test_probe_passes_on_an_honest_store(object_store: ObjectStore) -> None:
    report = await Probe(object_store, writers=8, rounds=2).run()
    assert report.ok, report.render()
    assert [p.name for p in report.phases] == [
        "sequential", "if_match_race", "if_none_match_race", "etag_round_trip"
    ]


class Recording:
    """The store as it is, noting every key written (to check what is left afterwards)."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.written: set[str] = set()

    async def get(self, key: str, max_bytes: int | None = None) -> Any:
        return await self.inner.get(key, max_bytes)

    async def put(self, key: str, body: bytes, if_match: str | None) -> Any:
        self.written.add(key)
        return await self.inner.put(key, body, if_match)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_the_probe_leaves_nothing_behind(object_store: ObjectStore) -> None:
    """It runs at every start of every pod: each object it writes is removed again (it
    used to leave about six a start)."""
    recording = Recording(object_store)
    report = await Probe(recording, writers=8, rounds=2).run()
    assert report.ok, report.render()
    assert recording.written, "the probe wrote nothing?"
    for key in sorted(recording.written):
        assert await object_store.get(key) is None, f"{key} was left behind"


async def test_s3_etag_is_echoed_with_its_quotes(s3_store: S3Store) -> None:
    won = await s3_store.put("probe/quoted", b"x", None)
    assert isinstance(won, Won) and won.token.startswith('"') and won.token.endswith('"')
