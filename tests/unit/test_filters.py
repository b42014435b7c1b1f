"""relay.protocol.filters: NIP-01 filters parsed from JSON (or refused), and matched
against events."""

from __future__ import annotations

from typing import Any

import pytest

from relay.protocol.filters import Filter, InvalidFilter, matches_any, parse_filter, parse_filters
from relay.protocol.limits import Limits
from tests.unit.samples import ALICE_PK, BOB_PK, LIMITS, SMALL, event, flt


def filter_error(obj: object, limits: Limits = LIMITS) -> str:
    with pytest.raises(InvalidFilter) as caught:
        parse_filter(obj, limits)
    return str(caught.value)


def test_empty_filter_gets_the_default_limit() -> None:
    assert flt({}) == Filter(limit=500)
    assert flt({}, SMALL).limit == 5


def test_limit_is_clamped_and_zero_is_kept() -> None:
    assert flt({"limit": 3}, SMALL).limit == 3
    assert flt({"limit": 10}, SMALL).limit == 10
    assert flt({"limit": 11}, SMALL).limit == 10
    assert flt({"limit": 0}, SMALL).limit == 0


def test_full_filter_parses() -> None:
    parsed = flt(
        {
            "ids": ["aa" * 32],
            "authors": [ALICE_PK, BOB_PK],
            "kinds": [1, 7, 1],
            "#t": ["x", "y"],
            "#e": ["bb" * 32],
            "#T": ["Z"],
            "since": 10,
            "until": 20,
            "limit": 7,
        }
    )
    assert parsed == Filter(
        ids=frozenset({"aa" * 32}),
        authors=frozenset({ALICE_PK, BOB_PK}),
        kinds=frozenset({1, 7}),
        tags=(("T", frozenset({"Z"})), ("e", frozenset({"bb" * 32})), ("t", frozenset({"x", "y"}))),
        since=10,
        until=20,
        limit=7,
    )


def test_tag_order_does_not_matter() -> None:
    assert flt({"#t": ["x"], "#e": ["y"]}) == flt({"#e": ["y"], "#t": ["x"]})


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "a filter must be a JSON object"),
        ("x", "a filter must be a JSON object"),
        ({"ids": "aa"}, "ids must be an array of strings"),
        ({"ids": [1]}, "ids must be an array of strings"),
        ({"ids": ["AA" * 32]}, "ids must contain 64 lowercase hex characters each"),
        ({"ids": ["aa"]}, "ids must contain 64 lowercase hex characters each"),
        ({"authors": ["x" * 64]}, "authors must contain 64 lowercase hex characters each"),
        ({"authors": None}, "authors must be an array of strings"),
        ({"kinds": 1}, "kinds must be an array of integers from 0 to 65535"),
        ({"kinds": [65536]}, "kinds must be an array of integers from 0 to 65535"),
        ({"kinds": [1.0]}, "kinds must be an array of integers from 0 to 65535"),
        ({"kinds": [True]}, "kinds must be an array of integers from 0 to 65535"),
        ({"kinds": ["1"]}, "kinds must be an array of integers from 0 to 65535"),
        ({"since": -1}, "since must be a non-negative integer timestamp"),
        ({"since": 1.5}, "since must be a non-negative integer timestamp"),
        ({"since": "1"}, "since must be a non-negative integer timestamp"),
        ({"until": True}, "until must be a non-negative integer timestamp"),
        ({"until": 2**53}, "until must be a non-negative integer timestamp"),
        ({"limit": -1}, "limit must be a non-negative integer"),
        ({"limit": 1.0}, "limit must be a non-negative integer"),
        ({"limit": False}, "limit must be a non-negative integer"),
        ({"limit": None}, "limit must be a non-negative integer"),
        ({"search": 1}, "search must be a string"),
        ({"search": ["x"]}, "search must be a string"),
        ({"search": None}, "search must be a string"),
        ({"search": "x" * 257}, "search is longer than 256 characters"),
        ({"search": "a\x00b"}, "search must not contain NUL characters"),
        ({"#t": "x"}, "#t must be an array of strings"),
        ({"#t": [1]}, "#t must be an array of strings"),
        ({"foo": 1}, "unsupported filter field 'foo'"),
        ({"#tt": ["x"]}, "unsupported filter field '#tt'"),
        ({"#1": ["x"]}, "unsupported filter field '#1'"),
        ({"#": ["x"]}, "unsupported filter field '#'"),
        ({"#é": ["x"]}, "unsupported filter field '#é'"),
        ({"x" * 50: 1}, "unsupported filter field '" + "x" * 32 + "'"),
    ],
)
def test_filter_errors(obj: object, message: str) -> None:
    assert filter_error(obj) == message


@pytest.mark.parametrize("field", ["ids", "authors"])
def test_too_many_hex_values(field: str) -> None:
    values = [f"{i:064x}" for i in range(4)]
    assert filter_error({field: values}, SMALL) == f"too many values in {field} (max 3)"
    assert flt({field: values[:3]}, SMALL) is not None


def test_too_many_kinds_and_tag_values() -> None:
    assert filter_error({"kinds": [1, 2, 3, 4]}, SMALL) == "too many values in kinds (max 3)"
    assert filter_error({"#t": ["a", "b", "c", "d"]}, SMALL) == "too many values in #t (max 3)"


def test_parse_filters_counts() -> None:
    with pytest.raises(InvalidFilter, match=r"^at least one filter is required$"):
        parse_filters([], SMALL)
    with pytest.raises(InvalidFilter, match=r"^too many filters \(max 2\)$"):
        parse_filters([{}, {}, {}], SMALL)
    assert len(parse_filters([{}, {}], SMALL)) == 2


# --- matching ----------------------------------------------------------------------------------


def test_since_and_until_are_inclusive() -> None:
    f = flt({"since": 100, "until": 200})
    assert not f.matches(event(created_at=99))
    assert f.matches(event(created_at=100))
    assert f.matches(event(created_at=150))
    assert f.matches(event(created_at=200))
    assert not f.matches(event(created_at=201))
    assert flt({"since": 5, "until": 5}).matches(event(created_at=5))


def test_ids_authors_kinds() -> None:
    ev = event(kind=7)
    assert flt({"ids": [ev.id, "00" * 32]}).matches(ev)
    assert not flt({"ids": ["00" * 32]}).matches(ev)
    assert flt({"authors": [BOB_PK, ALICE_PK]}).matches(ev)
    assert not flt({"authors": [BOB_PK]}).matches(ev)
    assert flt({"kinds": [1, 7]}).matches(ev)
    assert not flt({"kinds": [1]}).matches(ev)
    assert flt({}).matches(ev)


def test_tag_matching() -> None:
    ev = event(tags=[["t", "nostr", "extra"], ["e", "ab" * 32], ["p"], ["T", "Up"]])
    assert flt({"#t": ["nostr"]}).matches(ev)
    assert flt({"#t": ["other", "nostr"]}).matches(ev)
    # Only the first value of a tag is its value.
    assert not flt({"#t": ["extra"]}).matches(ev)
    assert flt({"#e": ["ab" * 32]}).matches(ev)
    # A tag with no value matches nothing.
    assert not flt({"#p": [""]}).matches(ev)
    # Tag names are case-sensitive.
    assert flt({"#T": ["Up"]}).matches(ev)
    assert not flt({"#t": ["Up"]}).matches(ev)
    assert not flt({"#T": ["nostr"]}).matches(ev)
    # Several tag conditions must all hold.
    assert flt({"#t": ["nostr"], "#e": ["ab" * 32]}).matches(ev)
    assert not flt({"#t": ["nostr"], "#e": ["cd" * 32]}).matches(ev)
    assert not flt({"#x": ["nostr"]}).matches(ev)


def test_all_conditions_must_hold() -> None:
    ev = event(kind=1, tags=[["t", "a"]], created_at=50)
    assert flt({"kinds": [1], "authors": [ALICE_PK], "#t": ["a"], "since": 50}).matches(ev)
    assert not flt({"kinds": [1], "authors": [BOB_PK], "#t": ["a"]}).matches(ev)
    assert not flt({"kinds": [1], "#t": ["a"], "until": 49}).matches(ev)


def test_limit_does_not_affect_matching() -> None:
    assert flt({"limit": 0}).matches(event())


def test_matches_any_is_or() -> None:
    ev = event(kind=1)
    assert matches_any((flt({"kinds": [2]}), flt({"kinds": [1]})), ev)
    assert not matches_any((flt({"kinds": [2]}), flt({"kinds": [3]})), ev)


@pytest.mark.parametrize(
    ("obj", "can"),
    [
        ({}, True),
        ({"ids": []}, False),
        ({"authors": []}, False),
        ({"kinds": []}, False),
        ({"#t": []}, False),
        ({"#t": ["x"], "#e": []}, False),
        ({"since": 10, "until": 9}, False),
        ({"since": 10, "until": 10}, True),
        ({"since": 10}, True),
        ({"limit": 0}, True),
        ({"ids": ["aa" * 32], "kinds": [1]}, True),
    ],
)
def test_can_match_anything(obj: dict[str, Any], can: bool) -> None:
    f = flt(obj)
    assert f.can_match_anything() is can
    if not can:
        # It really matches nothing.
        ev = event(tags=[["t", "x"], ["e", "y"]], created_at=10)
        assert not f.matches(ev)


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("best nostr apps", "best nostr apps"),
        ("  orange   purple ", "orange purple"),
        ("nostr language:en", "nostr"),
        ("include:spam domain:example.com nsfw:false nostr", "nostr"),
        ('"exact phrase" -not or', '"exact phrase" -not or'),
        ("see https://example.com/x", "see https://example.com/x"),
        ("12:30 meeting", "12:30 meeting"),
        ("language:en", ""),
        ("", ""),
        ("x" * 256, "x" * 256),
    ],
)
def test_search_keeps_the_words_and_drops_extensions(text: str, query: str) -> None:
    parsed = parse_filter({"search": text}, LIMITS)
    assert parsed.search == query


def test_search_combines_with_other_fields() -> None:
    parsed = parse_filter({"kinds": [1], "search": "nostr", "limit": 5}, LIMITS)
    assert parsed == Filter(kinds=frozenset({1}), search="nostr", limit=5)
    assert parse_filter({"kinds": [1]}, LIMITS).search is None


def test_a_search_of_extensions_only_matches_nothing() -> None:
    assert not parse_filter({"search": "language:en"}, LIMITS).can_match_anything()
    assert not parse_filter({"search": " "}, LIMITS).can_match_anything()
    assert parse_filter({"search": "nostr"}, LIMITS).can_match_anything()


def test_a_search_filter_matches_no_live_event() -> None:
    """Search results are ranked over the stored events; live events are not searched."""
    note = event(content="nostr")
    assert not parse_filter({"search": "nostr"}, LIMITS).matches(note)
    assert parse_filter({"kinds": [note.kind]}, LIMITS).matches(note)
