"""Push authorization (relay.git.policy): who may push what, by NIP-98 or by signed state,
pull-request refs, the owner's protect tags, and every denial reason."""

from __future__ import annotations

import pytest

from relay.events import kinds
from relay.events.model import Event
from relay.git import grasp, policy
from relay.git.policy import Denial, PushRules, RefUpdate
from tests.unit.samples import ALICE, ALICE_PK, BOB_PK, event

ZERO = "0" * 40
A, B, C = "a" * 40, "b" * 40, "c" * 40
CAROL_PK = "cc" * 32  # a key that maintains nothing
MAIN = "refs/heads/main"
PR_ID = "ab" * 32
PR_REF = f"refs/nostr/{PR_ID}"
STATE_ID = "5e" * 32
SAID = f"the newest maintainer-signed state (kind 30618 {STATE_ID[:12]})"


def owner_announcement(*protect: list[str]) -> Event:
    """ALICE's announcement of `demo`, with these protect tags."""
    tags = [["d", "demo"], *(["protect", *p] for p in protect)]
    return event(ALICE, kind=kinds.REPO_ANNOUNCEMENT, tags=tags)


def by_nip98(
    pusher: str = ALICE_PK, *protect: list[str], pr_tips: dict[str, str] | None = None
) -> PushRules:
    """A push with a NIP-98 token of `pusher`; ALICE owns the repo, BOB maintains it."""
    return PushRules(
        pusher=pusher,
        announcement=owner_announcement(*protect),
        maintainers=frozenset({ALICE_PK, BOB_PK}),
        pr_tips=pr_tips or {},
    )


def by_signed_state(
    refs: dict[str, str] | None = None,
    state: dict[str, str] | None = None,
    *protect: list[str],
    pr_tips: dict[str, str] | None = None,
) -> PushRules:
    """A push without HTTP auth, judged by the newest maintainer-signed 30618 (`state`, None
    for no such event); `refs` is what the repository holds before the push."""
    claim = None
    if state is not None:
        claim = grasp.StateClaim(STATE_ID, ALICE_PK, 1_700_000_000, state, MAIN)
    return PushRules(
        pusher=None,
        announcement=owner_announcement(*protect),
        maintainers=frozenset({ALICE_PK, BOB_PK}),
        refs=refs or {},
        state=claim,
        pr_tips=pr_tips or {},
    )


def create(ref: str, new: str = A) -> RefUpdate:
    return RefUpdate(ZERO, new, ref)


def delete(ref: str, old: str = A) -> RefUpdate:
    return RefUpdate(old, ZERO, ref)


def fast_forward(ref: str, old: str = A, new: str = B) -> RefUpdate:
    return RefUpdate(old, new, ref, is_ancestor=True)


def force(ref: str, old: str = A, new: str = B) -> RefUpdate:
    return RefUpdate(old, new, ref, is_ancestor=False)


# -- what an update is -------------------------------------------------------------------------


@pytest.mark.parametrize("zero", ["0" * 40, "0" * 64])
def test_an_all_zero_old_is_a_creation_and_an_all_zero_new_a_deletion(zero: str) -> None:
    created = RefUpdate(zero, A, MAIN)
    assert created.is_create and not created.is_delete and not created.is_force
    deleted = RefUpdate(A, zero, MAIN)
    assert deleted.is_delete and not deleted.is_create and not deleted.is_force


def test_an_update_is_a_force_push_unless_old_is_known_to_be_an_ancestor() -> None:
    assert not RefUpdate(A, B, MAIN, is_ancestor=True).is_force
    assert RefUpdate(A, B, MAIN, is_ancestor=False).is_force
    assert RefUpdate(A, B, MAIN).is_force  # not known: fail closed


# -- patterns ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "ref", "matches"),
    [
        ("refs/heads/main", "refs/heads/main", True),
        ("refs/heads/main", "refs/heads/main2", False),
        ("refs/heads/main", "refs/heads/main/x", False),
        ("refs/heads/*", "refs/heads/main", True),
        ("refs/heads/*", "refs/heads/a/b", False),  # `*` is one segment
        ("refs/heads/*", "refs/tags/v1", False),
        ("refs/*/main", "refs/heads/main", True),
        ("refs/heads/**", "refs/heads/main", True),
        ("refs/heads/**", "refs/heads/a/b/c", True),  # a trailing `**` is one or more
        ("refs/heads/**", "refs/heads", False),
        ("refs/**/main", "refs/heads/main", False),  # `**` is special only at the end
        ("refs/**/main", "refs/**/main", True),
        ("refs/heads/release-*", "refs/heads/release-1", False),  # no partial segments
    ],
)
def test_pattern_matches(pattern: str, ref: str, matches: bool) -> None:
    assert policy.pattern_matches(pattern, ref) is matches


def test_protections_keep_known_rules_only_and_at_most_max_protect_tags() -> None:
    ann = owner_announcement(
        ["refs/heads/main", "no-force-push", "no-delete", "no-rebase"],
        ["refs/tags/*", "sign-everything"],
        ["refs/heads/short"],  # a pattern and no rule: not a protection
    )
    assert policy.protections(ann) == [
        ("refs/heads/main", frozenset({"no-force-push", "no-delete"})),
        ("refs/tags/*", frozenset()),
    ]
    many = owner_announcement(*([f"refs/heads/b{i}", "no-delete"] for i in range(60)))
    kept = policy.protections(many)
    assert len(kept) == policy.MAX_PROTECT_TAGS
    assert kept[-1] == (f"refs/heads/b{policy.MAX_PROTECT_TAGS - 1}", frozenset({"no-delete"}))


# -- NIP-98: maintainers push ------------------------------------------------------------------


@pytest.mark.parametrize("pusher", [ALICE_PK, BOB_PK])
def test_the_owner_and_a_maintainer_may_push_anything_unprotected(pusher: str) -> None:
    rules = by_nip98(pusher)
    assert rules.by_maintainer
    updates = [
        create("refs/heads/feature"),
        fast_forward(MAIN),
        force("refs/heads/wip"),
        delete("refs/tags/v0"),
        create("refs/notes/commits"),  # any ref, not only branches and tags
    ]
    assert policy.evaluate(rules, updates) == []


def test_a_key_that_maintains_nothing_is_refused_every_ref() -> None:
    rules = by_nip98(CAROL_PK)
    assert not rules.by_maintainer
    assert policy.evaluate(rules, [create("refs/heads/x"), fast_forward(MAIN)]) == [
        Denial("refs/heads/x", policy.NOT_A_MAINTAINER),
        Denial(MAIN, policy.NOT_A_MAINTAINER),
    ]


def test_a_push_of_no_refs_is_refused_to_a_non_maintainer_only() -> None:
    assert policy.evaluate(by_nip98(CAROL_PK), []) == [Denial("", policy.NOT_A_MAINTAINER)]
    assert policy.evaluate(by_nip98(BOB_PK), []) == []
    assert policy.evaluate(by_signed_state(), []) == []


@pytest.mark.parametrize(
    "ref",
    ["HEAD", "refs/heads/../../etc", "refs/heads/a..b", "refs/heads/x.lock", "refs/heads/"],
)
def test_an_unsafe_refname_is_refused_even_to_the_owner(ref: str) -> None:
    assert policy.evaluate(by_nip98(ALICE_PK), [create(ref), create("refs/heads/ok")]) == [
        Denial(ref, "unsafe refname")
    ]


def test_a_refused_update_is_named_once_with_its_refusal() -> None:
    """A ref refused on its own is not judged by the protect tags as well."""
    rules = by_nip98(CAROL_PK, ["refs/heads/*", "no-delete"])
    assert policy.evaluate(rules, [delete("refs/heads/x")]) == [
        Denial("refs/heads/x", policy.NOT_A_MAINTAINER)
    ]


# -- the owner's protect tags ------------------------------------------------------------------


def test_no_force_push_refuses_a_force_push_to_a_matching_ref_only() -> None:
    rules = by_nip98(ALICE_PK, ["refs/heads/*", "no-force-push"])
    assert policy.evaluate(rules, [force(MAIN)]) == [
        Denial(MAIN, "force push to refs/heads/* is not allowed")
    ]
    # A fast-forward, a creation, a deletion or another namespace is not a force push there.
    fine = [fast_forward(MAIN), create("refs/heads/new"), delete("refs/heads/old")]
    assert policy.evaluate(rules, [*fine, force("refs/tags/v1")]) == []


def test_no_delete_refuses_deleting_a_matching_ref_only() -> None:
    rules = by_nip98(BOB_PK, ["refs/tags/**", "no-delete"])
    assert policy.evaluate(rules, [delete("refs/tags/v1/rc")]) == [
        Denial("refs/tags/v1/rc", "deleting refs/tags/** is not allowed")
    ]
    assert policy.evaluate(rules, [delete(MAIN), force("refs/tags/v1")]) == []


def test_every_matching_protection_is_named() -> None:
    rules = by_nip98(ALICE_PK, [MAIN, "no-force-push"], ["refs/heads/*", "no-force-push"])
    assert policy.evaluate(rules, [force(MAIN)]) == [
        Denial(MAIN, f"force push to {MAIN} is not allowed"),
        Denial(MAIN, "force push to refs/heads/* is not allowed"),
    ]


def test_a_protection_without_a_known_rule_protects_nothing() -> None:
    rules = by_nip98(ALICE_PK, [MAIN, "no-rebase"])
    assert policy.evaluate(rules, [force(MAIN), delete(MAIN)]) == []


def test_protections_bind_the_owner_too() -> None:
    rules = by_nip98(ALICE_PK, [MAIN, "no-delete"])
    assert policy.evaluate(rules, [delete(MAIN)]) == [
        Denial(MAIN, f"deleting {MAIN} is not allowed")
    ]


# -- pull-request refs (refs/nostr/<event id>) -------------------------------------------------


@pytest.mark.parametrize("rules", [by_nip98(CAROL_PK), by_nip98(BOB_PK), by_signed_state()])
def test_anyone_may_push_a_pull_request_ref(rules: PushRules) -> None:
    assert policy.evaluate(rules, [create(PR_REF), force(PR_REF)]) == []


@pytest.mark.parametrize("ref", ["refs/nostr/abc", f"refs/nostr/{PR_ID.upper()}", "refs/nostr/x/y"])
def test_a_pull_request_ref_must_name_a_64_hex_event_id(ref: str) -> None:
    reason = "refs/nostr/ takes a pull request's 64-hex event id"
    assert policy.evaluate(by_nip98(ALICE_PK), [create(ref)]) == [Denial(ref, reason)]


def test_only_a_maintainer_deletes_a_pull_request_ref() -> None:
    assert policy.evaluate(by_nip98(BOB_PK), [delete(PR_REF)]) == []
    reason = "only a maintainer deletes a pull request ref"
    assert policy.evaluate(by_nip98(CAROL_PK), [delete(PR_REF)]) == [Denial(PR_REF, reason)]
    assert policy.evaluate(by_signed_state(), [delete(PR_REF)]) == [Denial(PR_REF, reason)]


def test_a_pull_request_ref_must_be_the_tip_its_event_names() -> None:
    tips = {PR_ID: C}
    assert policy.evaluate(by_nip98(CAROL_PK, pr_tips=tips), [create(PR_REF, C)]) == []
    assert policy.evaluate(by_nip98(ALICE_PK, pr_tips=tips), [create(PR_REF, A)]) == [
        Denial(PR_REF, f"pull request event {PR_ID[:12]} names another tip ({C[:12]})")
    ]
    # A tip named for another pull request says nothing about this one.
    assert policy.evaluate(by_signed_state(pr_tips={"cd" * 32: C}), [create(PR_REF, A)]) == []


def test_protections_do_not_apply_to_pull_request_refs() -> None:
    rules = by_nip98(ALICE_PK, ["refs/nostr/*", "no-force-push", "no-delete"])
    assert policy.evaluate(rules, [force(PR_REF), delete(PR_REF)]) == []


# -- without NIP-98: the newest maintainer-signed state decides --------------------------------


def test_without_nip98_only_branches_tags_and_pull_request_refs_may_be_pushed() -> None:
    rules = by_signed_state({}, {MAIN: A})
    assert policy.evaluate(rules, [create("refs/notes/commits"), create(MAIN)]) == [
        Denial("refs/notes/commits", policy.UNSIGNED_REFS)
    ]


def test_without_a_signed_state_no_branch_or_tag_may_be_pushed() -> None:
    rules = by_signed_state({}, None)
    assert policy.evaluate(rules, [create(MAIN), create("refs/tags/v1"), create(PR_REF)]) == [
        Denial(MAIN, policy.NO_STATE),
        Denial("refs/tags/v1", policy.NO_STATE),
    ]


def test_a_push_that_makes_the_refs_what_the_state_says_is_taken() -> None:
    before = {MAIN: A, "refs/heads/old": C}
    state = {MAIN: B, "refs/tags/v1": A}
    updates = [force(MAIN, A, B), create("refs/tags/v1", A), delete("refs/heads/old", C)]
    assert policy.evaluate(by_signed_state(before, state), updates) == []


def test_peeled_and_other_refs_do_not_count_against_the_state() -> None:
    """Only branches and tags are compared: a pull-request ref the repository holds is not
    a difference."""
    before = {MAIN: A, PR_REF: C}
    assert policy.evaluate(by_signed_state(before, {MAIN: B}), [fast_forward(MAIN, A, B)]) == []


def test_each_update_the_state_disagrees_with_is_named_with_what_the_state_says() -> None:
    before = {MAIN: A}
    state = {MAIN: B, "refs/tags/v1": A}
    updates = [fast_forward(MAIN, A, C), create("refs/tags/v1", A), create("refs/heads/x", B)]
    assert policy.evaluate(by_signed_state(before, state), updates) == [
        Denial(MAIN, f"{SAID} says {B}"),
        Denial("refs/heads/x", f"{SAID} says no such ref"),
    ]


def test_a_deletion_the_state_does_not_ask_for_is_named() -> None:
    assert policy.evaluate(by_signed_state({MAIN: A}, {MAIN: A}), [delete(MAIN)]) == [
        Denial(MAIN, f"{SAID} says {A}")
    ]


def test_a_push_that_agrees_but_leaves_other_refs_different_is_refused_whole() -> None:
    """Every ref this push names agrees with the state, yet afterwards the repository would
    still differ from it: each update is refused, naming the refs that would differ."""
    before = {MAIN: A, "refs/heads/stale": C}
    state = {MAIN: B, "refs/tags/v1": A}
    updates = [fast_forward(MAIN, A, B), create(PR_REF)]
    reason = f"after this push refs/heads/stale, refs/tags/v1 would still differ from {SAID}"
    assert policy.evaluate(by_signed_state(before, state), updates) == [Denial(MAIN, reason)]


def test_a_deletion_the_state_agrees_with_is_not_named_for_itself() -> None:
    """The state has no refs/heads/old either: the deletion agrees; what still differs is
    another ref, and the reason says so."""
    before = {MAIN: A, "refs/heads/old": C, "refs/heads/stale": C}
    reason = f"after this push refs/heads/stale would still differ from {SAID}"
    assert policy.evaluate(by_signed_state(before, {MAIN: A}), [delete("refs/heads/old", C)]) == [
        Denial("refs/heads/old", reason)
    ]


def test_at_most_five_differing_refs_are_named() -> None:
    before = {MAIN: A, **{f"refs/heads/s{i}": C for i in range(8)}}
    reason = policy.evaluate(by_signed_state(before, {MAIN: B}), [fast_forward(MAIN, A, B)])[
        0
    ].reason
    assert reason == (
        "after this push refs/heads/s0, refs/heads/s1, refs/heads/s2, refs/heads/s3, "
        f"refs/heads/s4 would still differ from {SAID}"
    )


def test_a_signed_state_push_still_obeys_the_protect_tags() -> None:
    rules = by_signed_state({MAIN: A}, {MAIN: B}, [MAIN, "no-force-push"])
    assert policy.evaluate(rules, [force(MAIN, A, B)]) == [
        Denial(MAIN, f"force push to {MAIN} is not allowed")
    ]


def test_a_nip98_push_is_not_judged_against_any_state() -> None:
    rules = PushRules(
        pusher=BOB_PK,
        announcement=owner_announcement(),
        maintainers=frozenset({ALICE_PK, BOB_PK}),
        refs={MAIN: A},
        state=grasp.StateClaim(STATE_ID, ALICE_PK, 1, {MAIN: C}, MAIN),
    )
    assert policy.evaluate(rules, [fast_forward(MAIN, A, B)]) == []


def test_a_refused_update_is_not_also_named_against_the_state() -> None:
    """An unsafe branch name next to an update the state agrees with: the push is refused
    once, for the unsafe name; the agreeing update is not told it differs from the state."""
    before = {MAIN: A}
    updates = [fast_forward(MAIN, A, B), create("refs/heads/a..b", B)]
    assert policy.evaluate(by_signed_state(before, {MAIN: B}), updates) == [
        policy.Denial("refs/heads/a..b", "unsafe refname")
    ]
