"""relay.store.events: the pure part, NIP-01 addresses (kind:pubkey:d) parsed."""

from __future__ import annotations

from relay.store.events import Coordinate, parse_address
from tests.unit.samples import ALICE_PK


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
