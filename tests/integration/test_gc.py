"""`relay gc` against both stores (moto S3 and the filesystem): what no pointer reaches and
is older than the grace period goes; everything else stays."""

from __future__ import annotations

import os
import time
from pathlib import Path

import trio

from relay.git import model
from relay.git.fsstore import FilesystemStore
from relay.git.gc import collect
from relay.git.objectstore import GitObjects, ObjectStore, Won
from relay.git.probe import PROBE_PREFIX

GRACE = 3600.0
LATER = 10 * GRACE  # a `now` at which everything written by the test is old
OWNER = "ab" * 32


async def pack(objects: GitObjects, data: bytes) -> str:
    """A pack with its idx; the pack's key."""
    digest = await objects.put_pack(data)
    await objects.put_idx(digest, b"idx of " + data)
    return model.pack_key(digest)


async def repo(
    objects: GitObjects, name: str, packs: list[str], parent: str | None = None
) -> tuple[str, str]:
    """A pointer naming a manifest of `packs`; (pointer key, manifest digest)."""
    manifest = model.Manifest(
        refs={"refs/heads/main": "1" * 40}, packs=tuple(packs), parent=parent
    )
    digest = await objects.put_manifest(manifest)
    key = model.pointer_key(1, OWNER, name)
    current = await objects.read_pointer(key)
    result = await objects.cas_pointer(key, digest, current[0] if current else None)
    assert isinstance(result, Won)
    return key, digest


async def exists(store: ObjectStore, key: str) -> bool:
    return await store.get(key) is not None


async def test_what_no_pointer_reaches_goes_after_the_grace_period(
    object_store: ObjectStore,
) -> None:
    objects = GitObjects(object_store)
    kept_pack = await pack(objects, b"kept")
    gone_pack = await pack(objects, b"gone")
    _, first = await repo(objects, "r", [gone_pack])
    _, second = await repo(objects, "r", [kept_pack], parent=first)  # compaction
    stray = await objects.put_manifest(model.Manifest(refs={"refs/heads/x": "2" * 40}))
    probe = await objects.put_immutable(PROBE_PREFIX, b"left by an old probe")
    now = time.time()

    # Young: nothing goes, whatever reaches it.
    report = await collect(objects, grace_seconds=GRACE, now=now)
    assert report.removed == []
    assert (report.reachable, report.young) == (6, 2)  # the young parent's objects too

    # Old, as a dry run: listed, not removed.
    dry = await collect(objects, grace_seconds=GRACE, now=now + LATER, dry_run=True)
    removed = {item.key for item in dry.removed}
    assert removed == {
        gone_pack, model.idx_key(model.digest_of_key(gone_pack)),
        model.manifest_key(first), model.manifest_key(stray), probe,
    }  # fmt: skip
    assert dry.removed_bytes == sum(item.size for item in dry.removed) > 0
    assert all([await exists(object_store, key) for key in removed])

    # For real: gone; what the pointer reaches stays and still reads.
    report = await collect(objects, grace_seconds=GRACE, now=now + LATER)
    assert {item.key for item in report.removed} == removed
    assert not any([await exists(object_store, key) for key in removed])
    assert report.pointers == 1
    assert (await objects.get_manifest(second)).packs == (kept_pack,)
    assert await exists(object_store, kept_pack)
    assert await exists(object_store, model.idx_key(model.digest_of_key(kept_pack)))

    # Two passes at once (two pods) agree, and a pass with nothing to do removes nothing.
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(lambda: collect(objects, grace_seconds=GRACE, now=now + LATER))
    assert (await collect(objects, grace_seconds=GRACE, now=now + LATER)).removed == []


async def test_a_superseded_manifest_stays_while_its_successor_is_young(tmp_path: Path) -> None:
    """A clone that read the pointer just before a compaction still finds the old packs."""
    store = FilesystemStore(tmp_path / "objects")
    objects = GitObjects(store)
    old_pack = await pack(objects, b"old")
    new_pack = await pack(objects, b"new")
    _, first = await repo(objects, "r", [old_pack])
    await repo(objects, "r", [new_pack], parent=first)
    aged = time.time() - 2 * GRACE
    for key in (old_pack, model.manifest_key(first), model.idx_key(model.digest_of_key(old_pack))):
        os.utime(store.root.joinpath(*key.split("/")), (aged, aged))
    report = await collect(objects, grace_seconds=GRACE)
    assert report.removed == []  # the successor (second) is young: the parent is kept
    assert await exists(store, old_pack)


async def test_a_pointer_left_by_a_failed_deletion_keeps_its_objects(
    object_store: ObjectStore,
) -> None:
    """No name in the registry, but the pointer is there: the repository is restorable."""
    objects = GitObjects(object_store)
    kept = await pack(objects, b"restorable")
    await repo(objects, "deleted-but-kept", [kept])
    report = await collect(objects, grace_seconds=GRACE, now=time.time() + LATER)
    assert report.removed == []
    assert await exists(object_store, kept)
