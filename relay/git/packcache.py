"""A bounded, digest-keyed cache of packs and their idx files on the pod's own disk.

The object store stays the only truth: an entry is keyed by the sha256 of its pack, so it
can never be stale, and it is made only from a pack that passed its digest check and an
idx that git wrote or that matches the pack. Files appear by atomic rename and are handed to
a request's workspace by hard link. The least recently used entries go first once the
cache is over its size.

Several worker processes of one relay (RELAY_WORKERS) each keep their own cache, a
directory of the shared one with its share of the size, and on a miss look in the others'
first: a pack found there is hard-linked into the worker's own cache (the same file on
disk, never a copy on one filesystem), so a repository one worker fetched is not fetched
again by another. A worker only ever removes files from its own directory; a file another
worker still links stays on disk until the last name goes.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections import OrderedDict
from pathlib import Path

import trio

from relay.git import model

log = logging.getLogger(__name__)


def _place(source: Path, target: Path) -> None:
    """Hard link `source` at `target` (copy across filesystems), replacing nothing."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


class PackCache:
    def __init__(self, root: Path, max_bytes: int, siblings: tuple[Path, ...] = ()) -> None:
        self.root = root
        self.max_bytes = max_bytes
        # The other workers' caches, looked in on a miss.
        self.siblings = siblings
        self._entries: OrderedDict[str, int] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        root.mkdir(parents=True, exist_ok=True)
        for pack in sorted(root.glob("*.pack"), key=lambda p: p.stat().st_mtime):
            digest = pack.stem
            idx = pack.with_suffix(".idx")
            if model.is_digest(digest) and idx.exists():
                self._remember(digest, pack.stat().st_size + idx.stat().st_size)

    def _remember(self, digest: str, size: int) -> None:
        self._entries[digest] = size
        self._bytes += size

    def _paths(self, digest: str) -> tuple[Path, Path]:
        return self.root / f"{digest}.pack", self.root / f"{digest}.idx"

    async def link_into(self, digest: str, pack_path: Path) -> int | None:
        """Put a cached pack and its idx at pack_path (and .idx); its size, or None."""
        if digest not in self._entries and not await self._adopt(digest):
            self.misses += 1
            return None
        pack, idx = self._paths(digest)

        def link() -> int:
            _place(pack, pack_path)
            _place(idx, pack_path.with_suffix(".idx"))
            return pack.stat().st_size

        try:
            size = await trio.to_thread.run_sync(link)
        except OSError as exc:
            log.warning("pack cache entry %s is unusable (%s); dropping it", digest, exc)
            self._forget(digest)
            self.misses += 1
            return None
        self._entries.move_to_end(digest)
        self.hits += 1
        return size

    async def _adopt(self, digest: str) -> bool:
        """Link another worker's cached pack into this cache; whether there was one."""
        for sibling in self.siblings:
            pack = sibling / f"{digest}.pack"
            if pack.exists() and pack.with_suffix(".idx").exists():
                await self.add(digest, pack)
                if digest in self._entries:
                    return True
        return False

    async def add(self, digest: str, pack_path: Path) -> None:
        """Keep a verified pack (and the idx beside it) for the next request."""
        if digest in self._entries or self.max_bytes <= 0:
            return
        pack, idx = self._paths(digest)
        tag = secrets.token_hex(6)

        def store() -> int:
            tmp_pack = self.root / f".{digest}.{tag}.pack"
            tmp_idx = self.root / f".{digest}.{tag}.idx"
            _place(pack_path, tmp_pack)
            _place(pack_path.with_suffix(".idx"), tmp_idx)
            os.replace(tmp_idx, idx)
            os.replace(tmp_pack, pack)
            return pack.stat().st_size + idx.stat().st_size

        try:
            size = await trio.to_thread.run_sync(store)
        except OSError as exc:
            log.warning("could not cache pack %s: %s", digest, exc)
            return
        self._remember(digest, size)
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            oldest = next(iter(self._entries))
            self._forget(oldest)

    def _forget(self, digest: str) -> None:
        self._bytes -= self._entries.pop(digest, 0)
        for path in self._paths(digest):
            path.unlink(missing_ok=True)
