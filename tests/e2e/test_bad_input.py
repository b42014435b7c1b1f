"""Invariant 9: bad input gets a specific answer, the connection survives, nothing is stored.

Every refusal here is followed by a valid EVENT on the same connection, which must get
OK true, and by a look at the tables: only that proof event (and its tag) is stored.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from relay.events.model import Event
from tests.helpers import (
    RECEIVE_TIMEOUT,
    NostrClient,
    RelayUnderTest,
    client_frame,
    close_code_after,
    connect,
    make_event,
    new_key,
    sql,
)
from tests.services import start_relay

Frame = str | bytes


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def bad_event() -> Event:
    """A valid event carrying an indexed tag, so a wrongly stored copy shows in event_tags."""
    return make_event(tags=[["t", "bad-input"]])


def tampered(**changes: Any) -> dict[str, Any]:
    body = bad_event().to_dict()
    body.update(changes)
    return body


def mangled(field: str, change: Callable[[Any], Any]) -> dict[str, Any]:
    body = bad_event().to_dict()
    body[field] = change(body[field])
    return body


def without(field: str) -> dict[str, Any]:
    body = bad_event().to_dict()
    del body[field]
    return body


async def assert_stored_exactly(relay: RelayUnderTest, *events: Event) -> None:
    """The events table holds exactly these events, event_tags exactly their tags."""
    count = await sql(relay.db_url, "SELECT count(*) AS n FROM events")
    assert count[0]["n"] == len(events)
    rows = await sql(relay.db_url, "SELECT encode(id, 'hex') AS id FROM events")
    assert sorted(r["id"] for r in rows) == sorted(e.id for e in events)
    tag_rows = await sql(
        relay.db_url, "SELECT encode(event_id, 'hex') AS id, name, value FROM event_tags"
    )
    assert sorted((r["id"], r["name"], r["value"]) for r in tag_rows) == sorted(
        (e.id, t[0], t[1]) for e in events for t in e.tags if len(t[0]) == 1 and len(t) >= 2
    )


async def assert_open_and_nothing_stored(client: NostrClient, relay: RelayUnderTest) -> None:
    """The connection still works (a valid EVENT gets OK true) and only that event is stored."""
    proof = make_event(tags=[["t", "proof"]])
    assert await client.publish(proof) == ["OK", proof.id, True, ""]
    await client.expect_nothing(0.1)
    await assert_stored_exactly(relay, proof)


# -- frames answered with a NOTICE -----------------------------------------------------------

NOT_JSON = "invalid: message is not valid JSON"
NOT_ARRAY = "invalid: message must be a non-empty JSON array"
NOT_STRING_VERB = "invalid: message type must be a string"
EVENT_ARITY = "invalid: EVENT takes exactly one event"
CLOSE_ARITY = "invalid: CLOSE takes exactly one subscription id"
ID_SHAPE = "invalid: id must be 64 lowercase hex characters"

NOTICE_CASES: dict[str, tuple[Callable[[], Frame], str]] = {
    "not JSON": (lambda: "hello relay", NOT_JSON),
    "truncated JSON": (lambda: '["EVENT", {"id": ', NOT_JSON),
    "empty text frame": (lambda: "", NOT_JSON),
    "trailing garbage": (lambda: '["CLOSE", "s"] x', NOT_JSON),
    "object, not array": (lambda: dumps({"EVENT": bad_event().to_dict()}), NOT_ARRAY),
    "string, not array": (lambda: '"EVENT"', NOT_ARRAY),
    "number, not array": (lambda: "42", NOT_ARRAY),
    "null, not array": (lambda: "null", NOT_ARRAY),
    "empty array": (lambda: "[]", NOT_ARRAY),
    "unknown verb": (
        lambda: dumps(["PUBLISH", bad_event().to_dict()]),
        "invalid: unknown message type 'PUBLISH'",
    ),
    "lower-case verb": (
        lambda: dumps(["event", bad_event().to_dict()]),
        "invalid: unknown message type 'event'",
    ),
    "verb is a number": (lambda: dumps([1, bad_event().to_dict()]), NOT_STRING_VERB),
    "verb is null": (lambda: "[null]", NOT_STRING_VERB),
    "verb is an array": (lambda: dumps([["EVENT"], bad_event().to_dict()]), NOT_STRING_VERB),
    "EVENT without event": (lambda: '["EVENT"]', EVENT_ARITY),
    "EVENT with two events": (
        lambda: dumps(["EVENT", bad_event().to_dict(), bad_event().to_dict()]),
        EVENT_ARITY,
    ),
    "EVENT with sub id": (lambda: dumps(["EVENT", "sub", bad_event().to_dict()]), EVENT_ARITY),
    "CLOSE without id": (lambda: '["CLOSE"]', CLOSE_ARITY),
    "CLOSE with two ids": (lambda: '["CLOSE", "a", "b"]', CLOSE_ARITY),
    "CLOSE with a number": (lambda: '["CLOSE", 1]', CLOSE_ARITY),
    "REQ without id": (lambda: '["REQ"]', "invalid: REQ needs a subscription id"),
    "COUNT without id": (lambda: '["COUNT"]', "invalid: COUNT needs a subscription id"),
    "numeric subscription id": (
        lambda: dumps(["REQ", 7, {"kinds": [1]}]),
        "invalid: REQ subscription id must be a string",
    ),
    "null COUNT id": (
        lambda: dumps(["COUNT", None, {"kinds": [1]}]),
        "invalid: COUNT subscription id must be a string",
    ),
    "event is a string": (lambda: '["EVENT", "note"]', "invalid: event must be a JSON object"),
    "event is an array": (
        lambda: dumps(["EVENT", list(bad_event().to_dict().values())]),
        "invalid: event must be a JSON object",
    ),
    "short id": (
        lambda: dumps(["EVENT", mangled("id", lambda v: v[:63])]),
        ID_SHAPE,
    ),
    "non-hex id": (lambda: dumps(["EVENT", tampered(id="g" * 64)]), ID_SHAPE),
    "id is a number": (lambda: dumps(["EVENT", tampered(id=12345)]), ID_SHAPE),
    "event without id": (lambda: dumps(["EVENT", without("id")]), "invalid: event is missing id"),
}


@pytest.mark.parametrize("case", list(NOTICE_CASES))
async def test_malformed_frame_gets_notice(relay: RelayUnderTest, case: str) -> None:
    make_frame, reason = NOTICE_CASES[case]
    async with connect(relay.port) as client:
        await client.send(make_frame())
        assert await client.recv() == ["NOTICE", reason]
        await assert_open_and_nothing_stored(client, relay)


async def test_many_bad_frames_in_a_row_leave_the_connection_usable(
    relay: RelayUnderTest,
) -> None:
    async with connect(relay.port) as client:
        for make_frame, reason in NOTICE_CASES.values():
            await client.send(make_frame())
            assert await client.recv() == ["NOTICE", reason]
        await assert_open_and_nothing_stored(client, relay)


@pytest.mark.parametrize("verb", ["REQ", "COUNT"])
@pytest.mark.parametrize("sub_id", ["", "s" * 65, "é" * 65])
async def test_subscription_id_of_wrong_length_gets_closed(
    relay: RelayUnderTest, verb: str, sub_id: str
) -> None:
    async with connect(relay.port) as client:
        await client.send([verb, sub_id, {"kinds": [1]}])
        assert await client.recv() == [
            "CLOSED", sub_id, "invalid: subscription id must have 1 to 64 characters"
        ]
        # No subscription was opened: the proof event (kind 1) is not delivered to it.
        await assert_open_and_nothing_stored(client, relay)


async def test_subscription_id_of_64_characters_is_fine(relay: RelayUnderTest) -> None:
    async with connect(relay.port) as client:
        assert await client.req("s" * 64, {"kinds": [1]}) == []


# -- events of the wrong shape: OK false when the id can be read, else NOTICE -----------------

KIND = "invalid: kind must be an integer between 0 and 65535"
CREATED_AT = "invalid: created_at must be a non-negative integer timestamp"
TAGS = "invalid: tags must be an array of arrays of strings"
CONTENT = "invalid: content must be a string"
PUBKEY = "invalid: pubkey must be 64 lowercase hex characters"
SIG = "invalid: sig must be 128 lowercase hex characters"

SHAPE_CASES: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "kind as string": (lambda: tampered(kind="1"), KIND),
    "kind as float": (lambda: tampered(kind=1.0), KIND),
    "kind as bool": (lambda: tampered(kind=True), KIND),
    "negative kind": (lambda: tampered(kind=-1), KIND),
    "kind above 65535": (lambda: tampered(kind=65536), KIND),
    "created_at as float": (lambda: tampered(created_at=time.time()), CREATED_AT),
    "created_at as string": (lambda: tampered(created_at=str(int(time.time()))), CREATED_AT),
    "negative created_at": (lambda: tampered(created_at=-1), CREATED_AT),
    "created_at beyond 2^53": (lambda: tampered(created_at=2**53), CREATED_AT),
    "tags is a string": (lambda: tampered(tags="t"), TAGS),
    "tags is null": (lambda: tampered(tags=None), TAGS),
    "tags is an object": (lambda: tampered(tags={"t": "x"}), TAGS),
    "tags is a flat array": (lambda: tampered(tags=["t", "x"]), TAGS),
    "tag value is a number": (lambda: tampered(tags=[["t", 1]]), TAGS),
    "tag value is null": (lambda: tampered(tags=[["t", None]]), TAGS),
    "tag nested too far": (lambda: tampered(tags=[[["t", "x"]]]), TAGS),
    "content is a number": (lambda: tampered(content=5), CONTENT),
    "content is null": (lambda: tampered(content=None), CONTENT),
    "content is an array": (lambda: tampered(content=["hi"]), CONTENT),
    "non-hex pubkey": (lambda: tampered(pubkey="z" * 64), PUBKEY),
    # The id cannot be the event's, but it can be read: the client gets an OK it can match.
    "upper-case id": (lambda: mangled("id", str.upper), ID_SHAPE),
    "upper-case pubkey": (lambda: mangled("pubkey", str.upper), PUBKEY),
    "short pubkey": (lambda: mangled("pubkey", lambda v: v[:62]), PUBKEY),
    "upper-case sig": (lambda: mangled("sig", str.upper), SIG),
    "short sig": (lambda: mangled("sig", lambda v: v[:64]), SIG),
    "missing sig": (lambda: without("sig"), "invalid: event is missing sig"),
    "missing content and tags": (
        lambda: {k: v for k, v in tampered().items() if k not in ("content", "tags")},
        "invalid: event is missing content, tags",
    ),
}


@pytest.mark.parametrize("case", list(SHAPE_CASES))
async def test_event_of_wrong_shape_gets_ok_false(relay: RelayUnderTest, case: str) -> None:
    make_body, reason = SHAPE_CASES[case]
    body = make_body()
    async with connect(relay.port) as client:
        await client.send(["EVENT", body])
        assert await client.recv() == ["OK", body["id"], False, reason]
        await assert_open_and_nothing_stored(client, relay)


async def test_wrong_id_is_refused(relay: RelayUnderTest) -> None:
    key = new_key()
    event, other = bad_event(), make_event(key, tags=[["t", "other"]])
    body = {**event.to_dict(), "id": other.id}
    async with connect(relay.port) as client:
        await client.send(["EVENT", body])
        assert await client.recv() == [
            "OK", other.id, False, "invalid: event id does not match its content"
        ]
        await assert_open_and_nothing_stored(client, relay)


async def test_signature_of_another_event_is_refused(relay: RelayUnderTest) -> None:
    key = new_key()
    event = make_event(key, tags=[["t", "signed"]])
    other = make_event(key, tags=[["t", "other"]])
    body = {**event.to_dict(), "sig": other.sig}
    async with connect(relay.port) as client:
        await client.send(["EVENT", body])
        assert await client.recv() == [
            "OK", event.id, False, "invalid: signature does not verify"
        ]
        # The genuine event is not poisoned by the forged attempt.
        await assert_open_and_nothing_stored(client, relay)
        assert await client.publish(event) == ["OK", event.id, True, ""]


async def test_signature_by_another_key_is_refused(relay: RelayUnderTest) -> None:
    event = bad_event()
    forger = make_event(tags=[["t", "bad-input"]], created_at=event.created_at,
                        content=event.content)
    body = {**event.to_dict(), "sig": forger.sig}
    async with connect(relay.port) as client:
        await client.send(["EVENT", body])
        assert await client.recv() == [
            "OK", event.id, False, "invalid: signature does not verify"
        ]
        await assert_open_and_nothing_stored(client, relay)


# -- events of the right shape that break a rule ------------------------------------------------


def _now() -> int:
    return int(time.time())


RULE_CASES: dict[str, tuple[Callable[[], Event], str]] = {
    "2001 tags": (
        lambda: make_event(tags=[["t", f"v{i}"] for i in range(2001)]),
        "invalid: event has more than 2000 tags",
    ),
    "event larger than 64 KiB": (
        lambda: make_event(tags=[["t", "big"]], content="x" * 70_000),
        "invalid: event is larger than 65536 bytes",
    ),
    "created_at 16 minutes ahead": (
        lambda: make_event(tags=[["t", "future"]], created_at=_now() + 16 * 60),
        "invalid: created_at is more than 900 seconds in the future",
    ),
    "already expired (NIP-40)": (
        lambda: make_event(tags=[["t", "x"], ["expiration", str(_now() - 10)]]),
        "invalid: event has expired",
    ),
    "expiration is a word": (
        lambda: make_event(tags=[["t", "x"], ["expiration", "tomorrow"]]),
        "invalid: expiration tag must hold a unix timestamp",
    ),
    "expiration is negative": (
        lambda: make_event(tags=[["t", "x"], ["expiration", "-5"]]),
        "invalid: expiration tag must hold a unix timestamp",
    ),
    "expiration is a float": (
        lambda: make_event(tags=[["t", "x"], ["expiration", f"{_now() + 600}.5"]]),
        "invalid: expiration tag must hold a unix timestamp",
    ),
    "expiration is empty": (
        lambda: make_event(tags=[["t", "x"], ["expiration", ""]]),
        "invalid: expiration tag must hold a unix timestamp",
    ),
    "single-letter tag value of 1025 bytes": (
        lambda: make_event(tags=[["t", "x" * 1025]]),
        "invalid: single-letter tag values are limited to 1024 bytes",
    ),
    "single-letter tag value of 513 two-byte characters": (
        lambda: make_event(tags=[["p", "é" * 513]]),
        "invalid: single-letter tag values are limited to 1024 bytes",
    ),
    # PostgreSQL text cannot hold NUL: storing one failed with "error: try again" (clients
    # retried for ever) and took the rest of its group-commit batch down with it.
    "NUL in an indexed tag value": (
        lambda: make_event(tags=[["t", "x\u0000y"]]),
        "invalid: single-letter tag values must not contain NUL characters",
    ),
    "NUL in the d tag of an addressable event": (
        lambda: make_event(kind=30023, tags=[["d", "a\u0000"]]),
        "invalid: single-letter tag values must not contain NUL characters",
    ),
    "kind 22242 as EVENT": (
        lambda: make_event(
            kind=22242, tags=[["relay", "ws://127.0.0.1/"], ["challenge", "c"]]
        ),
        "invalid: kind 22242 is only accepted in AUTH messages",
    ),
}


@pytest.mark.parametrize("case", list(RULE_CASES))
async def test_event_breaking_a_rule_gets_ok_false(relay: RelayUnderTest, case: str) -> None:
    make, reason = RULE_CASES[case]
    event = make()
    async with connect(relay.port) as client:
        assert await client.publish(event) == ["OK", event.id, False, reason]
        await assert_open_and_nothing_stored(client, relay)


async def test_limits_are_inclusive(relay: RelayUnderTest) -> None:
    """2000 tags and a 1024-byte tag value are still fine: the refusals above are exact."""
    events = [
        make_event(tags=[["x", f"v{i}"] for i in range(2000)]),
        make_event(tags=[["t", "y" * 1024]]),
        make_event(tags=[["expiration", str(_now() + 3600)]]),
        make_event(created_at=_now() + 14 * 60),
    ]
    async with connect(relay.port) as client:
        for event in events:
            assert await client.publish(event) == ["OK", event.id, True, ""]
    await assert_stored_exactly(relay, *events)


# -- filters answered with CLOSED --------------------------------------------------------------

HEX_AUTHOR = "ab" * 32
KINDS_RANGE = "invalid: kinds must be an array of integers from 0 to 65535"

LIMIT = "invalid: limit must be a non-negative integer"

FILTER_CASES: dict[str, tuple[list[Any], str]] = {
    "1001 authors": (
        [{"authors": [f"{i:064x}" for i in range(1001)]}],
        "invalid: too many values in authors (max 1000)",
    ),
    "1001 kinds": ([{"kinds": list(range(1001))}], "invalid: too many values in kinds (max 1000)"),
    "1001 #t values": (
        [{"#t": [str(i) for i in range(1001)]}],
        "invalid: too many values in #t (max 1000)",
    ),
    "unknown field": (
        [{"kinds": [1], "colour": "red"}],
        "invalid: unsupported filter field 'colour'",
    ),
    "multi-letter tag field": (
        [{"kinds": [1], "#tt": ["x"]}],
        "invalid: unsupported filter field '#tt'",
    ),
    "search not a string": (
        [{"kinds": [1], "search": ["nostr"]}],
        "invalid: search must be a string",
    ),
    "search too long": (
        [{"kinds": [1], "search": "n" * 257}],
        "invalid: search is longer than 256 characters",
    ),
    "negative limit": ([{"kinds": [1], "limit": -1}], LIMIT),
    "float limit": ([{"kinds": [1], "limit": 1.5}], LIMIT),
    "kind above 65535": ([{"kinds": [65536]}], KINDS_RANGE),
    "negative kind": ([{"kinds": [-1]}], KINDS_RANGE),
    "kind as string": ([{"kinds": ["1"]}], KINDS_RANGE),
    "11 filters": ([{"kinds": [i]} for i in range(11)], "invalid: too many filters (max 10)"),
    "no filter": ([], "invalid: at least one filter is required"),
    "filter is an array": ([["kinds", 1]], "invalid: a filter must be a JSON object"),
    "upper-case author": (
        [{"authors": [HEX_AUTHOR.upper()]}],
        "invalid: authors must contain 64 lowercase hex characters each",
    ),
    "short id": (
        [{"ids": ["abcd"]}],
        "invalid: ids must contain 64 lowercase hex characters each",
    ),
    "authors is a string": (
        [{"authors": HEX_AUTHOR}],
        "invalid: authors must be an array of strings",
    ),
    "since as float": (
        [{"kinds": [1], "since": 1.5}],
        "invalid: since must be a non-negative integer timestamp",
    ),
    "negative until": (
        [{"kinds": [1], "until": -1}],
        "invalid: until must be a non-negative integer timestamp",
    ),
    "NUL in a tag value": (
        [{"#t": ["ok", "x\u0000y"]}],
        "invalid: #t values must not contain NUL characters",
    ),
}


@pytest.mark.parametrize("verb", ["REQ", "COUNT"])
@pytest.mark.parametrize("case", list(FILTER_CASES))
async def test_bad_filter_gets_closed(relay: RelayUnderTest, case: str, verb: str) -> None:
    filters, reason = FILTER_CASES[case]
    async with connect(relay.port) as client:
        await client.send([verb, "sub", *filters])
        assert await client.recv() == ["CLOSED", "sub", reason]
        # No subscription was opened: the proof event below (kind 1) is not delivered to it.
        await assert_open_and_nothing_stored(client, relay)


async def test_events_stored_together_with_a_refused_one_are_all_stored(
    relay: RelayUnderTest,
) -> None:
    """A burst of good events with NUL-carrying ones among them, on several connections
    so they share group-commit batches: every good one is stored, every bad one refused."""
    good = [make_event(tags=[["t", "burst"]]) for _ in range(60)]
    bad = [make_event(tags=[["t", "bad\u0000"]]) for _ in range(6)]
    events = good + bad
    async with connect(relay.port) as a, connect(relay.port) as b, connect(relay.port) as c:
        clients = [a, b, c]
        for i, event in enumerate(events):
            await clients[i % 3].send(["EVENT", event.to_dict()])
        answers: dict[str, list[Any]] = {}
        for i in range(len(events)):
            reply = await clients[i % 3].recv()
            answers[reply[1]] = reply
    assert all(answers[e.id][2] is True for e in good)
    assert all(answers[e.id][2] is False for e in bad)
    await assert_stored_exactly(relay, *good)


async def test_filter_with_10000_authors_gets_closed(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    # 10,000 hex authors take 670 KB: give the frame room so the filter limit is what refuses.
    relay = await start_relay(nursery, db_url, tmp_path, max_message_bytes=1024 * 1024)
    authors = [os.urandom(32).hex() for _ in range(10_000)]
    async with connect(relay.port) as client:
        await client.send(["REQ", "many", {"authors": authors}])
        assert await client.recv() == [
            "CLOSED", "many", "invalid: too many values in authors (max 1000)"
        ]
        await assert_open_and_nothing_stored(client, relay)


# -- nesting ---------------------------------------------------------------------------------

# orjson refuses more than 1024 levels of nesting ("depth limit exceeded").
DEEP_REASON = "invalid: message is nested too deeply"


async def test_deeply_nested_json_gets_notice(relay: RelayUnderTest) -> None:
    depth = 60_000  # 120,000 bytes: inside the 128 KiB frame limit
    async with connect(relay.port) as client:
        await client.send("[" * depth + "]" * depth)
        assert await client.recv() == ["NOTICE", DEEP_REASON]
        await client.send('["EVENT", ' + "[" * depth + "]" * depth + "]")
        assert await client.recv() == ["NOTICE", DEEP_REASON]
        await assert_open_and_nothing_stored(client, relay)


async def test_100000_nested_arrays_get_notice(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, max_message_bytes=256 * 1024)
    depth = 100_000
    async with connect(relay.port) as client:
        await client.send("[" * depth + "]" * depth)
        assert await client.recv() == ["NOTICE", DEEP_REASON]
        await assert_open_and_nothing_stored(client, relay)


async def test_nesting_within_the_parser_limit_is_parsed(relay: RelayUnderTest) -> None:
    """1,000 levels decode fine; the answer is then about the message, not the parser."""
    async with connect(relay.port) as client:
        await client.send("[" * 1000 + "]" * 1000)
        assert await client.recv() == ["NOTICE", NOT_STRING_VERB]
        await assert_open_and_nothing_stored(client, relay)


# -- UTF-8 -------------------------------------------------------------------------------------


async def test_invalid_utf8_in_binary_frame_gets_notice(relay: RelayUnderTest) -> None:
    event = bad_event()
    frame = dumps(["EVENT", event.to_dict()]).encode().replace(b"bad-input", b"bad-\xff\xfe")
    async with connect(relay.port) as client:
        await client.send(frame)
        assert await client.recv() == ["NOTICE", "invalid: message is not valid UTF-8"]
        await client.send(b"\xc3\x28")
        assert await client.recv() == ["NOTICE", "invalid: message is not valid UTF-8"]
        await assert_open_and_nothing_stored(client, relay)


async def test_valid_json_in_binary_frame_is_handled(relay: RelayUnderTest) -> None:
    event = make_event(tags=[["t", "binary"]])
    async with connect(relay.port) as client:
        await client.send(dumps(["EVENT", event.to_dict()]).encode())
        assert await client.recv() == ["OK", event.id, True, ""]
    await assert_stored_exactly(relay, event)


class RawWebsocket:
    """A websocket client on a bare trio socket: wsproto for the handshake and for reading."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.texts: list[str] = []

    async def handshake(self) -> None:
        await self.stream.send_all(self.ws.send(Request(host="127.0.0.1", target="/")))
        with trio.fail_after(RECEIVE_TIMEOUT):
            while True:
                self.ws.receive_data(await self.stream.receive_some(65536))
                for event in self.ws.events():
                    if isinstance(event, AcceptConnection):
                        return
                    raise AssertionError(f"handshake refused: {event!r}")

    async def wait_closed(self) -> int:
        """Read until the relay closes; the close code, 1006 if no close frame came."""
        with trio.fail_after(RECEIVE_TIMEOUT):
            while True:
                data = await self.stream.receive_some(65536)
                self.ws.receive_data(data or None)
                for event in self.ws.events():
                    if isinstance(event, TextMessage):
                        self.texts.append(event.data)
                    elif isinstance(event, CloseConnection):
                        return event.code
                if not data:
                    return 1006


@asynccontextmanager
async def raw_websocket(port: int) -> AsyncIterator[RawWebsocket]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        raw = RawWebsocket(stream)
        await raw.handshake()
        yield raw


async def test_invalid_utf8_in_text_frame_fails_the_connection_with_1007(
    relay: RelayUnderTest,
) -> None:
    event = bad_event()
    payload = dumps(["EVENT", event.to_dict()]).encode().replace(b"bad-input", b"bad-\xff\xfe")
    async with raw_websocket(relay.port) as raw:
        await raw.stream.send_all(client_frame(0x1, payload))
        assert await raw.wait_closed() == 1007
    await assert_stored_exactly(relay)
    # The relay itself carries on.
    async with connect(relay.port) as client:
        await assert_open_and_nothing_stored(client, relay)


async def test_hand_built_valid_text_frame_is_accepted(relay: RelayUnderTest) -> None:
    """The raw client above is sound: the same frame with valid UTF-8 is stored."""
    event = make_event(tags=[["t", "raw"]])
    async with raw_websocket(relay.port) as raw:
        await raw.stream.send_all(client_frame(0x1, dumps(["EVENT", event.to_dict()]).encode()))
        with trio.fail_after(RECEIVE_TIMEOUT):
            while not any(t.startswith('["OK"') for t in raw.texts):
                raw.ws.receive_data(await raw.stream.receive_some(65536))
                raw.texts += [e.data for e in raw.ws.events() if isinstance(e, TextMessage)]
    assert orjson.loads(raw.texts[-1]) == ["OK", event.id, True, ""]
    await assert_stored_exactly(relay, event)


# -- frame size --------------------------------------------------------------------------------


async def test_oversized_frame_closes_with_1009(relay: RelayUnderTest) -> None:
    event = make_event(tags=[["t", "huge"]], content="x" * (130 * 1024))
    async with connect(relay.port) as client:
        await client.send(["EVENT", event.to_dict()])
        assert await close_code_after(client) == 1009
    await assert_stored_exactly(relay)
    async with connect(relay.port) as client:
        await assert_open_and_nothing_stored(client, relay)


async def test_oversized_binary_frame_closes_with_1009(relay: RelayUnderTest) -> None:
    async with connect(relay.port) as client:
        await client.send(b"[" * (129 * 1024))
        assert await close_code_after(client) == 1009
    await assert_stored_exactly(relay)
