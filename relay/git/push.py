"""Publishing a push: delta pack, manifest, and the one pointer CAS that commits it.

Runs only after receive-pack reported every ref `ok`. The delta pack holds what the new
ref tips reach and the parent manifest's tips do not (the parent's refs, never the
client's claim). Packs and manifests are written first (write-once, content-addressed);
the CAS with the token read at hydrate time is the commit point. A lost race is the
caller's 409: the receive-pack result was computed against a superseded parent, so it
is never retried here.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from relay.git import model
from relay.git.objectstore import GitObjects, LostRace, Won
from relay.git.workspace import GitLimits, ResourceLimit, Workspace, run_git

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


PushOutcome = Published | Unchanged | Conflict


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
    head = await run_git(
        ["--git-dir", str(ws.path), "symbolic-ref", "-q", "HEAD"],
        home=ws.path,
        timeout=limits.timeout_seconds,
        check=False,
    )
    return refs, head.stdout.decode().strip()


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
        raise ResourceLimit(f"the pushed pack is larger than {limits.max_pack_bytes} bytes")
    return pack


def _object_count(pack: bytes) -> int:
    return int.from_bytes(pack[8:12], "big") if len(pack) >= PACK_HEADER else 0


async def _upload_pack(objects: GitObjects, ws: Workspace, pack: bytes, limits: GitLimits) -> str:
    digest = await objects.put_pack(pack)
    pack_path = ws.path / f"upload-{digest}.pack"
    await trio.to_thread.run_sync(pack_path.write_bytes, pack)
    await run_git(["index-pack", str(pack_path)], home=ws.path, timeout=limits.timeout_seconds)
    idx = await trio.to_thread.run_sync(pack_path.with_suffix(".idx").read_bytes)
    await objects.put_idx(digest, idx)
    return model.pack_key(digest)


async def publish(
    objects: GitObjects, ws: Workspace, pointer_key: str, limits: GitLimits
) -> PushOutcome:
    parent = ws.manifest
    refs, observed_head = await snapshot_refs(ws, limits)
    head = published_head(observed_head, parent, refs)
    if refs == parent.refs and head == parent.head:
        return Unchanged()
    packs = list(parent.packs)
    tips = sorted(set(refs.values()))
    if tips:
        negatives = sorted({f"^{oid}" for oid in parent.refs.values()} - {f"^{t}" for t in tips})
        full = len(set(packs)) >= COMPACT_AT_PACKS
        pack = await _pack(ws, tips if full else tips + negatives, limits)
        if ws.hydrated_bytes + len(pack) > limits.max_repo_bytes and not full:
            raise ResourceLimit(f"the repository would exceed {limits.max_repo_bytes} bytes")
        if _object_count(pack) > 0:
            key = await _upload_pack(objects, ws, pack, limits)
            packs = [key] if full else [*packs, key]
    manifest = model.Manifest(head=head, refs=refs, packs=tuple(packs), parent=ws.digest).validate()
    digest = await objects.put_manifest(manifest)
    result = await objects.cas_pointer(pointer_key, digest, ws.token)
    if isinstance(result, LostRace):
        return Conflict()
    assert isinstance(result, Won)
    return Published(manifest, digest, result.token)
