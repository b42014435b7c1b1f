"""Which live subscriptions could want an event, without looking at every subscription.

Each filter is filed under the keys of its most selective field: its ids, else its
authors, else the values of its tag with the fewest values, else its kinds, else the
catch-all key. An event then looks up only its own keys (its id, its author, each of its
single-letter tags, its kind, the catch-all), and the subscriptions found there are the
candidates: a superset of the matching ones, which the caller checks with the full filter.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from relay.events.model import Event
from relay.protocol.filters import Filter

Key = tuple[str, ...] | tuple[str, int]
S = TypeVar("S")  # who holds the subscription (a connection's sink), hashable

CATCH_ALL: Key = ("*",)


def filter_keys(flt: Filter) -> set[Key]:
    if flt.ids is not None:
        return {("id", i) for i in flt.ids}
    if flt.authors is not None:
        return {("author", a) for a in flt.authors}
    if flt.tags:
        name, values = min(flt.tags, key=lambda tag: len(tag[1]))
        return {("tag", name, v) for v in values}
    if flt.kinds is not None:
        return {("kind", k) for k in flt.kinds}
    return {CATCH_ALL}


def event_keys(event: Event) -> list[Key]:
    keys: list[Key] = [("id", event.id), ("author", event.pubkey), ("kind", event.kind), CATCH_ALL]
    keys += [("tag", t[0], t[1]) for t in event.tags if len(t) >= 2 and len(t[0]) == 1]
    return keys


class SubscriptionIndex(Generic[S]):
    def __init__(self) -> None:
        self._by_key: dict[Key, dict[S, set[str]]] = {}
        self._keys_of: dict[tuple[S, str], set[Key]] = {}
        self._ids_of: dict[S, set[str]] = {}

    def __len__(self) -> int:
        return len(self._keys_of)

    def add(self, holder: S, sub_id: str, filters: tuple[Filter, ...]) -> None:
        """File a subscription (replacing one of the same holder and id)."""
        self.remove(holder, sub_id)
        keys: set[Key] = set()
        for flt in filters:
            if flt.can_match_anything():
                keys |= filter_keys(flt)
        self._keys_of[(holder, sub_id)] = keys
        self._ids_of.setdefault(holder, set()).add(sub_id)
        for key in keys:
            self._by_key.setdefault(key, {}).setdefault(holder, set()).add(sub_id)

    def remove(self, holder: S, sub_id: str) -> None:
        ids_of = self._ids_of.get(holder)
        if ids_of is not None:
            ids_of.discard(sub_id)
            if not ids_of:
                del self._ids_of[holder]
        for key in self._keys_of.pop((holder, sub_id), ()):
            holders = self._by_key[key]
            ids = holders[holder]
            ids.discard(sub_id)
            if not ids:
                del holders[holder]
                if not holders:
                    del self._by_key[key]

    def remove_holder(self, holder: S) -> None:
        for sub_id in list(self._ids_of.get(holder, ())):
            self.remove(holder, sub_id)

    def candidates(self, event: Event) -> dict[S, set[str]]:
        """Holders and their subscription ids that may match `event`."""
        found: dict[S, set[str]] = {}
        by_key = self._by_key
        for key in event_keys(event):
            holders = by_key.get(key)
            if holders:
                for holder, ids in holders.items():
                    mine = found.get(holder)
                    if mine is None:
                        found[holder] = set(ids)
                    else:
                        mine |= ids
        return found
