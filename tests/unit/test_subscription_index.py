"""The live-subscription index never loses a match, and forgets what is closed."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.events.model import Event
from relay.protocol.filters import matches_any, parse_filters
from relay.protocol.limits import Limits
from relay.pubsub.index import CATCH_ALL, SubscriptionIndex, filter_keys
from tests.query_spec import Spec, filter_dict, spec

LIMITS = Limits()
HOLDERS = ("conn-a", "conn-b", "conn-c")
SUB_IDS = ("s1", "s2", "s3")


def _filters(raw: list[dict[str, Any]]) -> Any:
    return parse_filters(raw, LIMITS)


subscription = st.tuples(
    st.sampled_from(HOLDERS),
    st.sampled_from(SUB_IDS),
    st.lists(filter_dict([]), min_size=1, max_size=3),
)


def matching(subs: dict[tuple[str, str], Any], event: Event) -> set[tuple[str, str]]:
    return {key for key, filters in subs.items() if matches_any(filters, event)}


def candidates(index: SubscriptionIndex[str], event: Event) -> set[tuple[str, str]]:
    return {(h, sid) for h, ids in index.candidates(event).items() for sid in ids}


@settings(max_examples=200, deadline=None)
@given(
    subs=st.lists(subscription, min_size=1, max_size=12),
    specs=st.lists(spec, min_size=1, max_size=6),
    closes=st.lists(st.tuples(st.sampled_from(HOLDERS), st.sampled_from(SUB_IDS)), max_size=4),
    gone=st.sampled_from(HOLDERS),
)
def test_candidates_include_every_match(
    subs: list[tuple[str, str, list[dict[str, Any]]]],
    specs: list[Spec],
    closes: list[tuple[str, str]],
    gone: str,
) -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    live: dict[tuple[str, str], Any] = {}
    for holder, sub_id, raw in subs:  # a repeated id replaces the subscription
        filters = _filters(raw)
        index.add(holder, sub_id, filters)
        live[(holder, sub_id)] = filters
    events = [s.sign() for s in specs]
    for event in events:
        assert matching(live, event) <= candidates(index, event)
    for holder, sub_id in closes:
        index.remove(holder, sub_id)
        live.pop((holder, sub_id), None)
    index.remove_holder(gone)
    live = {key: f for key, f in live.items() if key[0] != gone}
    assert len(index) == len(live)
    for event in events:
        found = candidates(index, event)
        assert matching(live, event) <= found
        assert found <= set(live)  # nothing closed is ever a candidate
    for holder in HOLDERS:
        index.remove_holder(holder)
    assert len(index) == 0 and index.candidates(events[0]) == {}


def test_filters_are_filed_under_their_most_selective_field() -> None:
    a, b = "aa" * 32, "bb" * 32

    def keys(raw: dict[str, Any]) -> set[Any]:
        (flt,) = _filters([raw])
        return filter_keys(flt)

    assert keys({"ids": [a], "authors": [b]}) == {("id", a)}
    assert keys({"authors": [a, b], "kinds": [1]}) == {("author", a), ("author", b)}
    assert keys({"#t": ["x", "y"], "#p": [a], "kinds": [1]}) == {("tag", "p", a)}
    assert keys({"kinds": [1, 7]}) == {("kind", 1), ("kind", 7)}
    assert keys({"since": 5}) == {CATCH_ALL}


def test_an_unrelated_subscription_is_not_a_candidate() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add("conn", "follows", _filters([{"authors": ["aa" * 32], "kinds": [1]}]))
    index.add("conn", "mentions", _filters([{"#p": ["cc" * 32]}]))
    event = Spec(key=0, kind=1, created_at=1_700_000_000, tags=(), content="x").sign()
    assert index.candidates(event) == {}
    mention = Spec(0, 1, 1_700_000_000, (("p", "cc" * 32),), "x").sign()
    assert index.candidates(mention) == {"conn": {"mentions"}}
