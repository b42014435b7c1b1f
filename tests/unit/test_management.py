"""NIP-86's sans-IO parts: the call, the token's checks, the moderation state."""

from __future__ import annotations

import base64
import hashlib
import time

import pytest

from relay.events import kinds
from relay.events.model import sign_event
from relay.git.nip98 import Unauthorized
from relay.server.management import (
    ModerationState,
    RpcError,
    authorize,
    normalize_ip,
    parse_call,
)
from relay.store.moderation import ModerationRows
from tests.helpers import make_event, new_key

BODY = b'{"method":"supportedmethods","params":[]}'
NAMES = frozenset({"relay.test", "alias.test"})


def token(
    url: str = "https://relay.test/",
    method: str = "POST",
    payload: str | None = hashlib.sha256(BODY).hexdigest(),
    created_at: int | None = None,
) -> tuple[str, str]:
    key = new_key()
    tags = [["u", url], ["method", method]]
    if payload is not None:
        tags.append(["payload", payload])
    event = sign_event(
        key, kind=kinds.HTTP_AUTH, tags=tags, created_at=created_at or int(time.time())
    )
    return "Nostr " + base64.b64encode(event.to_json().encode()).decode(), event.pubkey


def check(header: str, body: bytes = BODY, host: str = "relay.test") -> str:
    return authorize(header, body, scheme="https", host=host, aliases=NAMES)


def test_a_valid_token_names_its_signer() -> None:
    header, pubkey = token()
    assert check(header) == pubkey


def test_any_name_of_the_community_is_accepted() -> None:
    header, pubkey = token("https://alias.test")
    assert check(header) == pubkey


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer abc",
        "Nostr not-base64!",
        token(payload=None)[0],
        token(payload="00" * 32)[0],
        token(method="GET")[0],
        token(url="https://elsewhere.test/")[0],
        token(url="http://relay.test/")[0],
        token(url="https://relay.test/other")[0],
        token(created_at=int(time.time()) - 3600)[0],
    ],
)
def test_bad_tokens_are_refused(header: str) -> None:
    with pytest.raises(Unauthorized):
        check(header)


def test_the_payload_is_the_body_hash() -> None:
    header, _ = token()
    with pytest.raises(Unauthorized, match="payload"):
        check(header, body=b'{"method":"banpubkey","params":[]}')


def test_calls_are_parsed() -> None:
    call = parse_call(b'{"method": "banpubkey", "params": ["ab", "spam"]}')
    assert (call.method, call.params) == ("banpubkey", ["ab", "spam"])
    assert parse_call(b'{"method": "supportedmethods"}').params == []
    for bad in (b"nope", b"[]", b'{"params": []}', b'{"method": "x", "params": {}}'):
        with pytest.raises(RpcError):
            parse_call(bad)


def test_state_refuses_banned_pubkeys_and_events_per_community() -> None:
    author, other = new_key(), new_key()
    event, fine = make_event(author), make_event(other)
    state = ModerationState.of(
        ModerationRows(
            pubkeys=((1, "banned", event.pubkey, "spam"),),
            events=((1, fine.id, ""),),
        )
    )
    assert state.refusal(1, event) == "blocked: this pubkey is banned here"
    assert state.refusal(1, fine) == "blocked: this event is banned here"
    assert state.refusal(2, event) is None and state.refusal(2, fine) is None
    assert state.refusal(1, make_event(other)) is None


def test_an_allow_list_admits_only_its_pubkeys() -> None:
    allowed, stranger = make_event(new_key()), make_event(new_key())
    state = ModerationState.of(ModerationRows(pubkeys=((1, "allowed", allowed.pubkey, ""),)))
    assert state.refusal(1, allowed) is None
    assert state.refusal(1, stranger) == "blocked: only allowed pubkeys may publish here"
    assert state.refusal(2, stranger) is None


def test_blocked_addresses_are_compared_in_canonical_form() -> None:
    state = ModerationState.of(ModerationRows(ips=((1, normalize_ip("2001:DB8::0:1"), ""),)))
    assert state.ip_blocked(1, "2001:db8::1")
    assert not state.ip_blocked(2, "2001:db8::1")
    assert not state.ip_blocked(1, "unknown")
    with pytest.raises(ValueError):
        normalize_ip("not an address")
