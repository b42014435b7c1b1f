"""One `ObjectStore` interface for git state, with typed outcomes and errors.

Outcomes are values: a read finds an object (`Found`, body and revision token from one
request) or nothing (`None`); a conditional write `Won` (with the new token) or `LostRace`.
Failures are exceptions of `StoreError`: the backend answered something it should not
have (`BackendError`), never answered at all (`TransportError`), or returned bytes that
do not match their key (`DigestMismatch`) or are too large (`TooLarge`).

The store-independent rules (content-addressed keys computed here from the bytes,
"already exists" is success for immutable writes, verified reads) live in `GitObjects`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from relay.git import model


@dataclass(frozen=True, slots=True)
class Found:
    body: bytes
    token: str


@dataclass(frozen=True, slots=True)
class Won:
    token: str


@dataclass(frozen=True, slots=True)
class LostRace:
    pass


CasResult = Won | LostRace


class StoreError(Exception):
    """The object store failed; the operation's outcome is unknown or unusable."""


class BackendError(StoreError):
    """The store answered, but not with an outcome we can classify (403, 5xx, no ETag)."""


class TransportError(StoreError):
    """No HTTP answer at all: connection refused or reset, or a timeout."""


class DigestMismatch(StoreError):
    """The bytes read do not hash to the digest in their key."""


class TooLarge(StoreError):
    """The object is larger than the caller allows."""


@dataclass(frozen=True, slots=True)
class Listed:
    """One object of a listing: its key, when it was last written (Unix seconds), its size."""

    key: str
    modified: float
    size: int


class ObjectStore(Protocol):
    """The primitive operations each backend provides with the same semantics."""

    async def get(self, key: str, max_bytes: int | None = None) -> Found | None:
        """Body and revision token from one read; None if absent; TooLarge over max_bytes."""

    async def put(self, key: str, body: bytes, if_match: str | None) -> CasResult:
        """Conditional write: create-only when if_match is None, else replace-if-unchanged."""

    async def delete(self, key: str) -> None:
        """Remove an object if present (probe clean-up and `relay gc` only)."""

    async def list(self, prefix: str) -> list[Listed]:
        """Every object whose key starts with `prefix` (`relay gc` only)."""

    async def aclose(self) -> None:
        """Release connections."""


class GitObjects:
    """Git state on any ObjectStore: immutable content-addressed objects and the pointer."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    async def put_immutable(self, prefix: str, data: bytes) -> str:
        """Write `prefix + sha256(data)` create-only; returns the key. Existing is success."""
        key = prefix + model.sha256_hex(data)
        await self.store.put(key, data, None)
        return key

    async def put_pack(self, data: bytes) -> str:
        return model.digest_of_key(await self.put_immutable(model.PACKS, data))

    async def put_manifest(self, manifest: model.Manifest) -> str:
        data = manifest.validate().canonical_bytes()
        return model.digest_of_key(await self.put_immutable(model.MANIFESTS, data))

    async def put_idx(self, pack_digest: str, data: bytes) -> None:
        """The idx sidecar is keyed by its pack's digest; readers check it with git."""
        await self.store.put(model.idx_key(pack_digest), data, None)

    async def get_verified(self, key: str, max_bytes: int) -> bytes:
        """A content-addressed object whose bytes must hash to its key's digest."""
        expected = model.digest_of_key(key)
        found = await self.store.get(key, max_bytes)
        if found is None:
            raise BackendError(f"{key} is missing from the object store")
        if len(found.body) > max_bytes:
            raise TooLarge(f"{key} is larger than {max_bytes} bytes")
        if model.sha256_hex(found.body) != expected:
            raise DigestMismatch(f"{key} does not match its digest")
        return found.body

    async def get_manifest(self, digest: str) -> model.Manifest:
        data = await self.get_verified(model.manifest_key(digest), model.MAX_MANIFEST_BYTES)
        try:
            return model.Manifest.from_bytes(data)
        except model.InvalidManifest as exc:
            raise BackendError(f"manifest {digest} is invalid: {exc}") from None

    async def get_idx(self, pack_digest: str, max_bytes: int) -> bytes | None:
        found = await self.store.get(model.idx_key(pack_digest), max_bytes)
        return None if found is None else found.body

    async def read_pointer(self, key: str) -> tuple[str, str] | None:
        """(revision token, manifest digest) of a pointer, from one read; None if absent."""
        found = await self.store.get(key, 1024)
        if found is None:
            return None
        try:
            return found.token, model.parse_pointer(found.body)
        except model.InvalidManifest as exc:
            raise BackendError(f"{key}: {exc}") from None

    async def cas_pointer(self, key: str, manifest_digest: str, if_match: str | None) -> CasResult:
        """The only write of a pointer: create-only (if_match None) or replace-if-unchanged."""
        return await self.store.put(key, model.pointer_body(manifest_digest), if_match)
