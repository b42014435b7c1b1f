"""Acceptance rules for one event, before storage: limits, NIP-40, NIP-42, NIP-70.

Each check returns the reason for an OK false (with its NIP-01 prefix) or None.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

from relay.events import kinds
from relay.events.model import Event, InvalidEvent, check_id_and_signature
from relay.protocol.hosts import normalize_host
from relay.protocol.limits import Limits


def expiration_of(event: Event) -> int | None:
    """The NIP-40 expiration timestamp; raises InvalidEvent when the tag is malformed."""
    value = event.first_tag_value("expiration")
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 16:
        raise InvalidEvent("expiration tag must hold a unix timestamp")
    return int(value)


def check_shape_limits(event: Event, raw_size: int, limits: Limits, now: int) -> str | None:
    if raw_size > limits.max_event_bytes:
        return f"invalid: event is larger than {limits.max_event_bytes} bytes"
    if len(event.tags) > limits.max_event_tags:
        return f"invalid: event has more than {limits.max_event_tags} tags"
    for tag in event.tags:
        if len(tag) >= 2 and len(tag[0]) == 1:
            if len(tag[1].encode()) > limits.max_tag_value_bytes:
                return (
                    f"invalid: single-letter tag values are limited to "
                    f"{limits.max_tag_value_bytes} bytes"
                )
            if "\x00" in tag[1]:
                # Indexed as PostgreSQL text, which cannot hold NUL.
                return "invalid: single-letter tag values must not contain NUL characters"
    if event.created_at > now + limits.max_future_seconds:
        return (
            f"invalid: created_at is more than {limits.max_future_seconds} seconds in the future"
        )
    try:
        expiration = expiration_of(event)
    except InvalidEvent as exc:
        return f"invalid: {exc}"
    if expiration is not None and expiration <= now:
        return "invalid: event has expired"
    return None


def check_signature(event: Event) -> str | None:
    try:
        check_id_and_signature(event)
    except InvalidEvent as exc:
        return f"invalid: {exc}"
    return None


def check_publishable(event: Event, authenticated: Collection[str]) -> str | None:
    """Rules that depend on who is connected (NIP-42 kind, NIP-70 protection)."""
    if event.kind == kinds.AUTH:
        return "invalid: kind 22242 is only accepted in AUTH messages"
    if event.has_tag("-") and event.pubkey not in authenticated:
        if not authenticated:
            return "auth-required: this event may only be published by its author"
        return "blocked: this event may only be published by its author"
    return None


def check_auth_event(
    event: Event, challenge: str, hosts: frozenset[str], now: int, limits: Limits
) -> str | None:
    """NIP-42: kind, challenge, relay host (any name of the connection's community) and
    freshness of an AUTH event."""
    if event.kind != kinds.AUTH:
        return f"invalid: AUTH event must be kind {kinds.AUTH}"
    if abs(now - event.created_at) > limits.auth_window_seconds:
        return f"invalid: AUTH event created_at must be within {limits.auth_window_seconds} s"
    if event.first_tag_value("challenge") != challenge:
        return "invalid: AUTH challenge does not match"
    relay_url = event.first_tag_value("relay") or ""
    try:
        relay_host = normalize_host(urlsplit(relay_url).netloc)
    except ValueError:
        relay_host = None
    if relay_host not in hosts:
        return "invalid: AUTH relay tag does not name this relay"
    return check_signature(event)
