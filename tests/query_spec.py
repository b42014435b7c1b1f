"""Random events and random NIP-01 filters over a small world (three keys, a few kinds, tag
values and timestamps), so that random filters often match random events. Shared by the
SQL-versus-matcher property test and the subscription index property test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coincurve import PrivateKey
from hypothesis import strategies as st

from relay.events.model import Event, sign_event

BASE = 1_700_000_000
NOW = BASE + 10  # the query time; created_at values sit in BASE..BASE+4
KEYS = [PrivateKey(bytes([i + 1]) * 32) for i in range(3)]
PUBKEYS = [key.public_key_xonly.format().hex() for key in KEYS]
UNKNOWN_PUBKEY = "ee" * 32
UNKNOWN_ID = "dd" * 32
# Regular kinds, one replaceable kind and one addressable kind.
REGULAR_KINDS = (1, 7, 1111)
REPLACEABLE_KIND = 10002
ADDRESSABLE_KIND = 30023
KINDS = (*REGULAR_KINDS, REPLACEABLE_KIND, ADDRESSABLE_KIND)
TAG_NAMES = ("e", "p", "t", "T", "d")
TAG_VALUES = ("a", "b", "c")


@dataclass(frozen=True)
class Spec:
    key: int
    kind: int
    created_at: int
    tags: tuple[tuple[str, ...], ...]
    content: str

    def sign(self) -> Event:
        return sign_event(
            KEYS[self.key],
            kind=self.kind,
            content=self.content,
            tags=[list(t) for t in self.tags],
            created_at=self.created_at,
        )


single_letter_tag = st.builds(
    lambda name, value, extra: (name, value, *extra),
    st.sampled_from(TAG_NAMES),
    st.sampled_from(TAG_VALUES),
    st.lists(st.sampled_from(TAG_VALUES), max_size=1),
)
tag = st.one_of(
    single_letter_tag,
    single_letter_tag,
    st.just(("t",)),  # a name without a value is not indexed
    st.tuples(st.just("tt"), st.sampled_from(TAG_VALUES)),  # not a single letter
    # NIP-40: expired exactly at NOW, expired before, or still alive.
    st.sampled_from([NOW - 3, NOW, NOW + 1, NOW + 100]).map(lambda t: ("expiration", str(t))),
)
spec = st.builds(
    Spec,
    key=st.integers(0, len(KEYS) - 1),
    kind=st.sampled_from(KINDS),
    created_at=st.integers(BASE, BASE + 4),
    tags=st.lists(tag, max_size=4).map(tuple),
    content=st.sampled_from(["", "x", "y"]),
)


def filter_dict(ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    def subset(values: list[Any] | tuple[Any, ...]) -> st.SearchStrategy[list[Any]]:
        return st.lists(st.sampled_from(values), max_size=3, unique=True)

    tag_values = subset([*TAG_VALUES, "z"])
    return st.fixed_dictionaries(
        {},
        optional={
            "ids": subset([*ids, UNKNOWN_ID]),
            "authors": subset([*PUBKEYS, UNKNOWN_PUBKEY]),
            "kinds": subset([*KINDS, 2]),
            "#e": tag_values,
            "#p": tag_values,
            "#t": tag_values,
            "#T": tag_values,
            "#d": tag_values,
            "since": st.integers(BASE - 1, BASE + 5),
            "until": st.integers(BASE - 1, BASE + 5),
            "limit": st.integers(0, 6),
        },
    )
