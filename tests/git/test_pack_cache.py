"""The pod-local pack cache: an unchanged repository is not downloaded again."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import trio

from relay.git import model
from tests.git.gitclient import Git, announce
from tests.helpers import new_key
from tests.services import start_relay


async def test_packs_are_cached_by_the_push_and_fetched_once_by_another_pod(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    # Short private scratch paths: the push hook's unix socket lives under them.
    scratches = [Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp")) for _ in range(2)]
    try:
        await _two_pods(nursery, db_url, tmp_path, scratches)
    finally:
        for scratch in scratches:
            shutil.rmtree(scratch, ignore_errors=True)


async def _two_pods(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, scratches: list[Path]
) -> None:
    # Two relays sharing the database and the object store (the data directory), each
    # with its own pack cache, as two pods would.
    pods = [
        await start_relay(
            nursery,
            db_url,
            tmp_path / "data",
            git_pack_cache_bytes=64 * 1024 * 1024,
            git_scratch_dir=str(scratch),
        )
        for scratch in scratches
    ]
    caches = []
    for pod in pods:
        assert pod.app is not None and pod.app.git is not None and pod.app.git.cache
        caches.append(pod.app.git.cache)
    pusher, reader = caches
    key = new_key()
    owner = (await announce(pods[0].port, key, "cached")).pubkey
    urls = [f"http://127.0.0.1:{pod.port}/git/{owner}/cached.git" for pod in pods]
    git = Git(tmp_path / "home")
    work = tmp_path / "work"
    await git.run("clone", "-q", urls[0], str(work))
    await git.commit(work, "a.txt", "one\n", "one")
    await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=urls[0])

    # The pod that took the push kept the pack it published: its clones read no pack
    # from the object store.
    await git.run("clone", "-q", urls[0], str(tmp_path / "a1"))
    assert pusher.misses == 0 and pusher.hits >= 2  # info/refs and upload-pack

    # The other pod downloads it once, then serves it from its own disk.
    await git.run("clone", "-q", urls[1], str(tmp_path / "b1"))
    assert reader.misses == 1
    hits = reader.hits
    await git.run("clone", "-q", urls[1], str(tmp_path / "b2"))
    assert reader.misses == 1  # nothing downloaded again
    assert reader.hits >= hits + 2
    assert (tmp_path / "b2" / "a.txt").read_text() == "one\n"

    # A new push through the first pod adds a pack: the other pod fetches only that one,
    # and its clones see the new commit.
    await git.commit(work, "b.txt", "two\n", "two")
    await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=urls[0])
    await git.run("clone", "-q", urls[1], str(tmp_path / "b3"))
    assert reader.misses == 2
    assert (tmp_path / "b3" / "b.txt").read_text() == "two\n"
    assert pusher.misses == 0

    # Entries are keyed by the pack digest, pack and idx side by side.
    for cache in caches:
        cached = sorted(p.stem for p in cache.root.glob("*.pack"))
        assert len(cached) == 2 and all(model.is_digest(d) for d in cached)
        assert all((cache.root / f"{d}.idx").exists() for d in cached)


async def test_cache_stays_within_its_size(tmp_path: Path) -> None:
    from relay.git.packcache import PackCache

    cache = PackCache(tmp_path / "cache", max_bytes=3000)
    work = tmp_path / "work"
    work.mkdir()
    digests = []
    for i in range(4):
        digest = model.sha256_hex(str(i).encode())
        pack = work / f"{digest}.pack"
        pack.write_bytes(b"p" * 1000)
        pack.with_suffix(".idx").write_bytes(b"i" * 200)
        await cache.add(digest, pack)
        digests.append(digest)
    kept = sorted(p.stem for p in cache.root.glob("*.pack"))
    assert kept == sorted(digests[-2:])  # the least recently used went first
    target = work / "linked.pack"
    assert await cache.link_into(digests[-1], target) == 1000
    assert target.with_suffix(".idx").read_bytes() == b"i" * 200
    assert await cache.link_into(digests[0], work / "gone.pack") is None


async def test_workers_share_their_caches_by_hard_link(tmp_path: Path) -> None:
    """Two workers' caches (relay.app.pack_cache): a pack one cached is found by the other,
    linked (the same file on disk), and one evicting its own name leaves the other's."""
    from relay.app import pack_cache
    from relay.listening import WorkerRole

    root = tmp_path / "cache"
    first = pack_cache(root, 2 * 3000, WorkerRole(0, 2, "bus", None))
    second = pack_cache(root, 2 * 3000, WorkerRole(1, 2, "bus", None))
    assert (first.root, first.max_bytes) == (root / "worker-0", 3000)
    work = tmp_path / "work"
    work.mkdir()
    digest = model.sha256_hex(b"shared")
    pack = work / f"{digest}.pack"
    pack.write_bytes(b"p" * 1000)
    pack.with_suffix(".idx").write_bytes(b"i" * 200)
    await first.add(digest, pack)
    target = work / "second.pack"
    assert await second.link_into(digest, target) == 1000
    assert (second.hits, second.misses) == (1, 0)
    mine, theirs = second.root / f"{digest}.pack", first.root / f"{digest}.pack"
    assert mine.stat().st_ino == theirs.stat().st_ino  # linked, not copied
    # The first worker fills its cache and evicts the shared pack: the second keeps it.
    for i in range(3):
        other = model.sha256_hex(str(i).encode())
        filler = work / f"{other}.pack"
        filler.write_bytes(b"f" * 1000)
        filler.with_suffix(".idx").write_bytes(b"i" * 200)
        await first.add(other, filler)
    assert not theirs.exists()
    assert await second.link_into(digest, work / "again.pack") == 1000
    # Nothing cached anywhere is a miss.
    assert await second.link_into(model.sha256_hex(b"none"), work / "none.pack") is None
