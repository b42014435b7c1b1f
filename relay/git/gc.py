"""`relay gc`: remove the git objects no repository can reach any more.

Packs, idx files and manifests are write-once and content-addressed; request paths never
delete them (DESIGN invariant 5). Compaction, deleted repositories, failed or lost pushes
leave some behind, and the conformance probe of an older relay left `probe/` objects. A pass:

1. lists every pointer (`repos/.../pointer`) and reads the manifest each names, with its
   packs and their idx files: all reachable. A pointer a deletion failed to remove is still
   a pointer (the repository is restorable), so what it reaches is kept.
2. also keeps, for each current manifest younger than the grace period, its parent manifest
   and what that reaches: a clone that read the pointer just before a push compacted the
   packs finishes within the grace period.
3. removes every other manifest, pack, idx and probe object older than the grace period
   (an in-flight push's objects are younger: they are never touched).

Several pods may run it at once: it only removes what no pointer reaches, and removing an
object twice is harmless. `--dry-run` lists what it would remove.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from relay.git import model
from relay.git.objectstore import GitObjects, Listed
from relay.git.probe import PROBE_PREFIX

log = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 3600.0
POINTERS = "repos/"
POINTER_NAME = "/pointer"
COLLECTED = (model.MANIFESTS, model.PACKS, model.IDX, PROBE_PREFIX)


@dataclass
class GcReport:
    pointers: int = 0
    reachable: int = 0
    young: int = 0  # unreachable, but within the grace period
    removed: list[Listed] = field(default_factory=list)

    @property
    def removed_bytes(self) -> int:
        return sum(item.size for item in self.removed)


async def _reach(
    objects: GitObjects,
    digest: str,
    keep: set[str],
    young: set[str],
    follow_parent: bool,
) -> None:
    """Mark a manifest, its packs and their idx files; its parent too while it is young."""
    key = model.manifest_key(digest)
    if key in keep:
        return
    keep.add(key)
    manifest = await objects.get_manifest(digest)
    for pack in manifest.packs:
        keep.add(pack)
        keep.add(model.idx_key(model.digest_of_key(pack)))
    if follow_parent and manifest.parent is not None and key in young:
        await _reach(objects, manifest.parent, keep, young, follow_parent=False)


async def collect(
    objects: GitObjects,
    *,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    dry_run: bool = False,
    now: float | None = None,
) -> GcReport:
    now = time.time() if now is None else now
    report = GcReport()
    # Listed first: what is written after this is no candidate (and young anyway).
    listed = {prefix: await objects.store.list(prefix) for prefix in COLLECTED}
    young = {item.key for items in listed.values() for item in items
             if now - item.modified < grace_seconds}  # fmt: skip
    keep: set[str] = set()
    for pointer in await objects.store.list(POINTERS):
        if not pointer.key.endswith(POINTER_NAME):
            continue
        current = await objects.read_pointer(pointer.key)
        if current is None:
            continue
        report.pointers += 1
        await _reach(objects, current[1], keep, young, follow_parent=True)
    for items in listed.values():
        for item in items:
            if item.key in keep:
                report.reachable += 1
            elif item.key in young:
                report.young += 1
            else:
                report.removed.append(item)
                if not dry_run:
                    await objects.store.delete(item.key)
    return report
