"""The Nostr event: shape checks, canonical id, BIP-340 signature (NIP-01)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson
from coincurve import PrivateKey, PublicKeyXOnly

MAX_KIND = 65535
# created_at must fit a Postgres bigint and a JSON number every client can read.
MAX_TIMESTAMP = 2**53 - 1

Tags = tuple[tuple[str, ...], ...]


class InvalidEvent(ValueError):
    """The event breaks a NIP-01 rule; the message is the reason sent to the client."""


_LOWER_HEX = re.compile(r"[0-9a-f]*")


def is_hex(value: object, length: int) -> bool:
    """Exactly `length` lowercase hex characters."""
    return (
        isinstance(value, str)
        and len(value) == length
        and _LOWER_HEX.fullmatch(value) is not None
    )


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    pubkey: str
    created_at: int
    kind: int
    tags: Tags
    content: str
    sig: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pubkey": self.pubkey,
            "created_at": self.created_at,
            "kind": self.kind,
            "tags": [list(t) for t in self.tags],
            "content": self.content,
            "sig": self.sig,
        }

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict()).decode()

    def first_tag_value(self, name: str) -> str | None:
        for tag in self.tags:
            if len(tag) >= 2 and tag[0] == name:
                return tag[1]
        return None

    def tag_values(self, name: str) -> list[str]:
        return [tag[1] for tag in self.tags if len(tag) >= 2 and tag[0] == name]

    def has_tag(self, name: str) -> bool:
        return any(tag and tag[0] == name for tag in self.tags)


def serialize_for_id(
    pubkey: str, created_at: int, kind: int, tags: Tags | list[list[str]], content: str
) -> bytes:
    """NIP-01 canonical form; orjson escapes exactly the characters NIP-01 lists."""
    return orjson.dumps([0, pubkey, created_at, kind, tags, content])


def compute_id(
    pubkey: str, created_at: int, kind: int, tags: Tags | list[list[str]], content: str
) -> str:
    return hashlib.sha256(serialize_for_id(pubkey, created_at, kind, tags, content)).hexdigest()


def parse_event(obj: object) -> Event:
    """Check the shape of a decoded event object; does not check id or signature."""
    if not isinstance(obj, dict):
        raise InvalidEvent("event must be a JSON object")
    expected = {"id", "pubkey", "created_at", "kind", "tags", "content", "sig"}
    missing = expected - obj.keys()
    if missing:
        raise InvalidEvent(f"event is missing {', '.join(sorted(missing))}")
    if not is_hex(obj["id"], 64):
        raise InvalidEvent("id must be 64 lowercase hex characters")
    if not is_hex(obj["pubkey"], 64):
        raise InvalidEvent("pubkey must be 64 lowercase hex characters")
    if not is_hex(obj["sig"], 128):
        raise InvalidEvent("sig must be 128 lowercase hex characters")
    created_at, kind = obj["created_at"], obj["kind"]
    if type(created_at) is not int or not 0 <= created_at <= MAX_TIMESTAMP:
        raise InvalidEvent("created_at must be a non-negative integer timestamp")
    if type(kind) is not int or not 0 <= kind <= MAX_KIND:
        raise InvalidEvent(f"kind must be an integer between 0 and {MAX_KIND}")
    content = obj["content"]
    if not isinstance(content, str):
        raise InvalidEvent("content must be a string")
    raw_tags = obj["tags"]
    if not isinstance(raw_tags, list):
        raise InvalidEvent("tags must be an array of arrays of strings")
    tags: list[tuple[str, ...]] = []
    for tag in raw_tags:
        if not isinstance(tag, list) or not all(isinstance(v, str) for v in tag):
            raise InvalidEvent("tags must be an array of arrays of strings")
        tags.append(tuple(tag))
    return Event(
        id=obj["id"],
        pubkey=obj["pubkey"],
        created_at=created_at,
        kind=kind,
        tags=tuple(tags),
        content=content,
        sig=obj["sig"],
    )


def check_id_and_signature(event: Event) -> None:
    expected = compute_id(event.pubkey, event.created_at, event.kind, event.tags, event.content)
    if expected != event.id:
        raise InvalidEvent("event id does not match its content")
    if not verify_signature(event):
        raise InvalidEvent("signature does not verify")


def verify_signature(event: Event) -> bool:
    try:
        key = PublicKeyXOnly(bytes.fromhex(event.pubkey))
        return bool(key.verify(bytes.fromhex(event.sig), bytes.fromhex(event.id)))
    except (ValueError, TypeError):
        return False


def next_created_at(now: float, previous: int | None) -> int:
    """The created_at of the next version of a relay-signed replaceable or addressable
    event: now, and strictly after the previous one (a tie would be settled by the lower
    id, not by which is newer)."""
    return max(int(now), (previous or 0) + 1)


def sign_event(
    secret: PrivateKey,
    *,
    kind: int,
    content: str = "",
    tags: list[list[str]] | None = None,
    created_at: int,
) -> Event:
    """Build and sign an event: used for relay-signed events and by tests."""
    pubkey = secret.public_key_xonly.format().hex()
    tag_list = tags or []
    event_id = compute_id(pubkey, created_at, kind, tag_list, content)
    sig = secret.sign_schnorr(bytes.fromhex(event_id)).hex()
    return Event(
        id=event_id,
        pubkey=pubkey,
        created_at=created_at,
        kind=kind,
        tags=tuple(tuple(t) for t in tag_list),
        content=content,
        sig=sig,
    )
