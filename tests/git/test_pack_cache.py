"""The pod-local pack cache: an unchanged repository is not downloaded again."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import trio

from relay.git import model
from tests.conftest import start_relay
from tests.git.gitclient import Git, announce
from tests.helpers import new_key


async def test_second_clone_uses_the_cache_and_a_new_push_is_fetched(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    # A short private scratch path: the push hook's unix socket lives under it.
    scratch = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
    try:
        await _second_clone_uses_the_cache(nursery, db_url, tmp_path, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


async def _second_clone_uses_the_cache(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, scratch: Path
) -> None:
    relay = await start_relay(
        nursery, db_url, tmp_path / "data", git_pack_cache_bytes=64 * 1024 * 1024,
        git_scratch_dir=str(scratch),
    )  # fmt: skip
    assert relay.app is not None and relay.app.git is not None
    cache = relay.app.git.cache
    assert cache is not None
    key = new_key()
    owner = (await announce(relay.port, key, "cached")).pubkey
    url = f"http://127.0.0.1:{relay.port}/git/{owner}/cached.git"
    git = Git(tmp_path / "home")
    work = tmp_path / "work"
    await git.run("clone", "-q", url, str(work))
    await git.commit(work, "a.txt", "one\n", "one")
    await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=url)

    await git.run("clone", "-q", url, str(tmp_path / "c1"))
    first_misses, first_hits = cache.misses, cache.hits
    assert first_misses >= 1  # the pushed pack came from the object store once

    await git.run("clone", "-q", url, str(tmp_path / "c2"))
    assert cache.misses == first_misses  # nothing downloaded again
    assert cache.hits >= first_hits + 2  # info/refs and upload-pack both hydrated from disk
    assert (tmp_path / "c2" / "a.txt").read_text() == "one\n"

    # A new push adds a pack: only that one is fetched, and clones see the new commit.
    await git.commit(work, "b.txt", "two\n", "two")
    await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=url)
    await git.run("clone", "-q", url, str(tmp_path / "c3"))
    assert cache.misses == first_misses + 1
    assert (tmp_path / "c3" / "b.txt").read_text() == "two\n"

    # Entries are keyed by the pack digest, pack and idx side by side.
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
