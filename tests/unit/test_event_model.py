"""The Nostr event model: NIP-01 canonical serialization and id, BIP-340 signatures, shape
checks, and the kind ranges that decide how an event is stored."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest
from coincurve import PrivateKey

from relay.events.kinds import Storage, storage_class
from relay.events.model import (
    MAX_TIMESTAMP,
    Event,
    InvalidEvent,
    check_id_and_signature,
    compute_id,
    parse_event,
    serialize_for_id,
    sign_event,
    verify_signature,
)

# Secret key 1: its x-only public key is the x coordinate of the secp256k1 generator G,
# a value that can be written down without trusting any library.
SECRET_ONE = PrivateKey((1).to_bytes(32, "big"))
G_X = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
OTHER_SECRET = PrivateKey((2).to_bytes(32, "big"))

# The example event of NIP-70: a real BIP-340 signature by key 1 over the given id. (The id in
# the NIP text is not the hash of the fields shown next to it, which the id check must catch.)
NIP70_EXAMPLE: dict[str, Any] = {
    "id": "cb8feca582979d91fe90455867b34dbf4d65e4b86e86b3c68c368ca9f9eef6f2",
    "pubkey": G_X,
    "created_at": 1707409439,
    "kind": 1,
    "tags": [["-"]],
    "content": "hello members of the secret group",
    "sig": "fa163f5cfb75d77d9b6269011872ee22b34fb48d23251e9879bb1e4ccbdd8aaa"
    "f4b6dc5f5084a65ef42c52fbcde8f3178bac3ba207de827ec513a6aa39fa684c",
}


def signed(**overrides: Any) -> Event:
    values: dict[str, Any] = {"kind": 1, "content": "hello", "tags": [], "created_at": 1700000000}
    values.update(overrides)
    return sign_event(SECRET_ONE, **values)


# --- canonical serialization and id ----------------------------------------------------------


def test_key_one_has_the_generator_as_public_key() -> None:
    assert signed().pubkey == G_X


def test_known_vector_id_is_sha256_of_the_hand_written_canonical_form() -> None:
    event = sign_event(
        SECRET_ONE,
        kind=1,
        content='hi "nostr"\n',
        tags=[["e", "ab" * 32, "wss://relay.example.com/"], ["t", "nostr"]],
        created_at=1700000000,
    )
    canonical = (
        '[0,"79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",1700000000,1,'
        '[["e","abababababababababababababababababababababababababababababababab",'
        '"wss://relay.example.com/"],["t","nostr"]],"hi \\"nostr\\"\\n"]'
    )
    assert (
        serialize_for_id(event.pubkey, event.created_at, event.kind, event.tags, event.content)
        == canonical.encode()
    )
    assert event.id == hashlib.sha256(canonical.encode()).hexdigest()
    assert event.id == compute_id(G_X, 1700000000, 1, event.tags, 'hi "nostr"\n')
    assert verify_signature(event)


def test_empty_event_canonical_form() -> None:
    canonical = f'[0,"{G_X}",0,0,[],""]'.encode()
    assert serialize_for_id(G_X, 0, 0, [], "") == canonical
    assert compute_id(G_X, 0, 0, [], "") == hashlib.sha256(canonical).hexdigest()


@pytest.mark.parametrize(
    ("char", "escaped"),
    [
        ("\n", "\\n"),
        ('"', '\\"'),
        ("\\", "\\\\"),
        ("\r", "\\r"),
        ("\t", "\\t"),
        ("\b", "\\b"),
        ("\f", "\\f"),
        # Other control characters cannot appear raw in JSON: the \u00XX form, lowercase.
        ("\x01", "\\u0001"),
        ("\x1f", "\\u001f"),
        # Everything else verbatim: no escaping of '/', non-ASCII, DEL or U+2028.
        ("/", "/"),
        ("é", "é"),
        ("日本", "日本"),
        ("😀", "😀"),
        ("\x7f", "\x7f"),
        ("\u2028", "\u2028"),
        ("<>&'", "<>&'"),
    ],
)
def test_content_escaping_follows_nip01(char: str, escaped: str) -> None:
    expected = f'[0,"{G_X}",1,1,[],"x{escaped}y"]'.encode()
    assert serialize_for_id(G_X, 1, 1, [], f"x{char}y") == expected


def test_all_nip01_escapes_in_one_content_and_in_tags() -> None:
    content = 'a\nb"c\\d\re\tf\bg\fh\x01i/j é 😀'
    written = 'a\\nb\\"c\\\\d\\re\\tf\\bg\\fh\\u0001i/j é 😀'
    canonical = f'[0,"{G_X}",1700000000,1,[["t","{written}"]],"{written}"]'
    event = signed(content=content, tags=[["t", content]])
    assert serialize_for_id(G_X, 1700000000, 1, [["t", content]], content) == canonical.encode(
        "utf-8"
    )
    assert event.id == hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_tags_as_tuples_or_lists_serialize_the_same() -> None:
    as_lists = [["e", "x", "y"], ["-"]]
    as_tuples = (("e", "x", "y"), ("-",))
    assert serialize_for_id(G_X, 5, 1, as_lists, "c") == serialize_for_id(G_X, 5, 1, as_tuples, "c")


def test_each_field_changes_the_id() -> None:
    base = compute_id(G_X, 1, 1, [["t", "a"]], "c")
    assert compute_id("00" * 32, 1, 1, [["t", "a"]], "c") != base
    assert compute_id(G_X, 2, 1, [["t", "a"]], "c") != base
    assert compute_id(G_X, 1, 2, [["t", "a"]], "c") != base
    assert compute_id(G_X, 1, 1, [["t", "b"]], "c") != base
    assert compute_id(G_X, 1, 1, [["t", "a"]], "d") != base


def test_to_json_round_trips_through_parse_event() -> None:
    event = signed(content="line\nbreak", tags=[["e", "ab" * 32], ["-"]])
    again = parse_event(orjson.loads(event.to_json()))
    assert again == event
    assert again.tags == (("e", "ab" * 32), ("-",))
    assert orjson.loads(event.to_json()) == event.to_dict()
    assert event.to_dict()["tags"] == [["e", "ab" * 32], ["-"]]


def test_tag_accessors() -> None:
    event = signed(tags=[["d"], ["t", "one", "extra"], ["t", "two"], ["-"]])
    assert event.first_tag_value("t") == "one"
    assert event.first_tag_value("d") is None  # a name without a value has no value
    assert event.first_tag_value("x") is None
    assert event.tag_values("t") == ["one", "two"]
    assert event.has_tag("-")
    assert event.has_tag("d")
    assert not event.has_tag("x")


# --- signatures --------------------------------------------------------------------------------


def test_signed_event_verifies() -> None:
    event = signed()
    assert verify_signature(event)
    check_id_and_signature(event)  # does not raise


def test_nip70_example_signature_verifies_but_its_id_does_not_match() -> None:
    event = parse_event(NIP70_EXAMPLE)
    assert verify_signature(event)
    with pytest.raises(InvalidEvent, match=r"^event id does not match its content$"):
        check_id_and_signature(event)


def _replace(event: Event, **changes: Any) -> Event:
    values = event.to_dict()
    values.update(changes)
    return parse_event(values)


def test_tampered_signature_does_not_verify() -> None:
    event = signed()
    flipped = event.sig[:-1] + ("0" if event.sig[-1] != "0" else "1")
    bad = _replace(event, sig=flipped)
    assert not verify_signature(bad)
    with pytest.raises(InvalidEvent, match=r"^signature does not verify$"):
        check_id_and_signature(bad)


def test_signature_by_another_key_does_not_verify() -> None:
    event = signed()
    other = sign_event(OTHER_SECRET, kind=1, content="hello", created_at=1700000000)
    assert not verify_signature(_replace(event, pubkey=other.pubkey))
    assert not verify_signature(_replace(event, sig=other.sig))


def test_signature_over_another_id_does_not_verify() -> None:
    event = signed()
    other = signed(content="other")
    assert not verify_signature(_replace(event, id=other.id))


@pytest.mark.parametrize("pubkey", ["ff" * 32, "00" * 32])
def test_pubkey_off_the_curve_is_false_not_an_error(pubkey: str) -> None:
    assert verify_signature(_replace(signed(), pubkey=pubkey)) is False


def test_changed_content_fails_the_id_check() -> None:
    event = _replace(signed(), content="changed")
    with pytest.raises(InvalidEvent, match=r"^event id does not match its content$"):
        check_id_and_signature(event)


# --- parse_event shape errors ------------------------------------------------------------------


def good_dict() -> dict[str, Any]:
    return signed(tags=[["t", "a"]]).to_dict()


def test_parse_event_accepts_a_good_event() -> None:
    raw = good_dict()
    event = parse_event(raw)
    assert event.to_dict() == raw


@pytest.mark.parametrize("value", [None, [], "event", 1])
def test_parse_event_needs_an_object(value: object) -> None:
    with pytest.raises(InvalidEvent, match=r"^event must be a JSON object$"):
        parse_event(value)


def test_parse_event_names_every_missing_field_sorted() -> None:
    raw = good_dict()
    del raw["sig"], raw["content"], raw["kind"]
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw)
    assert str(caught.value) == "event is missing content, kind, sig"


ID_MSG = "id must be 64 lowercase hex characters"
PUBKEY_MSG = "pubkey must be 64 lowercase hex characters"
SIG_MSG = "sig must be 128 lowercase hex characters"
CREATED_MSG = "created_at must be a non-negative integer timestamp"
KIND_MSG = "kind must be an integer between 0 and 65535"
CONTENT_MSG = "content must be a string"
TAGS_MSG = "tags must be an array of arrays of strings"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("id", "AB" * 32, ID_MSG),
        ("id", "ab" * 31, ID_MSG),
        ("id", "ab" * 33, ID_MSG),
        ("id", "zz" * 32, ID_MSG),
        ("id", None, ID_MSG),
        ("pubkey", "A" * 64, PUBKEY_MSG),
        ("pubkey", "a" * 63, PUBKEY_MSG),
        ("pubkey", 1, PUBKEY_MSG),
        ("sig", "ab" * 32, SIG_MSG),
        ("sig", "AB" * 64, SIG_MSG),
        ("sig", "g" * 128, SIG_MSG),
        ("created_at", -1, CREATED_MSG),
        ("created_at", 1.0, CREATED_MSG),
        ("created_at", "1700000000", CREATED_MSG),
        ("created_at", True, CREATED_MSG),
        ("created_at", MAX_TIMESTAMP + 1, CREATED_MSG),
        ("kind", -1, KIND_MSG),
        ("kind", 65536, KIND_MSG),
        ("kind", 1.0, KIND_MSG),
        ("kind", "1", KIND_MSG),
        ("kind", False, KIND_MSG),
        ("content", None, CONTENT_MSG),
        ("content", 1, CONTENT_MSG),
        ("content", ["a"], CONTENT_MSG),
        ("tags", None, TAGS_MSG),
        ("tags", {"t": "a"}, TAGS_MSG),
        ("tags", "t", TAGS_MSG),
        ("tags", ["t"], TAGS_MSG),
        ("tags", [["t", 1]], TAGS_MSG),
        ("tags", [["t", None]], TAGS_MSG),
        ("tags", [["t", ["a"]]], TAGS_MSG),
        ("tags", [["t", "a"], "p"], TAGS_MSG),
    ],
)
def test_parse_event_shape_errors(field: str, value: object, message: str) -> None:
    raw = good_dict()
    raw[field] = value
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("field", "value"),
    [("created_at", 0), ("created_at", MAX_TIMESTAMP), ("kind", 0), ("kind", 65535)],
)
def test_parse_event_accepts_the_range_ends(field: str, value: int) -> None:
    raw = good_dict()
    raw[field] = value
    assert getattr(parse_event(raw), field) == value


def test_parse_event_checks_shape_only_not_the_id() -> None:
    raw = good_dict()
    raw["content"] = "not what was signed"
    assert parse_event(raw).content == "not what was signed"


# --- kinds -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "storage"),
    [
        (0, Storage.REPLACEABLE),
        (1, Storage.REGULAR),
        (2, Storage.REGULAR),
        (3, Storage.REPLACEABLE),
        (4, Storage.REGULAR),
        (9999, Storage.REGULAR),
        (10000, Storage.REPLACEABLE),
        (19999, Storage.REPLACEABLE),
        (20000, Storage.EPHEMERAL),
        (22242, Storage.EPHEMERAL),
        (29999, Storage.EPHEMERAL),
        (30000, Storage.ADDRESSABLE),
        (39999, Storage.ADDRESSABLE),
        (40000, Storage.REGULAR),
        (65535, Storage.REGULAR),
    ],
)
def test_storage_class_boundaries(kind: int, storage: Storage) -> None:
    assert storage_class(kind) is storage
