"""GRASP-01's pure rules: which clone URLs are ours, what a state claims, PR refs."""

from __future__ import annotations

import pytest

from relay.events import kinds
from relay.git import grasp
from relay.keys import pubkey_hex
from relay.protocol.bech32 import hex_to_npub
from tests.helpers import make_event, new_key

KEY = new_key()
OWNER = pubkey_hex(KEY)
NPUB = hex_to_npub(OWNER)
HOSTS = frozenset({"relay.example", "127.0.0.1"})
A, B, C = "a" * 40, "b" * 40, "c" * 40


@pytest.mark.parametrize(
    "url",
    [
        f"https://relay.example/{NPUB}/demo.git",
        f"http://relay.example:7777/{NPUB}/demo.git",
        f"https://RELAY.example./{NPUB}/demo.git/",
        f"https://relay.example/git/{OWNER}/demo",
        f"https://relay.example/git/{OWNER}/demo.git",
        f"http://127.0.0.1:8080/{NPUB}/demo.git",
    ],
)
def test_our_urls_name_the_owner(url: str) -> None:
    assert grasp.names_repo(url, HOSTS, "demo") == OWNER


@pytest.mark.parametrize(
    "url",
    [
        f"https://other.example/{NPUB}/demo.git",  # not a host of the community
        f"ssh://relay.example/{NPUB}/demo.git",
        f"https://relay.example/{NPUB}/other.git",  # another repository
        f"https://relay.example/{NPUB}/demo",  # the npub form ends in .git
        f"https://relay.example/x/{NPUB}/demo.git",
        f"https://relay.example/git/{OWNER[:-1]}/demo",
        "https://relay.example/npub1notakey/demo.git",
        "not a url at all",
        "https://[::1/x",
    ],
)
def test_other_urls_name_nobody(url: str) -> None:
    assert grasp.names_repo(url, HOSTS, "demo") is None


def test_an_announcement_lists_us_only_under_its_own_key() -> None:
    mine = make_event(
        KEY,
        kind=kinds.REPO_ANNOUNCEMENT,
        tags=[
            ["d", "demo"],
            ["clone", "https://elsewhere.example/x.git", f"https://relay.example/{NPUB}/demo.git"],
        ],
    )
    assert grasp.lists_this_relay(mine, HOSTS, "demo")
    other = hex_to_npub(pubkey_hex(new_key()))
    theirs = make_event(
        KEY,
        kind=kinds.REPO_ANNOUNCEMENT,
        tags=[["d", "demo"], ["clone", f"https://relay.example/{other}/demo.git"]],
    )
    assert not grasp.lists_this_relay(theirs, HOSTS, "demo")
    bare = make_event(KEY, kind=kinds.REPO_ANNOUNCEMENT, tags=[["d", "demo"]])
    assert not grasp.lists_this_relay(bare, HOSTS, "demo")


def test_a_state_claims_heads_and_tags_and_ignores_peeled_entries() -> None:
    event = make_event(
        KEY,
        kind=kinds.REPO_STATE,
        tags=[
            ["d", "demo"],
            ["refs/heads/main", A],
            ["refs/tags/v1", B],
            ["refs/tags/v1^{}", A],
            ["refs/notes/x", C],
            ["HEAD", "ref: refs/heads/main"],
            ["refs/heads/bad", "zz"],
        ],
    )
    claim = grasp.state_claim(event)
    assert claim.refs == {"refs/heads/main": A, "refs/tags/v1": B}
    assert claim.head == "refs/heads/main" and claim.author == OWNER
    # Matching is exact on branches and tags; other refs (PR refs) do not count.
    assert claim.matches({"refs/heads/main": A, "refs/tags/v1": B, "refs/nostr/" + "e" * 64: C})
    assert not claim.matches({"refs/heads/main": A})
    assert not claim.matches({"refs/heads/main": A, "refs/tags/v1": B, "refs/heads/x": C})


def test_the_newest_claim_wins_and_a_tie_goes_to_the_lower_id() -> None:
    def claim(created_at: int, event_id: str) -> grasp.StateClaim:
        return grasp.StateClaim(event_id, OWNER, created_at, {}, None)

    assert grasp.newest([]) is None
    assert grasp.newest([claim(1, "f" * 64), claim(2, "e" * 64)]) == claim(2, "e" * 64)
    assert grasp.newest([claim(5, "b" * 64), claim(5, "a" * 64)]) == claim(5, "a" * 64)


def test_pull_request_refs_and_events() -> None:
    event_id = "ab" * 32
    assert grasp.pr_event_id(f"refs/nostr/{event_id}") == event_id
    assert grasp.pr_event_id("refs/nostr/short") is None
    assert grasp.pr_event_id(f"refs/heads/{event_id}") is None
    pr = make_event(
        KEY,
        kind=kinds.PULL_REQUEST,
        tags=[
            ["a", f"30617:{OWNER}:demo"],
            ["a", "30617:bad:demo"],
            ["a", f"1:{OWNER}:x"],
            ["c", A],
        ],
    )
    parsed = grasp.pull_request(pr)
    assert parsed is not None and parsed.tip == A and parsed.repos == ((OWNER, "demo"),)
    assert grasp.pull_request(make_event(KEY, kind=kinds.PULL_REQUEST, tags=[["c", "zz"]])) is None
    assert grasp.pull_request(make_event(KEY, kind=1, tags=[["c", A]])) is None
