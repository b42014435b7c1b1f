"""The git state model, pure: repo ids, object keys, the manifest and the pointer body.

Packs, idx sidecars and manifests are content-addressed and shared by every repo; the only
mutable object is a repo's pointer, whose body is the bare hex digest of its manifest.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

MANIFEST_VERSION = 1
DEFAULT_HEAD = "refs/heads/main"
MAX_MANIFEST_PACKS = 128
MAX_MANIFEST_REFS = 10_000
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_REFNAME_BYTES = 4096

_REPO_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_OWNER = re.compile(r"^[0-9a-f]{64}$")
_DIGEST = _OWNER
_OID = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_REFNAME_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_PACK_KEY = re.compile(r"^packs/[0-9a-f]{64}$")


class InvalidName(ValueError):
    """A repo id, owner or refname that must be refused; the message says why."""


class InvalidManifest(ValueError):
    """Manifest bytes or fields that break a rule of the model."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def normalize_repo_id(raw: str) -> str:
    """The repo id with a trailing `.git` removed; raises InvalidName when unsafe."""
    repo_id = raw.removesuffix(".git")
    if not _REPO_ID.fullmatch(repo_id):
        raise InvalidName("repo id must be 1-64 characters of A-Z a-z 0-9 . _ -")
    if repo_id.startswith("."):
        raise InvalidName("repo id must not start with '.'")
    if ".." in repo_id:
        raise InvalidName("repo id must not contain '..'")
    return repo_id


def validate_owner(owner: str) -> str:
    if not _OWNER.fullmatch(owner):
        raise InvalidName("owner must be 64 lowercase hex characters")
    return owner


def is_safe_refname(name: str) -> bool:
    """A refname under refs/ by git's own rules (`git check-ref-format`), at most
    MAX_REFNAME_BYTES: no component starting with '.' or ending with '.lock', no '..',
    no '@{', no control characters, space, '~', '^', ':', '?', '*', '[' or backslash,
    no empty component, not ending with '.'. Any other UTF-8 is a refname git accepts."""
    if not name.startswith("refs/") or len(name.encode()) > MAX_REFNAME_BYTES:
        return False
    if _REFNAME_FORBIDDEN.search(name) or ".." in name or "@{" in name or name.endswith("."):
        return False
    return all(
        part and not part.startswith(".") and not part.endswith(".lock") for part in name.split("/")
    )


def is_oid(value: str) -> bool:
    return bool(_OID.fullmatch(value))


def is_digest(value: str) -> bool:
    return bool(_DIGEST.fullmatch(value))


# -- keys -----------------------------------------------------------------------------------

PACKS = "packs/"
IDX = "idx/"
MANIFESTS = "manifests/"


def pack_key(digest: str) -> str:
    return PACKS + digest


def idx_key(pack_digest: str) -> str:
    return IDX + pack_digest


def manifest_key(digest: str) -> str:
    return MANIFESTS + digest


def pointer_key(community_id: int, owner: str, repo_id: str) -> str:
    """The one mutable object of a repo; scoped by community, owner and repo id."""
    return f"repos/{community_id}/{validate_owner(owner)}/{normalize_repo_id(repo_id)}/pointer"


def digest_of_key(key: str) -> str:
    """The hex digest at the end of a content-addressed key."""
    digest = key.rsplit("/", 1)[-1]
    if not is_digest(digest):
        raise InvalidManifest(f"not a content-addressed key: {key!r}")
    return digest


def pack_file_stem(pack_key: str) -> str:
    """The name (without suffix) a stored pack gets in a workspace's objects/pack."""
    return f"pack-{digest_of_key(pack_key)}"


# -- manifest -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Manifest:
    head: str = DEFAULT_HEAD
    refs: dict[str, str] = field(default_factory=dict)
    packs: tuple[str, ...] = ()
    parent: str | None = None
    version: int = MANIFEST_VERSION

    def canonical_bytes(self) -> bytes:
        """Compact JSON, fields in fixed order, refs sorted, packs sorted and de-duplicated."""
        ordered: dict[str, Any] = {
            "version": self.version,
            "head": self.head,
            "refs": {name: self.refs[name] for name in sorted(self.refs)},
            "packs": sorted(set(self.packs)),
            "parent": self.parent,
        }
        return orjson.dumps(ordered)

    @property
    def digest(self) -> str:
        return sha256_hex(self.canonical_bytes())

    def validate(self) -> Manifest:
        if self.version != MANIFEST_VERSION:
            raise InvalidManifest(f"unknown manifest version {self.version}")
        if not is_safe_refname(self.head):
            raise InvalidManifest(f"unsafe HEAD {self.head!r}")
        if len(self.refs) > MAX_MANIFEST_REFS:
            raise InvalidManifest(f"more than {MAX_MANIFEST_REFS} refs")
        for name, oid in self.refs.items():
            if not is_safe_refname(name):
                raise InvalidManifest(f"unsafe refname {name[:80]!r}")
            if not is_oid(oid):
                raise InvalidManifest(f"bad object id for {name}")
        if len(set(self.packs)) > MAX_MANIFEST_PACKS:
            raise InvalidManifest(f"more than {MAX_MANIFEST_PACKS} packs")
        for key in self.packs:
            if not _PACK_KEY.fullmatch(key):
                raise InvalidManifest(f"bad pack key {key[:80]!r}")
        if self.parent is not None and not is_digest(self.parent):
            raise InvalidManifest("parent must be a bare 64-hex manifest digest")
        # Readers refuse a larger one: a manifest that could be written but not read would
        # make its repository unreadable for good.
        if len(self.canonical_bytes()) > MAX_MANIFEST_BYTES:
            raise InvalidManifest(f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
        return self

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InvalidManifest(f"manifest is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise InvalidManifest("manifest must be a JSON object")
        version = obj.get("version")
        if type(version) is not int or version != MANIFEST_VERSION:
            raise InvalidManifest(f"unknown manifest version {obj.get('version')!r}")
        head, refs, packs, parent = (obj.get(k) for k in ("head", "refs", "packs", "parent"))
        if set(obj) != {"version", "head", "refs", "packs", "parent"}:
            raise InvalidManifest("manifest fields must be version, head, refs, packs, parent")
        if not isinstance(head, str) or not isinstance(refs, dict) or not isinstance(packs, list):
            raise InvalidManifest("manifest fields have the wrong types")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in refs.items()):
            raise InvalidManifest("refs must map strings to strings")
        if not all(isinstance(p, str) for p in packs):
            raise InvalidManifest("packs must be strings")
        if parent is not None and not isinstance(parent, str):
            raise InvalidManifest("parent must be a string or null")
        return cls(head=head, refs=dict(refs), packs=tuple(packs), parent=parent).validate()


EMPTY_MANIFEST = Manifest()


def pointer_body(manifest_digest: str) -> bytes:
    if not is_digest(manifest_digest):
        raise InvalidManifest("pointer must name a 64-hex manifest digest")
    return manifest_digest.encode()


def parse_pointer(body: bytes) -> str:
    """The manifest digest a pointer names; raises InvalidManifest when malformed."""
    digest = body.decode("ascii", errors="replace").strip()
    if not is_digest(digest):
        raise InvalidManifest("pointer body is not a 64-hex manifest digest")
    return digest
