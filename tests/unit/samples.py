"""Fixed keys, a fixed clock, limits and signed events for the unit tests of the protocol
core (messages, filters, the session, the acceptance rules)."""

from __future__ import annotations

from typing import Any

import orjson
from coincurve import PrivateKey

from relay.events.model import Event, sign_event
from relay.protocol.filters import Filter, parse_filter
from relay.protocol.limits import Limits

ALICE = PrivateKey((11).to_bytes(32, "big"))
BOB = PrivateKey((12).to_bytes(32, "big"))
ALICE_PK = ALICE.public_key_xonly.format().hex()
BOB_PK = BOB.public_key_xonly.format().hex()
NOW = 1_700_000_000

LIMITS = Limits()
SMALL = Limits(
    max_filters=2,
    max_filter_values=3,
    max_limit=10,
    default_limit=5,
    max_subid_length=8,
    max_subscriptions=2,
)


def event(
    key: PrivateKey = ALICE,
    *,
    kind: int = 1,
    content: str = "",
    tags: list[list[str]] | None = None,
    created_at: int = NOW,
) -> Event:
    return sign_event(key, kind=kind, content=content, tags=tags, created_at=created_at)


def frame(*parts: Any) -> str:
    return orjson.dumps(list(parts)).decode()


def flt(obj: dict[str, Any], limits: Limits = LIMITS) -> Filter:
    return parse_filter(obj, limits)
