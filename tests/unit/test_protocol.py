"""The sans-IO protocol core: client frames, filters, host names, the per-connection session,
the acceptance rules of one event (NIP-01/40/42/70) and the settings they are configured by."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from coincurve import PrivateKey

from relay.config import SETTINGS, ConfigError, load_settings, settings_help
from relay.events import kinds
from relay.events.model import Event, InvalidEvent, parse_event, sign_event
from relay.events.rules import (
    check_auth_event,
    check_publishable,
    check_shape_limits,
    check_signature,
    expiration_of,
)
from relay.protocol import messages as msg
from relay.protocol.filters import (
    Filter,
    InvalidFilter,
    matches_any,
    parse_filter,
    parse_filters,
)
from relay.protocol.hosts import normalize_host
from relay.protocol.limits import Limits
from relay.protocol.session import Session
from relay.store.events import Coordinate, parse_address

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


# === parse_client_message ======================================================================


def parse(message: str | bytes, limits: Limits = LIMITS) -> msg.ClientMessage | msg.Refusal:
    return msg.parse_client_message(message, limits)


def test_event_frame() -> None:
    ev = event(content="hi")
    parsed = parse(frame("EVENT", ev.to_dict()))
    assert parsed == msg.ClientEvent(ev)


def test_event_frame_from_bytes() -> None:
    ev = event(content="bytes")
    assert parse(frame("EVENT", ev.to_dict()).encode()) == msg.ClientEvent(ev)


def test_auth_frame() -> None:
    ev = event(kind=kinds.AUTH, tags=[["challenge", "c"], ["relay", "wss://localhost/"]])
    assert parse(frame("AUTH", ev.to_dict())) == msg.ClientAuth(ev)


def test_req_frame() -> None:
    parsed = parse(frame("REQ", "sub", {"kinds": [1]}, {"authors": [ALICE_PK], "limit": 3}))
    assert parsed == msg.ClientReq(
        "sub",
        (
            Filter(kinds=frozenset({1}), limit=LIMITS.default_limit),
            Filter(authors=frozenset({ALICE_PK}), limit=3),
        ),
    )


def test_count_frame() -> None:
    parsed = parse(frame("COUNT", "c", {"#t": ["x"]}))
    assert parsed == msg.ClientCount("c", (Filter(tags=(("t", frozenset({"x"})),), limit=500),))


def test_close_frame() -> None:
    assert parse(frame("CLOSE", "sub")) == msg.ClientClose("sub")


def refusal(message: str | bytes, limits: Limits = LIMITS) -> str:
    parsed = parse(message, limits)
    assert isinstance(parsed, msg.Refusal), parsed
    return parsed.reply


@pytest.mark.parametrize(
    ("message", "reply"),
    [
        ("[", '["NOTICE","invalid: message is not valid JSON"]'),
        ("", '["NOTICE","invalid: message is not valid JSON"]'),
        (b"\xff\xfe", '["NOTICE","invalid: message is not valid JSON"]'),
        ('["REQ","s",{}] x', '["NOTICE","invalid: message is not valid JSON"]'),
        ("{}", '["NOTICE","invalid: message must be a non-empty JSON array"]'),
        ("[]", '["NOTICE","invalid: message must be a non-empty JSON array"]'),
        ('"EVENT"', '["NOTICE","invalid: message must be a non-empty JSON array"]'),
        ("[1]", '["NOTICE","invalid: message type must be a string"]'),
        ("[null]", '["NOTICE","invalid: message type must be a string"]'),
        ('["FOO"]', '["NOTICE","invalid: unknown message type \'FOO\'"]'),
        ('["req","s",{}]', '["NOTICE","invalid: unknown message type \'req\'"]'),
        (
            '["' + "X" * 40 + '"]',
            '["NOTICE","invalid: unknown message type \'' + "X" * 32 + "'\"]",
        ),
        ('["EVENT"]', '["NOTICE","invalid: EVENT takes exactly one event"]'),
        ('["EVENT",{},{}]', '["NOTICE","invalid: EVENT takes exactly one event"]'),
        ('["AUTH"]', '["NOTICE","invalid: AUTH takes exactly one event"]'),
        ('["EVENT",1]', '["NOTICE","invalid: event must be a JSON object"]'),
        ('["AUTH","x"]', '["NOTICE","invalid: event must be a JSON object"]'),
        (
            '["EVENT",{}]',
            '["NOTICE","invalid: event is missing content, created_at, id, kind, pubkey, sig,'
            ' tags"]',
        ),
        # An id that is not 64 lowercase hex cannot be answered with OK.
        (
            '["EVENT",{"id":"ABC"}]',
            '["NOTICE","invalid: event is missing content, created_at, kind, pubkey, sig, tags"]',
        ),
        ('["REQ"]', '["NOTICE","invalid: REQ needs a subscription id"]'),
        ('["COUNT"]', '["NOTICE","invalid: COUNT needs a subscription id"]'),
        ('["REQ",1,{}]', '["NOTICE","invalid: REQ subscription id must be a string"]'),
        ('["COUNT",null,{}]', '["NOTICE","invalid: COUNT subscription id must be a string"]'),
        ('["REQ","",{}]', '["CLOSED","","invalid: subscription id must have 1 to 64 characters"]'),
        ('["REQ","s"]', '["CLOSED","s","invalid: at least one filter is required"]'),
        ('["COUNT","s"]', '["CLOSED","s","invalid: at least one filter is required"]'),
        ('["REQ","s",1]', '["CLOSED","s","invalid: a filter must be a JSON object"]'),
        (
            '["REQ","s",{"kinds":[-1]}]',
            '["CLOSED","s","invalid: kinds must be an array of integers from 0 to 65535"]',
        ),
        (
            '["COUNT","s",{"search":"x"}]',
            '["CLOSED","s","invalid: search (NIP-50) is not supported by this relay"]',
        ),
        ('["CLOSE"]', '["NOTICE","invalid: CLOSE takes exactly one subscription id"]'),
        ('["CLOSE",1]', '["NOTICE","invalid: CLOSE takes exactly one subscription id"]'),
        ('["CLOSE","s","t"]', '["NOTICE","invalid: CLOSE takes exactly one subscription id"]'),
    ],
)
def test_refusals(message: str | bytes, reply: str) -> None:
    assert refusal(message) == reply


def test_overlong_subscription_id_is_closed() -> None:
    sub_id = "s" * 65
    assert refusal(frame("REQ", sub_id, {})) == frame(
        "CLOSED", sub_id, "invalid: subscription id must have 1 to 64 characters"
    )
    assert isinstance(parse(frame("REQ", "s" * 64, {})), msg.ClientReq)


def test_subscription_id_length_is_the_configured_limit() -> None:
    assert refusal(frame("REQ", "123456789", {}), SMALL) == frame(
        "CLOSED", "123456789", "invalid: subscription id must have 1 to 8 characters"
    )
    assert isinstance(parse(frame("REQ", "12345678", {}), SMALL), msg.ClientReq)


def test_too_many_filters_is_closed() -> None:
    assert refusal(frame("REQ", "s", {}, {}, {}), SMALL) == frame(
        "CLOSED", "s", "invalid: too many filters (max 2)"
    )


DEEP = "[" * 5000 + "]" * 5000


def test_deep_nesting_is_a_notice_not_a_crash() -> None:
    reply = orjson.loads(refusal(DEEP))
    assert reply[0] == "NOTICE"
    assert reply[1].startswith("invalid: message is ")


def test_deep_nesting_says_so() -> None:
    assert refusal(DEEP) == '["NOTICE","invalid: message is nested too deeply"]'


def test_bad_event_with_a_readable_id_gets_ok_false() -> None:
    raw = event().to_dict()
    raw["kind"] = "1"
    assert refusal(frame("EVENT", raw)) == frame(
        "OK", raw["id"], False, "invalid: kind must be an integer between 0 and 65535"
    )


def test_an_upper_case_id_is_readable_and_gets_ok_false() -> None:
    raw = event().to_dict()
    raw["id"] = raw["id"].upper()
    assert refusal(frame("EVENT", raw)) == frame(
        "OK", raw["id"], False, "invalid: id must be 64 lowercase hex characters"
    )


def test_an_id_of_non_hex_characters_is_not_readable() -> None:
    raw = event().to_dict()
    raw["id"] = "G" * 64
    assert refusal(frame("EVENT", raw)) == frame(
        "NOTICE", "invalid: id must be 64 lowercase hex characters"
    )


def test_bad_auth_event_with_a_readable_id_gets_ok_false() -> None:
    raw = event(kind=kinds.AUTH).to_dict()
    raw["tags"] = [["challenge", 1]]
    assert refusal(frame("AUTH", raw)) == frame(
        "OK", raw["id"], False, "invalid: tags must be an array of arrays of strings"
    )


def test_reply_builders() -> None:
    assert msg.notice("hi") == '["NOTICE","hi"]'
    assert msg.ok("ab", True) == '["OK","ab",true,""]'
    assert msg.ok("ab", False, "invalid: x") == '["OK","ab",false,"invalid: x"]'
    assert msg.closed("s", "error: x") == '["CLOSED","s","error: x"]'
    assert msg.eose("s") == '["EOSE","s"]'
    assert msg.count("s", 3) == '["COUNT","s",{"count":3}]'
    assert msg.auth_challenge("c") == '["AUTH","c"]'
    ev = event(content='q"uote')
    built = msg.event_frame('s"1', ev.to_json())
    assert orjson.loads(built) == ["EVENT", 's"1', ev.to_dict()]


# === filters ===================================================================================


def flt(obj: dict[str, Any], limits: Limits = LIMITS) -> Filter:
    return parse_filter(obj, limits)


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
        ({"search": "x"}, "search (NIP-50) is not supported by this relay"),
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


# === host names ================================================================================


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("localhost", "localhost"),
        ("Example.COM", "example.com"),
        ("  example.com  ", "example.com"),
        ("example.com.", "example.com"),
        ("example.com:443", "example.com"),
        ("LOCALHOST.:7777", "localhost"),
        ("1.2.3.4:80", "1.2.3.4"),
        ("a_b.test", "a_b.test"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("[::1]", "[::1]"),
        ("[::1]:7777", "[::1]"),
        ("[::FFFF:1.2.3.4]", "[::ffff:1.2.3.4]"),
        ("[2001:DB8::1]:443", "[2001:db8::1]"),
        ("a" * 63 + ".test", "a" * 63 + ".test"),
    ],
)
def test_normalize_host(value: str, host: str) -> None:
    assert normalize_host(value) == host


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        ".",
        "exa mple.com",
        "example.com:abc",
        "example.com:",
        "example.com:+1",
        "example.com:80:90",
        "a..b",
        "example.com..",
        "-a.com",
        "a-.com",
        "a" * 64 + ".com",
        ".".join(["a" * 60] * 5),
        "user@host",
        "http://example.com",
        "example.com/path",
        "exämple.com",
        "[::1",
        "[::1]x",
        "[::1]:",
        "[::1]:port",
        "[zz]",
        "[]",
    ],
)
def test_normalize_host_garbage(value: str) -> None:
    assert normalize_host(value) is None


def test_normalize_host_rejects_a_newline_inside() -> None:
    assert normalize_host("bad\n.example") is None


def test_normalize_host_rejects_non_ascii_that_lowercases_to_ascii() -> None:
    assert normalize_host("\u212aey.test") is None


def test_normalize_host_rejects_a_non_ascii_port() -> None:
    assert normalize_host("localhost:\u00b2") is None


@pytest.mark.parametrize("value", ["[abc]", "[.]"])
def test_normalize_host_rejects_bracketed_non_addresses(value: str) -> None:
    assert normalize_host(value) is None


# === session ===================================================================================


def test_session_challenge_is_random_hex() -> None:
    first, second = Session("localhost", LIMITS), Session("localhost", LIMITS)
    assert re.fullmatch(r"[0-9a-f]{32}", first.challenge)
    assert first.challenge != second.challenge
    assert first.authenticated == frozenset()


def test_session_authenticates_at_most_max_auth_keys() -> None:
    session = Session("localhost", Limits(max_auth_keys=2))
    assert session.authenticate("a" * 64) is None
    assert session.authenticate("b" * 64) is None
    assert session.authenticate("a" * 64) is None  # already there: no new place taken
    assert session.authenticate("c" * 64) == (
        "blocked: too many keys authenticated on this connection (max 2)"
    )
    assert session.authenticated == frozenset({"a" * 64, "b" * 64})


def test_session_open_close_and_the_subscription_limit() -> None:
    session = Session("localhost", SMALL)
    kind1 = (flt({"kinds": [1]}),)
    assert session.open("a", kind1) is None
    assert session.open("b", kind1) is None
    assert session.open("c", kind1) == "blocked: too many open subscriptions (max 2)"
    assert set(session.subscriptions) == {"a", "b"}
    # Replacing an open subscription is not a new one.
    assert session.open("a", (flt({"kinds": [7]}),)) is None
    assert session.subscriptions["a"].filters == (flt({"kinds": [7]}),)
    assert session.close("b") is True
    assert session.close("b") is False
    assert session.close("never") is False
    assert session.open("c", kind1) is None
    assert set(session.subscriptions) == {"a", "c"}


def test_session_replacing_a_subscription_starts_a_new_backlog() -> None:
    session = Session("localhost", LIMITS)
    session.open("s", (flt({}),))
    held = event()
    session.subscriptions["s"].backlog = [(held.id, held.to_json())]
    session.subscriptions["s"].backlog_bytes = 10
    session.open("s", (flt({"kinds": [1]}),))
    assert session.subscriptions["s"].backlog == []
    assert session.subscriptions["s"].backlog_bytes == 0
    assert session.go_live("s", set()) == []


def test_session_matching() -> None:
    session = Session("localhost", LIMITS)
    session.open("notes", (flt({"kinds": [1]}),))
    session.open("both", (flt({"kinds": [1]}), flt({"authors": [ALICE_PK]})))
    session.open("bob", (flt({"authors": [BOB_PK]}),))
    note = event(ALICE, kind=1)
    every = {"notes", "both", "bob"}
    matched = session.matching(note, every)
    assert [sid for sid, _ in matched] == ["notes", "both"]  # each once, in opening order
    assert matched[0][1] is session.subscriptions["notes"]
    assert [sid for sid, _ in session.matching(event(BOB, kind=7), every)] == ["bob"]
    both = [("both", session.subscriptions["both"])]
    assert session.matching(event(ALICE, kind=7), every) == both
    # Only the candidates are looked at.
    assert [sid for sid, _ in session.matching(note, {"both", "bob"})] == ["both"]
    session.close("both")
    assert [sid for sid, _ in session.matching(note, every)] == ["notes"]


def test_session_go_live_releases_held_back_events_not_already_sent() -> None:
    session = Session("localhost", LIMITS)
    session.open("s", (flt({}),))
    sub = session.subscriptions["s"]
    assert sub.backlog == []
    held = [event(content=str(i)) for i in range(4)]
    for ev in held:
        sub.backlog.append((ev.id, ev.to_json()))
        sub.backlog_bytes += len(ev.to_json())
    sent = {held[1].id, held[3].id, "ff" * 32}
    assert session.go_live("s", sent) == [held[0].to_json(), held[2].to_json()]
    assert sub.backlog is None
    assert sub.backlog_bytes == 0
    # Live now: nothing more is held back, and a second go_live releases nothing.
    assert session.go_live("s", set()) == []
    assert session.go_live("unknown", set()) == []


def test_session_go_live_with_nothing_held() -> None:
    session = Session("localhost", LIMITS)
    session.open("s", (flt({}),))
    assert session.go_live("s", set()) == []
    assert session.subscriptions["s"].backlog is None


# === rules =====================================================================================


def test_shape_limits_pass_at_the_boundaries() -> None:
    limits = Limits(
        max_event_bytes=1000, max_event_tags=3, max_tag_value_bytes=64, max_future_seconds=60
    )
    ev = event(tags=[["t", "x" * 64], ["e", "y"], ["alt", "z" * 500]], created_at=NOW + 60)
    assert check_shape_limits(ev, 1000, limits, NOW) is None


@pytest.mark.parametrize(
    ("tags", "raw_size", "created_at", "message"),
    [
        ([], 1001, NOW, "invalid: event is larger than 1000 bytes"),
        ([["t", "a"]] * 4, 100, NOW, "invalid: event has more than 3 tags"),
        (
            [["t", "x" * 65]],
            100,
            NOW,
            "invalid: single-letter tag values are limited to 64 bytes",
        ),
        (
            # 33 two-byte characters: 66 bytes, 33 characters.
            [["p", "é" * 33]],
            100,
            NOW,
            "invalid: single-letter tag values are limited to 64 bytes",
        ),
        ([], 100, NOW + 61, "invalid: created_at is more than 60 seconds in the future"),
        (
            [["expiration", "soon"]],
            100,
            NOW,
            "invalid: expiration tag must hold a unix timestamp",
        ),
        (
            [["expiration", "-1"]],
            100,
            NOW,
            "invalid: expiration tag must hold a unix timestamp",
        ),
        (
            [["expiration", "1" * 17]],
            100,
            NOW,
            "invalid: expiration tag must hold a unix timestamp",
        ),
        ([["expiration", str(NOW)]], 100, NOW, "invalid: event has expired"),
        ([["expiration", str(NOW - 1)]], 100, NOW, "invalid: event has expired"),
    ],
)
def test_shape_limits(tags: list[list[str]], raw_size: int, created_at: int, message: str) -> None:
    limits = Limits(
        max_event_bytes=1000, max_event_tags=3, max_tag_value_bytes=64, max_future_seconds=60
    )
    ev = event(tags=tags, created_at=created_at)
    assert check_shape_limits(ev, raw_size, limits, NOW) == message


def test_multi_letter_tags_have_no_value_limit() -> None:
    limits = Limits(max_tag_value_bytes=64)
    assert check_shape_limits(event(tags=[["alt", "x" * 5000]]), 100, limits, NOW) is None


def test_expiration_in_the_future_is_fine() -> None:
    ev = event(tags=[["expiration", str(NOW + 1)]])
    assert check_shape_limits(ev, 100, LIMITS, NOW) is None
    assert expiration_of(ev) == NOW + 1
    assert expiration_of(event()) is None
    # The first expiration tag counts.
    assert expiration_of(event(tags=[["expiration", "5"], ["expiration", "x"]])) == 5


@pytest.mark.parametrize("value", ["", "1.5", " 5", "0x10", "1e9"])
def test_expiration_of_malformed(value: str) -> None:
    with pytest.raises(InvalidEvent, match=r"^expiration tag must hold a unix timestamp$"):
        expiration_of(event(tags=[["expiration", value]]))


def test_expiration_with_a_non_ascii_digit_is_refused_not_raised() -> None:
    ev = event(tags=[["expiration", "\u00b2"]])
    assert check_shape_limits(ev, 100, LIMITS, NOW) == (
        "invalid: expiration tag must hold a unix timestamp"
    )


def test_check_signature() -> None:
    good = event()
    assert check_signature(good) is None
    changed = parse_event({**good.to_dict(), "content": "changed"})
    assert check_signature(changed) == "invalid: event id does not match its content"
    other = event(BOB)
    forged = parse_event({**good.to_dict(), "sig": other.sig})
    assert check_signature(forged) == "invalid: signature does not verify"


def test_publishable_plain_event() -> None:
    assert check_publishable(event(), set()) is None
    assert check_publishable(event(), {BOB_PK}) is None


def test_auth_events_are_not_publishable() -> None:
    assert check_publishable(event(kind=kinds.AUTH), {ALICE_PK}) == (
        "invalid: kind 22242 is only accepted in AUTH messages"
    )


def test_protected_event_nip70() -> None:
    protected = event(ALICE, tags=[["-"]])
    assert check_publishable(protected, set()) == (
        "auth-required: this event may only be published by its author"
    )
    assert check_publishable(protected, {BOB_PK}) == (
        "blocked: this event may only be published by its author"
    )
    assert check_publishable(protected, {ALICE_PK}) is None
    assert check_publishable(protected, {BOB_PK, ALICE_PK}) is None
    # The tag is protected wherever it is, and a '-' tag with a value still counts.
    assert check_publishable(event(ALICE, tags=[["t", "x"], ["-", "x"]]), set()) is not None


# --- NIP-42 AUTH events ------------------------------------------------------------------------

CHALLENGE = "c0ffee" * 5


def auth_event(
    *,
    key: PrivateKey = ALICE,
    kind: int = kinds.AUTH,
    challenge: str | None = CHALLENGE,
    relay: str | None = "wss://localhost:7777/",
    created_at: int = NOW,
) -> Event:
    tags = []
    if relay is not None:
        tags.append(["relay", relay])
    if challenge is not None:
        tags.append(["challenge", challenge])
    return event(key, kind=kind, tags=tags, created_at=created_at)


def check_auth(ev: Event, host: str = "localhost") -> str | None:
    return check_auth_event(ev, CHALLENGE, host, NOW, LIMITS)


def test_good_auth_event() -> None:
    assert check_auth(auth_event()) is None
    assert check_auth(auth_event(relay="wss://LOCALHOST./")) is None
    assert check_auth(auth_event(relay="ws://localhost")) is None
    assert check_auth(auth_event(relay="wss://alpha.test/some/path"), "alpha.test") is None
    window = LIMITS.auth_window_seconds
    assert check_auth(auth_event(created_at=NOW - window)) is None
    assert check_auth(auth_event(created_at=NOW + window)) is None


def test_auth_wrong_kind() -> None:
    assert check_auth(auth_event(kind=1)) == "invalid: AUTH event must be kind 22242"


@pytest.mark.parametrize("offset", [-601, 601, -100_000])
def test_auth_stale_or_future_created_at(offset: int) -> None:
    assert check_auth(auth_event(created_at=NOW + offset)) == (
        "invalid: AUTH event created_at must be within 600 s"
    )


@pytest.mark.parametrize("challenge", ["wrong", "", None, CHALLENGE.upper()])
def test_auth_wrong_challenge(challenge: str | None) -> None:
    assert check_auth(auth_event(challenge=challenge)) == "invalid: AUTH challenge does not match"


@pytest.mark.parametrize(
    "relay",
    [
        "wss://beta.test/",
        "wss://localhost.evil.test/",
        "wss://user@localhost/",
        "localhost",
        "",
        None,
        "wss://[::1/",
    ],
)
def test_auth_relay_tag_for_another_host(relay: str | None) -> None:
    assert check_auth(auth_event(relay=relay)) == (
        "invalid: AUTH relay tag does not name this relay"
    )


def test_auth_event_with_a_bad_signature() -> None:
    good = auth_event()
    other = auth_event(key=BOB)
    forged = parse_event({**good.to_dict(), "sig": other.sig})
    assert check_auth(forged) == "invalid: signature does not verify"
    impostor = parse_event({**good.to_dict(), "pubkey": BOB_PK})
    assert check_auth(impostor) == "invalid: event id does not match its content"


# === store helpers =============================================================================


def test_parse_address() -> None:
    assert parse_address(f"30023:{ALICE_PK}:my-post") == Coordinate(30023, ALICE_PK, "my-post")
    assert parse_address(f"10002:{ALICE_PK}:") == Coordinate(10002, ALICE_PK, "")
    assert parse_address(f"30023:{ALICE_PK}:a:b") == Coordinate(30023, ALICE_PK, "a:b")
    assert parse_address(f"30023:{ALICE_PK}") is None
    assert parse_address(f"x:{ALICE_PK}:d") is None
    assert parse_address("30023:abc:d") is None
    assert parse_address("") is None


def test_parse_address_with_a_non_ascii_digit_kind() -> None:
    assert parse_address(f"\u00b2:{ALICE_PK}:d") is None


# === config ====================================================================================


def test_default_settings() -> None:
    settings = load_settings({})
    assert settings.bind == "127.0.0.1"
    assert settings.port == 7777
    assert settings.hosts == ("localhost", "127.0.0.1")
    assert settings.public_url == "ws://localhost:7777"
    assert settings.database_url is None
    assert settings.secret_key is None
    assert settings.admin_pubkey is None
    assert settings.contact is None
    assert settings.log_level == "info"
    assert settings.log_format == "text"
    assert settings.db_pool_size == 10
    assert settings.expiration_purge_seconds == 60.0
    # The settings' defaults are the protocol's defaults.
    assert settings.limits == Limits()


def test_settings_from_the_environment() -> None:
    settings = load_settings(
        {
            "RELAY_PORT": "0",
            "RELAY_HOSTS": "Alpha.Test., alpha.test:80 ,,beta.test,[::1]:7777",
            "RELAY_DATABASE_URL": "postgresql://u:p@db.internal:5433/relay",
            "RELAY_LOG_LEVEL": "DEBUG",
            "RELAY_SECRET_KEY": "AB" * 32,
            "RELAY_MAX_LIMIT": "50",
            "RELAY_DEFAULT_LIMIT": "20",
            "RELAY_CONTACT": "",
        }
    )
    assert settings.port == 0
    assert settings.hosts == ("alpha.test", "beta.test", "[::1]")
    assert settings.database_url == "postgresql://u:p@db.internal:5433/relay"
    assert settings.log_level == "debug"
    assert settings.secret_key == "ab" * 32
    assert settings.limits.max_limit == 50
    assert settings.limits.default_limit == 20
    assert settings.contact is None


def test_overrides_win_over_the_environment() -> None:
    settings = load_settings({"RELAY_PORT": "not a port"}, port=1234)
    assert settings.port == 1234
    with pytest.raises(TypeError, match="unknown settings"):
        load_settings({}, no_such_setting=1)


def config_error(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("RELAY_PORT", "70000", "RELAY_PORT must be between 0 and 65535, got 70000"),
        ("RELAY_PORT", "-1", "RELAY_PORT must be between 0 and 65535, got -1"),
        ("RELAY_PORT", "http", "RELAY_PORT must be a whole number, got 'http'"),
        ("RELAY_PORT", "", "RELAY_PORT must be a whole number, got ''"),
        (
            "RELAY_DATABASE_URL",
            "postgres://db:notaport/relay",
            "RELAY_DATABASE_URL is not a valid URL",
        ),
        ("RELAY_DATABASE_URL", "postgresql://[::1/relay", "RELAY_DATABASE_URL is not a valid URL"),
        (
            "RELAY_DATABASE_URL",
            "mysql://db/relay",
            "RELAY_DATABASE_URL must be a postgres or postgresql URL, got 'mysql://db/relay'",
        ),
        (
            "RELAY_DATABASE_URL",
            "db.internal:5432",
            "RELAY_DATABASE_URL must be a postgres or postgresql URL",
        ),
        (
            "RELAY_DATABASE_URL",
            "postgres:",
            "RELAY_DATABASE_URL must be a postgres or postgresql URL",
        ),
        (
            "RELAY_LOG_LEVEL",
            "verbose",
            "RELAY_LOG_LEVEL must be one of debug, info, warning, error, got 'verbose'",
        ),
        ("RELAY_LOG_FORMAT", "xml", "RELAY_LOG_FORMAT must be one of text, json, got 'xml'"),
        ("RELAY_HOSTS", "good.test,exa mple.com", "RELAY_HOSTS 'exa mple.com' is not a host name"),
        ("RELAY_HOSTS", "http://x.test", "RELAY_HOSTS 'http://x.test' is not a host name"),
        ("RELAY_HOSTS", " , ,", "RELAY_HOSTS must name at least one host"),
        ("RELAY_HOSTS", "", "RELAY_HOSTS must name at least one host"),
        (
            "RELAY_PUBLIC_URL",
            "https://x.test",
            "RELAY_PUBLIC_URL must be a ws or wss URL, got 'https://x.test'",
        ),
        ("RELAY_PUBLIC_URL", "wss://", "RELAY_PUBLIC_URL must be a ws or wss URL"),
        (
            "RELAY_PUBLIC_URL",
            "wss:///path",
            "RELAY_PUBLIC_URL must be a ws:// or wss:// URL with a host, got 'wss:///path'",
        ),
        ("RELAY_SECRET_KEY", "abc", "RELAY_SECRET_KEY must be 64 hex characters"),
        ("RELAY_ADMIN_PUBKEY", "AB" * 32, "RELAY_ADMIN_PUBKEY must be 64 lowercase hex"),
        ("RELAY_DB_POOL_SIZE", "0", "RELAY_DB_POOL_SIZE must be between 1 and 200, got 0"),
        (
            "RELAY_EXPIRATION_PURGE_SECONDS",
            "soon",
            "RELAY_EXPIRATION_PURGE_SECONDS must be a number, got 'soon'",
        ),
        (
            "RELAY_MAX_TAG_VALUE_BYTES",
            "4096",
            "RELAY_MAX_TAG_VALUE_BYTES must be between 64 and 2048, got 4096",
        ),
    ],
)
def test_bad_setting_names_the_setting(env: str, value: str, expected: str) -> None:
    message = config_error({env: value})
    assert message.startswith(expected), message


def test_default_limit_may_not_exceed_max_limit() -> None:
    assert config_error({"RELAY_MAX_LIMIT": "10", "RELAY_DEFAULT_LIMIT": "11"}) == (
        "RELAY_DEFAULT_LIMIT must not exceed RELAY_MAX_LIMIT"
    )
    assert load_settings({"RELAY_MAX_LIMIT": "10", "RELAY_DEFAULT_LIMIT": "10"}).default_limit == 10


def test_every_setting_is_read_from_its_variable() -> None:
    bad = "\x00bad\x00"
    for setting in SETTINGS:
        try:
            parsed = setting.parse(bad)
        except ValueError:
            # A value its parser rejects stops the relay with a line naming the variable.
            message = config_error({setting.env: bad})
            assert message.startswith(setting.env + " "), message
            continue
        # Free text: the value arrives in the settings (or a cross-check names the variable).
        try:
            settings = load_settings({setting.env: bad})
        except ConfigError as exc:
            assert setting.env in str(exc)
        else:
            assert getattr(settings, setting.field) == parsed == bad


def test_settings_help_mentions_every_variable() -> None:
    text = settings_help()
    for setting in SETTINGS:
        line = next(line for line in text.splitlines() if f" {setting.env} " in line)
        assert setting.help in line
        assert f"[default: {setting.default or '(empty)'}]" in line
    # ...and every RELAY_ variable the relay's code mentions is a documented setting.
    source = Path(__file__).resolve().parents[2] / "relay"
    mentioned = set()
    for path in source.rglob("*.py"):
        mentioned |= set(re.findall(r"\bRELAY_[A-Z0-9_]+\b", path.read_text("utf-8")))
    assert mentioned
    missing = {name for name in mentioned if not re.search(rf" {name} ", text)}
    assert missing == set()
    assert len(SETTINGS) == len({s.env for s in SETTINGS}) == len({s.field for s in SETTINGS})
