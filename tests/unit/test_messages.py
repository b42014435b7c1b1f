"""relay.protocol.messages: client frames parsed (or refused with the right reply) and the
relay's reply frames built."""

from __future__ import annotations

import orjson
import pytest

from relay.events import kinds
from relay.protocol import messages as msg
from relay.protocol.filters import Filter
from relay.protocol.limits import Limits
from tests.unit.samples import ALICE_PK, LIMITS, SMALL, event, frame


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
            '["COUNT","s",{"search":1}]',
            '["CLOSED","s","invalid: search must be a string"]',
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
