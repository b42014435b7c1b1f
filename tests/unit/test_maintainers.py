"""The pure part of relay.git.maintainers: the keys an announcement's `maintainers` tags
list (the first hop of the maintainer set)."""

from __future__ import annotations

from relay.events import kinds
from relay.events.model import Event
from relay.git.maintainers import direct_maintainers, listed_maintainers
from tests.unit.samples import ALICE, ALICE_PK, BOB_PK, event

CAROL_PK = "cc" * 32
DAVE_PK = "dd" * 32


def announced_with(*tags: list[str]) -> Event:
    return event(ALICE, kind=kinds.REPO_ANNOUNCEMENT, tags=[["d", "demo"], *tags])


def test_every_maintainers_tag_counts_in_order() -> None:
    ann = announced_with(["maintainers", BOB_PK, CAROL_PK], ["t", "x"], ["maintainers", DAVE_PK])
    assert listed_maintainers(ann) == [BOB_PK, CAROL_PK, DAVE_PK]


def test_only_64_lowercase_hex_values_are_keys() -> None:
    ann = announced_with(
        ["maintainers", BOB_PK.upper(), "npub1xyz", BOB_PK[:63], "", CAROL_PK, BOB_PK + "00"]
    )
    assert listed_maintainers(ann) == [CAROL_PK]


def test_other_tags_naming_keys_do_not_make_maintainers() -> None:
    ann = announced_with(["p", BOB_PK], ["maintainer", CAROL_PK], ["maintainers"])
    assert listed_maintainers(ann) == []
    assert direct_maintainers(ann) == frozenset({ALICE_PK})


def test_the_announcer_is_always_a_maintainer() -> None:
    ann = announced_with(["maintainers", BOB_PK, ALICE_PK])
    assert direct_maintainers(ann) == frozenset({ALICE_PK, BOB_PK})
