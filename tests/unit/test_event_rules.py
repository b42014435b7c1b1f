"""relay.events.rules: the acceptance rules of one event (shape limits, NIP-40 expiration,
the signature, NIP-70 protected events) and of NIP-42 AUTH events."""

from __future__ import annotations

import pytest
from coincurve import PrivateKey

from relay.events import kinds
from relay.events.model import Event, InvalidEvent, parse_event
from relay.events.rules import (
    check_auth_event,
    check_publishable,
    check_shape_limits,
    check_signature,
    expiration_of,
)
from relay.protocol.limits import Limits
from tests.unit.samples import ALICE, ALICE_PK, BOB, BOB_PK, LIMITS, NOW, event


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


def auth_at_now(
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
    return check_auth_event(ev, CHALLENGE, frozenset({host}), NOW, LIMITS)


def test_good_auth_event() -> None:
    assert check_auth(auth_at_now()) is None
    assert check_auth(auth_at_now(relay="wss://LOCALHOST./")) is None
    assert check_auth(auth_at_now(relay="ws://localhost")) is None
    assert check_auth(auth_at_now(relay="wss://alpha.test/some/path"), "alpha.test") is None
    window = LIMITS.auth_window_seconds
    assert check_auth(auth_at_now(created_at=NOW - window)) is None
    assert check_auth(auth_at_now(created_at=NOW + window)) is None


def test_auth_wrong_kind() -> None:
    assert check_auth(auth_at_now(kind=1)) == "invalid: AUTH event must be kind 22242"


@pytest.mark.parametrize("offset", [-601, 601, -100_000])
def test_auth_stale_or_future_created_at(offset: int) -> None:
    assert check_auth(auth_at_now(created_at=NOW + offset)) == (
        "invalid: AUTH event created_at must be within 600 s"
    )


@pytest.mark.parametrize("challenge", ["wrong", "", None, CHALLENGE.upper()])
def test_auth_wrong_challenge(challenge: str | None) -> None:
    assert check_auth(auth_at_now(challenge=challenge)) == "invalid: AUTH challenge does not match"


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
    assert check_auth(auth_at_now(relay=relay)) == (
        "invalid: AUTH relay tag does not name this relay"
    )


def test_auth_event_with_a_bad_signature() -> None:
    good = auth_at_now()
    other = auth_at_now(key=BOB)
    forged = parse_event({**good.to_dict(), "sig": other.sig})
    assert check_auth(forged) == "invalid: signature does not verify"
    impostor = parse_event({**good.to_dict(), "pubkey": BOB_PK})
    assert check_auth(impostor) == "invalid: event id does not match its content"
