"""NIP-01 filters: parsing with limits, and the pure matcher used for live events."""

from __future__ import annotations

import re
from dataclasses import dataclass

from relay.events.model import MAX_KIND, MAX_TIMESTAMP, Event, is_hex
from relay.protocol.limits import Limits

TAG_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

# NIP-50: the longest `search` string a filter may carry, in characters.
MAX_SEARCH_LENGTH = 256
# A NIP-50 extension (`language:en`, `include:spam`, `domain:example.com`): a word, a colon
# and a value with no space. None is supported, so each is dropped from the query; a URL
# (`https://…`) is not one and stays.
_EXTENSION = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*:(?!//)\S*$")


def search_words(text: str) -> str:
    """The query of a NIP-50 `search` string: its words without the extensions."""
    return " ".join(word for word in text.split() if not _EXTENSION.match(word))


class InvalidFilter(ValueError):
    """The filter breaks a rule; the message is the reason sent in CLOSED."""


@dataclass(frozen=True, slots=True)
class Filter:
    ids: frozenset[str] | None = None
    authors: frozenset[str] | None = None
    kinds: frozenset[int] | None = None
    tags: tuple[tuple[str, frozenset[str]], ...] = ()
    since: int | None = None
    until: int | None = None
    # The clamped limit for the stored-events query; None only in filters built by code.
    limit: int | None = None
    # NIP-50: the query words (extensions dropped), matched by the store's full-text search.
    search: str | None = None

    def matches(self, event: Event) -> bool:
        if self.search is not None:
            # Search results are ranked over the stored set (NIP-50): a search filter
            # answers with stored events only and matches no live event.
            return False
        if self.ids is not None and event.id not in self.ids:
            return False
        if self.authors is not None and event.pubkey not in self.authors:
            return False
        if self.kinds is not None and event.kind not in self.kinds:
            return False
        if self.since is not None and event.created_at < self.since:
            return False
        if self.until is not None and event.created_at > self.until:
            return False
        for name, values in self.tags:
            if not any(
                len(tag) >= 2 and tag[0] == name and tag[1] in values for tag in event.tags
            ):
                return False
        return True

    def can_match_anything(self) -> bool:
        """False when an empty list or an inverted range makes the filter match nothing."""
        if self.ids is not None and not self.ids:
            return False
        if self.authors is not None and not self.authors:
            return False
        if self.kinds is not None and not self.kinds:
            return False
        if any(not values for _, values in self.tags):
            return False
        if self.search is not None and not self.search:
            return False
        return not (
            self.since is not None and self.until is not None and self.since > self.until
        )


def _string_list(value: object, field: str, limits: Limits) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidFilter(f"{field} must be an array of strings")
    if len(value) > limits.max_filter_values:
        raise InvalidFilter(f"too many values in {field} (max {limits.max_filter_values})")
    return value


def _hex_set(value: object, field: str, limits: Limits) -> frozenset[str]:
    items = _string_list(value, field, limits)
    for item in items:
        if not is_hex(item, 64):
            raise InvalidFilter(f"{field} must contain 64 lowercase hex characters each")
    return frozenset(items)


def _timestamp(value: object, field: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_TIMESTAMP:
        raise InvalidFilter(f"{field} must be a non-negative integer timestamp")
    return value


def parse_filter(obj: object, limits: Limits) -> Filter:
    if not isinstance(obj, dict):
        raise InvalidFilter("a filter must be a JSON object")
    ids = authors = None
    kinds: frozenset[int] | None = None
    tags: list[tuple[str, frozenset[str]]] = []
    since = until = None
    search: str | None = None
    limit = limits.default_limit
    for key, value in obj.items():
        if key == "ids":
            ids = _hex_set(value, "ids", limits)
        elif key == "authors":
            authors = _hex_set(value, "authors", limits)
        elif key == "kinds":
            if not isinstance(value, list) or not all(
                type(k) is int and 0 <= k <= MAX_KIND for k in value
            ):
                raise InvalidFilter(f"kinds must be an array of integers from 0 to {MAX_KIND}")
            if len(value) > limits.max_filter_values:
                raise InvalidFilter(f"too many values in kinds (max {limits.max_filter_values})")
            kinds = frozenset(value)
        elif key == "since":
            since = _timestamp(value, "since")
        elif key == "until":
            until = _timestamp(value, "until")
        elif key == "limit":
            if type(value) is not int or value < 0:
                raise InvalidFilter("limit must be a non-negative integer")
            limit = min(value, limits.max_limit)
        elif key == "search":
            if not isinstance(value, str):
                raise InvalidFilter("search must be a string")
            if len(value) > MAX_SEARCH_LENGTH:
                raise InvalidFilter(f"search is longer than {MAX_SEARCH_LENGTH} characters")
            if "\x00" in value:
                raise InvalidFilter("search must not contain NUL characters")
            search = search_words(value)
        elif len(key) == 2 and key[0] == "#" and key[1] in TAG_LETTERS:
            values = _string_list(value, key, limits)
            if any("\x00" in v for v in values):
                # No stored tag value holds one (PostgreSQL text cannot).
                raise InvalidFilter(f"{key} values must not contain NUL characters")
            tags.append((key[1], frozenset(values)))
        else:
            raise InvalidFilter(f"unsupported filter field {key[:32]!r}")
    tags.sort()
    return Filter(
        ids=ids,
        authors=authors,
        kinds=kinds,
        tags=tuple(tags),
        since=since,
        until=until,
        limit=limit,
        search=search,
    )


def parse_filters(objs: list[object], limits: Limits) -> tuple[Filter, ...]:
    if not objs:
        raise InvalidFilter("at least one filter is required")
    if len(objs) > limits.max_filters:
        raise InvalidFilter(f"too many filters (max {limits.max_filters})")
    return tuple(parse_filter(obj, limits) for obj in objs)


def matches_any(filters: tuple[Filter, ...], event: Event) -> bool:
    return any(f.matches(event) for f in filters)
