"""Publishing a push: delta pack, manifest, and the one pointer CAS that commits it.

Runs only after receive-pack reported every ref `ok`. receive-pack runs with
`receive.unpackLimit=1`, so what the client sent stays one pack, already checked by
`index-pack --strict --fix-thin` (self-contained: thin bases are appended) with its idx
beside it; that pack and idx are published as they are. Only when objects arrived loose
(an empty pack), or when the repository has too many packs, is a pack built with
`pack-objects`: of what the new ref tips reach and the parent manifest's tips do not (the
parent's refs, never the client's claim), or of everything for a compaction. Packs and
manifests are written first (write-once, content-addressed);
the CAS with the token read at hydrate time is the commit point. A lost race is the
caller's 409: the receive-pack result was computed against a superseded parent, so it
is never retried here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from relay.git import model
from relay.git.objectstore import GitObjects, LostRace, StoreError, Won
from relay.git.packcache import PackCache
from relay.git.workspace import GitLimits, ResourceLimit, Workspace, run_git

log = logging.getLogger(__name__)

# Past this many packs a push repacks everything reachable into one pack.
COMPACT_AT_PACKS = 96
PACK_HEADER = 12


@dataclass(frozen=True, slots=True)
class Published:
    manifest: model.Manifest
    digest: str
    token: str


@dataclass(frozen=True, slots=True)
class Unchanged:
    pass


@dataclass(frozen=True, slots=True)
class Conflict:
    pass


@dataclass(frozen=True, slots=True)
class Refused:
    """The refs the push would leave break a bound that reads enforce (refs, refname
    length, manifest size) or that the caller sets (`accept`); nothing was written."""

    reason: str


PushOutcome = Published | Unchanged | Conflict | Refused
# The caller's own bound on the refs a push leaves (e.g. the size of the ref-state event).
Acceptance = Callable[[model.Manifest], str | None]


def pack_too_large(limits: GitLimits) -> str:
    return f"pack is larger than RELAY_GIT_MAX_PACK_BYTES ({limits.max_pack_bytes} bytes)"


async def snapshot_refs(ws: Workspace, limits: GitLimits) -> tuple[dict[str, str], str]:
    """The workspace's refs (safe ones only) and its symbolic HEAD target."""
    listed = await run_git(
        ["--git-dir", str(ws.path), "for-each-ref", "--format=%(objectname) %(refname)"],
        home=ws.path,
        timeout=limits.timeout_seconds,
    )
    refs: dict[str, str] = {}
    for line in listed.stdout.decode("utf-8", "replace").splitlines():
        oid, _, name = line.partition(" ")
        if model.is_safe_refname(name) and model.is_oid(oid):
            refs[name] = oid
    head = await trio.to_thread.run_sync((ws.path / "HEAD").read_text)
    return refs, head.removeprefix("ref: ").strip() if head.startswith("ref: ") else ""


def published_head(observed: str, parent: model.Manifest, refs: dict[str, str]) -> str:
    """HEAD as published: the observed branch if it exists, else the parent's, else
    main, master or the first branch; an empty repo keeps the default."""
    if observed.startswith("refs/heads/") and observed in refs:
        return observed
    if parent.head in refs:
        return parent.head
    for candidate in ("refs/heads/main", "refs/heads/master"):
        if candidate in refs:
            return candidate
    branches = sorted(r for r in refs if r.startswith("refs/heads/"))
    if branches:
        return branches[0]
    return observed if model.is_safe_refname(observed) else model.DEFAULT_HEAD


async def _pack(ws: Workspace, revisions: list[str], limits: GitLimits) -> bytes:
    result = await run_git(
        ["--git-dir", str(ws.path), "pack-objects", "--revs", "--stdout", "-q", "--threads=1",
         "--window=10", "--window-memory=64m"],
        home=ws.path,
        timeout=limits.timeout_seconds,
        stdin=("\n".join(revisions) + "\n").encode(),
    )  # fmt: skip
    pack = result.stdout
    if len(pack) > limits.max_pack_bytes:
        raise ResourceLimit(pack_too_large(limits))
    return pack


def _object_count(pack: bytes) -> int:
    return int.from_bytes(pack[8:12], "big") if len(pack) >= PACK_HEADER else 0


def received_packs(ws: Workspace) -> list[Path]:
    """Packs in the workspace that hydration did not put there: what receive-pack kept."""
    pack_dir = ws.path / "objects" / "pack"
    return sorted(
        p for p in pack_dir.glob("pack-*.pack")
        if p.name not in ws.installed and p.with_suffix(".idx").exists()
    )  # fmt: skip


def has_loose_objects(ws: Workspace) -> bool:
    return any(any(d.iterdir()) for d in (ws.path / "objects").glob("[0-9a-f][0-9a-f]"))


async def _store_pack(
    objects: GitObjects, pack_path: Path, cache: PackCache | None, limits: GitLimits
) -> str:
    """Upload a pack and the idx beside it (and keep both in the pod's cache); its key."""
    pack = await trio.to_thread.run_sync(pack_path.read_bytes)
    if len(pack) > limits.max_pack_bytes:
        raise ResourceLimit(pack_too_large(limits))
    digest = await objects.put_pack(pack)
    idx = await trio.to_thread.run_sync(pack_path.with_suffix(".idx").read_bytes)
    await objects.put_idx(digest, idx)
    if cache is not None:
        await cache.add(digest, pack_path)
    return model.pack_key(digest)


async def _build_pack(ws: Workspace, revisions: list[str], limits: GitLimits) -> Path | None:
    """pack-objects of `revisions` with its idx, in the workspace; None if it is empty."""
    pack = await _pack(ws, revisions, limits)
    if _object_count(pack) == 0:
        return None
    pack_path = ws.path / f"built-{model.sha256_hex(pack)}.pack"
    await trio.to_thread.run_sync(pack_path.write_bytes, pack)
    await run_git(["index-pack", str(pack_path)], home=ws.path, timeout=limits.timeout_seconds)
    return pack_path


@dataclass(frozen=True, slots=True)
class Staged:
    """Packs and manifest stored; the pointer CAS (`commit`) is all that is left."""

    manifest: model.Manifest
    digest: str


async def stage(
    objects: GitObjects,
    ws: Workspace,
    limits: GitLimits,
    cache: PackCache | None = None,
    accept: Acceptance | None = None,
    head: str | None = None,
) -> Staged | Unchanged | Refused:
    """Everything before the commit point: nothing a reader sees changes. `head` is the
    branch HEAD should name (a signed state's `HEAD`), kept when the push leaves it."""
    parent = ws.manifest
    refs, observed_head = await snapshot_refs(ws, limits)
    if head is None or head not in refs or not head.startswith("refs/heads/"):
        head = published_head(observed_head, parent, refs)
    if refs == parent.refs and head == parent.head:
        return Unchanged()
    # Before any pack is stored: what reads would refuse is never written.
    trial = model.Manifest(head=head, refs=refs, packs=parent.packs, parent=ws.digest)
    try:
        trial.validate()
    except model.InvalidManifest as exc:
        return Refused(f"over a limit of the repository: {exc}")
    reason = accept(trial) if accept is not None else None
    if reason is not None:
        return Refused(reason)
    packs = list(parent.packs)
    tips = sorted(set(refs.values()))
    if tips:
        new = received_packs(ws)
        full = len(set(packs)) + len(new) >= COMPACT_AT_PACKS
        if full or has_loose_objects(ws):
            negatives = {f"^{oid}" for oid in parent.refs.values()} - {f"^{t}" for t in tips}
            built = await _build_pack(ws, tips if full else tips + sorted(negatives), limits)
            new = [built] if built is not None else []
        added = sum(p.stat().st_size for p in new)
        if ws.hydrated_bytes + added > limits.max_repo_bytes and not full:
            raise ResourceLimit(
                f"the repository would be larger than RELAY_GIT_MAX_REPO_BYTES "
                f"({limits.max_repo_bytes} bytes)"
            )
        keys = [await _store_pack(objects, p, cache, limits) for p in new]
        packs = keys if full else [*packs, *keys]
    manifest = model.Manifest(head=head, refs=refs, packs=tuple(packs), parent=ws.digest)
    try:
        manifest.validate()
    except model.InvalidManifest as exc:  # its new pack keys took it over the size bound
        return Refused(f"over a limit of the repository: {exc}")
    return Staged(manifest, await objects.put_manifest(manifest))


async def commit(
    objects: GitObjects, staged: Staged, pointer_key: str, token: str | None
) -> Published | Conflict:
    """The pointer CAS from the token read at hydrate time: the push's commit point."""
    result = await cas_or_read_back(objects, pointer_key, staged.digest, token)
    if isinstance(result, LostRace):
        return Conflict()
    assert isinstance(result, Won)
    return Published(staged.manifest, staged.digest, result.token)


async def cas_or_read_back(
    objects: GitObjects, key: str, digest: str, if_match: str | None
) -> Won | LostRace:
    """The pointer CAS; when its answer is lost (the store may or may not have applied it),
    the pointer is read back: naming our manifest, the CAS won (a manifest digest is
    unique to its content and parent), else the failure stands."""
    try:
        return await objects.cas_pointer(key, digest, if_match)
    except StoreError:
        current = await objects.read_pointer(key)
        if current is not None and current[1] == digest:
            log.warning("the answer to the CAS of %s was lost; the pointer shows it won", key)
            return Won(current[0])
        raise
