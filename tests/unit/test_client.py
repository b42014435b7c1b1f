"""The client side of `relay`, pure: keys, clone URLs from a relay URL, NIP-34 tags, the
lines `repo list` prints, and the git credential helper's input and answer."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest
from coincurve import PrivateKey

from relay import client
from relay.errors import EXIT_CONFIG, EXIT_FAILURE
from relay.events import kinds
from relay.events.model import check_id_and_signature, parse_event, sign_event
from relay.git import nip98
from relay.keys import pubkey_hex
from relay.protocol.bech32 import hex_to_npub

# A key with a known bech32 form (nostr-sdk's: Keys.parse("01" * 32)).
SECRET = "01" * 32
NSEC = "nsec1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqstywftw"
PUBKEY = "1b84c5567b126440995d3ed5aaba0565d71e1834604819ff9c17f5e9d5dd078f"
NPUB = "npub1rwzv24nmzfjypx2a8m264ws9vht3uxp5vpypnluuzl67n4waq78suk0wul"
OTHER = "ab" * 32


# -- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [SECRET, SECRET.upper(), f"  {SECRET}\n", NSEC, f"{NSEC}\n"])
def test_a_secret_key_is_hex_or_nsec(raw: str) -> None:
    key = client.parse_secret(raw)
    assert key is not None and pubkey_hex(key) == PUBKEY


@pytest.mark.parametrize("raw", ["", "zz", SECRET[:-2], NSEC[:-1] + "x", NPUB, "00" * 32])
def test_anything_else_is_no_key(raw: str) -> None:
    assert client.parse_secret(raw) is None


def test_the_key_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    assert client.load_key(None, {}) is None
    key = client.load_key(None, {"NOSTR_SECRET_KEY": NSEC})
    assert key is not None and pubkey_hex(key) == PUBKEY
    path = tmp_path / "key"
    path.write_text(SECRET + "\n")
    key = client.load_key(str(path), {"NOSTR_SECRET_KEY": "ff" * 32})
    assert key is not None and pubkey_hex(key) == PUBKEY  # the file wins


def test_a_key_that_is_given_but_unusable_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(client.UsageError, match="NOSTR_SECRET_KEY") as bad:
        client.load_key(None, {"NOSTR_SECRET_KEY": "not a key"})
    assert bad.value.exit_status == EXIT_CONFIG
    with pytest.raises(client.UsageError, match="cannot read --key-file"):
        client.load_key(f"{tmp_path}/missing", {})


def test_require_key_says_how_to_give_one() -> None:
    with pytest.raises(client.UsageError) as missing:
        client.require_key(None, {})
    assert str(missing.value) == client.KEY_HINT
    assert "NOSTR_SECRET_KEY" in client.KEY_HINT and "--key-file" in client.KEY_HINT


def test_whoami_lines() -> None:
    key = PrivateKey(bytes.fromhex(SECRET))
    assert client.whoami_lines(key) == [f"pubkey: {PUBKEY}", f"npub: {NPUB}"]


@pytest.mark.parametrize("value", [PUBKEY, PUBKEY.upper(), NPUB, f" {NPUB} "])
def test_a_pubkey_argument_is_npub_or_hex(value: str) -> None:
    assert client.parse_pubkey(value) == PUBKEY


@pytest.mark.parametrize("value", ["", "npub1xyz", NSEC, PUBKEY[:-1], "g" * 64])
def test_a_bad_pubkey_argument_is_a_usage_error(value: str) -> None:
    with pytest.raises(client.UsageError, match="not a public key"):
        client.parse_pubkey(value)


# -- relay URL and clone URLs ------------------------------------------------------------------


def test_the_relay_url_defaults_to_relay_url_then_localhost() -> None:
    assert client.relay_url(None, {}) == "ws://localhost:7777"
    assert client.relay_url(None, {"NOSTR_RELAY_URL": "wss://relay.example"}) == "wss://relay.example"
    assert client.relay_url("ws://a:1", {"NOSTR_RELAY_URL": "wss://b"}) == "ws://a:1"


@pytest.mark.parametrize("value", ["http://localhost:7777", "localhost:7777", "ws://", "wss:///x"])
def test_a_relay_url_that_is_not_a_websocket_url_is_a_usage_error(value: str) -> None:
    with pytest.raises(client.UsageError, match="ws:// or wss://"):
        client.relay_url(value, {})


@pytest.mark.parametrize(
    ("relay", "base"),
    [
        ("ws://localhost:7777", "http://localhost:7777"),
        ("ws://localhost:7777/", "http://localhost:7777"),
        ("ws://127.0.0.1:40123/", "http://127.0.0.1:40123"),
        ("wss://relay.example.com", "https://relay.example.com"),
        ("wss://Relay.Example.COM/", "https://relay.example.com"),
        ("wss://relay.example.com:8443", "https://relay.example.com:8443"),
        ("wss://relay.example.com:443", "https://relay.example.com"),
        ("ws://relay.example.com:80/", "http://relay.example.com"),
        ("ws://[::1]:7777", "http://[::1]:7777"),
        ("wss://relay.example.com/nostr", "https://relay.example.com"),
    ],
)
def test_the_git_base_of_a_relay_url(relay: str, base: str) -> None:
    assert client.http_base(relay) == base


def test_both_clone_url_forms() -> None:
    assert client.clone_urls("ws://localhost:7777", PUBKEY, "demo") == (
        f"http://localhost:7777/{NPUB}/demo.git",
        f"http://localhost:7777/git/{PUBKEY}/demo.git",
    )
    assert client.clone_urls("wss://relay.example.com", PUBKEY, "demo") == (
        f"https://relay.example.com/{NPUB}/demo.git",
        f"https://relay.example.com/git/{PUBKEY}/demo.git",
    )


def test_the_clone_urls_are_the_relays_own_urls_of_the_repository() -> None:
    """The relay hosts an announcement whose clone tag lists it (GRASP-01)."""
    from relay.git.grasp import names_repo

    for url in client.clone_urls("ws://localhost:7777", PUBKEY, "demo"):
        assert names_repo(url, frozenset({"localhost"}), "demo") == PUBKEY


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "name"), [("demo", "demo"), ("demo.git", "demo"), ("a.b_c-1", "a.b_c-1")]
)
def test_a_repo_name(raw: str, name: str) -> None:
    assert client.repo_name(raw) == name


@pytest.mark.parametrize("raw", ["", ".hidden", "a..b", "a/b", "x" * 65, "sp ace", "é"])
def test_a_bad_repo_name_is_a_usage_error(raw: str) -> None:
    with pytest.raises(client.UsageError, match="repo id") as bad:
        client.repo_name(raw)
    assert bad.value.exit_status == EXIT_CONFIG


# -- tags ------------------------------------------------------------------------------------


def test_announcement_tags() -> None:
    tags = client.announcement_tags(
        "demo", PUBKEY, "ws://localhost:7777", description="A demo", maintainers=[OTHER]
    )
    assert tags == [
        ["d", "demo"],
        ["name", "demo"],
        ["description", "A demo"],
        [
            "clone",
            f"http://localhost:7777/{NPUB}/demo.git",
            f"http://localhost:7777/git/{PUBKEY}/demo.git",
        ],
        ["relays", "ws://localhost:7777"],
        ["maintainers", OTHER],
    ]


def test_announcement_tags_leave_out_what_was_not_given() -> None:
    tags = client.announcement_tags("demo", PUBKEY, "wss://relay.example.com/")
    assert [t[0] for t in tags] == ["d", "name", "clone", "relays"]
    assert ["relays", "wss://relay.example.com/"] in tags


def test_deletion_tags() -> None:
    assert client.deletion_tags(PUBKEY, "demo") == [["a", f"30617:{PUBKEY}:demo"]]
    assert client.deletion_tags(PUBKEY, "demo", "cd" * 32) == [
        ["a", f"30617:{PUBKEY}:demo"],
        ["e", "cd" * 32],
    ]


# -- repo list -------------------------------------------------------------------------------


def test_a_listing_line_prefers_the_clone_url_of_this_relay() -> None:
    event = sign_event(
        PrivateKey(bytes.fromhex(SECRET)),
        kind=kinds.REPO_ANNOUNCEMENT,
        created_at=1,
        tags=[
            ["d", "demo"],
            ["description", "two\nlines\tand a tab"],
            ["clone", "https://github.com/x/demo.git"],
            ["clone", f"http://localhost:7777/{NPUB}/demo.git", "https://elsewhere/demo.git"],
        ],
    )
    line = client.listing_line(event, "ws://localhost:7777")
    assert line.split("\t") == [
        "demo",
        NPUB,
        f"http://localhost:7777/{NPUB}/demo.git",
        "two lines and a tab",
    ]


def test_a_listing_line_falls_back_to_the_first_clone_url() -> None:
    event = sign_event(
        PrivateKey(bytes.fromhex(SECRET)),
        kind=kinds.REPO_ANNOUNCEMENT,
        created_at=1,
        tags=[["d", "demo"], ["clone", "https://a/demo.git", "https://b/demo.git"]],
    )
    assert client.listing_line(event, "wss://relay.example.com").split("\t") == [
        "demo", NPUB, "https://a/demo.git", "",
    ]  # fmt: skip
    bare = sign_event(PrivateKey(bytes.fromhex(SECRET)), kind=kinds.REPO_ANNOUNCEMENT, created_at=1)
    assert client.listing_line(bare, "wss://r").split("\t") == ["", NPUB, "", ""]


def test_this_relays_url_matches_on_scheme_host_and_port() -> None:
    relay = "wss://relay.example.com"
    assert client.is_this_relay("https://RELAY.example.com/x/y.git", relay)
    assert client.is_this_relay("https://relay.example.com:443/x/y.git", relay)
    assert not client.is_this_relay("http://relay.example.com/x/y.git", relay)
    assert not client.is_this_relay("https://relay.example.com:8443/x/y.git", relay)
    assert not client.is_this_relay("https://other.example.com/x/y.git", relay)
    assert not client.is_this_relay("not a url at all", relay)


# -- git credential helper -------------------------------------------------------------------


def test_git_credential_input_is_read_up_to_a_blank_line() -> None:
    text = (
        "protocol=https\nhost=relay.example.com:8443\npath=npub1x/demo.git\n"
        'wwwauth[]=Nostr realm="git"\ncapability[]=authtype\n\nignored=after\n'
    )
    assert client.read_credential_request(text) == {
        "protocol": "https",
        "host": "relay.example.com:8443",
        "path": "npub1x/demo.git",
        "wwwauth[]": 'Nostr realm="git"',
        "capability[]": "authtype",
    }
    assert client.read_credential_request("protocol=http\r\nhost=h\r\n") == {
        "protocol": "http",
        "host": "h",
    }
    assert client.read_credential_request("") == {}
    assert client.read_credential_request("garbage\nhost=a=b\n") == {"host": "a=b"}


@pytest.mark.parametrize(
    ("fields", "url"),
    [
        ({"protocol": "http", "host": "127.0.0.1:7777", "path": "npub1x/demo.git"},
         "http://127.0.0.1:7777/npub1x/demo.git"),
        ({"protocol": "https", "host": "relay.example.com", "path": "git/ab/demo.git/"},
         "https://relay.example.com/git/ab/demo.git"),
        ({"protocol": "http", "host": "h"}, None),  # no credential.useHttpPath
        ({"protocol": "http", "host": "h", "path": ""}, None),
        ({"protocol": "ssh", "host": "h", "path": "x.git"}, None),
        ({"host": "h", "path": "x.git"}, None),
        ({"protocol": "https", "path": "x.git"}, None),
    ],
)  # fmt: skip
def test_the_url_a_token_is_signed_for(fields: dict[str, str], url: str | None) -> None:
    assert client.credential_url(fields) == url


def test_the_credential_answer_is_a_nip98_token_as_basic_password() -> None:
    key = PrivateKey(bytes.fromhex(SECRET))
    fields = {"protocol": "https", "host": "relay.example.com", "path": "npub1x/demo.git"}
    answer = client.credential_answer(key, fields, now=1_700_000_000)
    assert answer is not None
    username, password, end = answer.split("\n")
    assert username == "username=nostr" and end == ""
    assert password.startswith("password=")
    token = password.removeprefix("password=")
    event = parse_event(orjson.loads(base64.b64decode(token, validate=True)))
    check_id_and_signature(event)
    assert event.kind == kinds.HTTP_AUTH and event.pubkey == PUBKEY
    assert event.created_at == 1_700_000_000
    assert event.tags == (("u", "https://relay.example.com/npub1x/demo.git"), ("method", "GET"))
    # The event `relay token` prints (the signature aside: BIP-340 signing is randomized).
    printed = nip98.make_token(key, "https://relay.example.com/npub1x/demo.git", now=1_700_000_000)
    assert printed.startswith("Nostr ")
    assert (
        parse_event(orjson.loads(base64.b64decode(printed.removeprefix("Nostr ")))).id == event.id
    )
    signer = nip98.authenticate(
        f"Nostr {token}", scheme="https", host="relay.example.com",
        repo_root="/npub1x/demo.git", now=1_700_000_010,
    )  # fmt: skip
    assert signer == PUBKEY


def test_no_answer_without_a_repository_url() -> None:
    key = PrivateKey(bytes.fromhex(SECRET))
    assert client.credential_answer(key, {"protocol": "https", "host": "h"}) is None


def test_errors_name_their_exit_status() -> None:
    assert client.UsageError("x").exit_status == EXIT_CONFIG
    assert client.RelayError("x").exit_status == EXIT_FAILURE
    assert hex_to_npub(PUBKEY) == NPUB
