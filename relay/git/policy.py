"""Push authorization, pure: who may push what, and which ref protections apply.

Fail-closed, one denial rejects the whole push, and every updated ref must be a refname
git accepts. Then, by how the push is authorized:
- **NIP-98** (stock git with a token): the pusher must be in the repository's maintainer
  set (the owner, and the recursive `maintainers` of NIP-34).
- **Signed state** (GRASP-01, no HTTP auth, as ngit and gitworkshop.dev push): only
  branches and tags, and afterwards the repository's branches and tags must be exactly
  those of the newest kind 30618 signed by a maintainer.
Either way `refs/nostr/<event id>` (a pull request's tip) may be pushed by anyone, unless
a pull-request event with that id names another tip; only a maintainer deletes one. The
owner's `["protect", "<pattern>", "no-force-push" | "no-delete", ...]` tags forbid force
pushes or deletions of matching refs, in both modes. Patterns are refnames where a `*`
segment matches one segment and a trailing `**` segment one or more.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.events.model import Event
from relay.git import grasp, model

ZERO_OIDS = frozenset({"0" * 40, "0" * 64})
RULES = frozenset({"no-force-push", "no-delete"})
MAX_PROTECT_TAGS = 50


@dataclass(frozen=True, slots=True)
class RefUpdate:
    old: str
    new: str
    ref: str
    # Whether old is an ancestor of new; None for creations and deletions.
    is_ancestor: bool | None = None

    @property
    def is_create(self) -> bool:
        return self.old in ZERO_OIDS

    @property
    def is_delete(self) -> bool:
        return self.new in ZERO_OIDS

    @property
    def is_force(self) -> bool:
        return not self.is_create and not self.is_delete and self.is_ancestor is not True


@dataclass(frozen=True, slots=True)
class Denial:
    ref: str
    reason: str


NOT_A_MAINTAINER = "not a maintainer of this repository"
UNSIGNED_REFS = (
    "without NIP-98 authorization only refs/heads/*, refs/tags/* and "
    "refs/nostr/<event id> may be pushed"
)
NO_STATE = (
    "no maintainer-signed state (kind 30618) for this repository: publish one naming "
    "these refs, then push"
)


@dataclass(frozen=True, slots=True)
class PushRules:
    """What a push is judged by, gathered before git runs."""

    pusher: str | None  # the NIP-98 key; None for a push authorized by signed state
    announcement: Event  # the owner's: its `protect` tags
    maintainers: frozenset[str]  # the recursive set, owner included
    refs: dict[str, str] = field(default_factory=dict)  # the repository's, before the push
    state: grasp.StateClaim | None = None  # the newest maintainer-signed 30618
    pr_tips: dict[str, str] = field(default_factory=dict)  # PR event id -> its `c` tip

    @property
    def by_maintainer(self) -> bool:
        return self.pusher is not None and self.pusher in self.maintainers


def protections(announcement: Event) -> list[tuple[str, frozenset[str]]]:
    rules = []
    for tag in announcement.tags:
        if len(tag) >= 3 and tag[0] == "protect":
            rules.append((tag[1], frozenset(tag[2:]) & RULES))
    return rules[:MAX_PROTECT_TAGS]


def pattern_matches(pattern: str, ref: str) -> bool:
    want = pattern.split("/")
    have = ref.split("/")
    for i, segment in enumerate(want):
        if segment == "**" and i == len(want) - 1:
            return len(have) > i
        if i >= len(have) or (segment != "*" and segment != have[i]):
            return False
    return len(have) == len(want)


def needs_token(rules: PushRules, refs: list[str]) -> bool:
    """Whether a push of `refs` sent without NIP-98 should be asked for a token (HTTP 401,
    which makes stock git run its credential helper) rather than judged by signed state:
    it updates a branch or tag (not only pull-request refs; no refs at all is git's probe
    before a large push, which may be anything), and no maintainer-signed state is waiting
    for a push (a NIP-34 client publishes its state before it pushes)."""
    if rules.pusher is not None:
        return False
    if refs and all(r.startswith(grasp.PR_PREFIX) for r in refs):
        return False
    return rules.state is None or rules.state.matches(rules.refs)


def evaluate(rules: PushRules, updates: list[RefUpdate]) -> list[Denial]:
    if rules.pusher is not None and not rules.by_maintainer and not updates:
        return [Denial("", NOT_A_MAINTAINER)]
    denials: list[Denial] = []
    allowed: list[RefUpdate] = []
    for update in updates:
        reason = _refusal(rules, update)
        if reason is not None:
            denials.append(Denial(update.ref, reason))
            continue
        allowed.append(update)
        if grasp.pr_event_id(update.ref) is None:
            denials += _protected(rules.announcement, update)
    # Branch and tag updates a state event must match; judged on the updates that passed on
    # their own (a refused one is named once, by its own reason).
    signed_state = [u for u in allowed if rules.pusher is None and grasp.is_published(u.ref)]
    if signed_state:
        denials += _against_state(rules, allowed, signed_state)
    return denials


def _refusal(rules: PushRules, update: RefUpdate) -> str | None:
    """Why one update is refused on its own, or None."""
    if not model.is_safe_refname(update.ref):
        return "unsafe refname"
    if update.ref.startswith(grasp.PR_PREFIX):
        event_id = grasp.pr_event_id(update.ref)
        if event_id is None:
            return "refs/nostr/ takes a pull request's 64-hex event id"
        if update.is_delete:
            return None if rules.by_maintainer else "only a maintainer deletes a pull request ref"
        tip = rules.pr_tips.get(event_id)
        if tip is not None and tip != update.new:
            return f"pull request event {event_id[:12]} names another tip ({tip[:12]})"
        return None
    if rules.pusher is not None:
        return None if rules.by_maintainer else NOT_A_MAINTAINER
    return None if grasp.is_published(update.ref) else UNSIGNED_REFS


def _protected(announcement: Event, update: RefUpdate) -> list[Denial]:
    denials = []
    for pattern, flags in protections(announcement):
        if not pattern_matches(pattern, update.ref):
            continue
        if "no-force-push" in flags and update.is_force:
            denials.append(Denial(update.ref, f"force push to {pattern} is not allowed"))
        if "no-delete" in flags and update.is_delete:
            denials.append(Denial(update.ref, f"deleting {pattern} is not allowed"))
    return denials


def _against_state(
    rules: PushRules, updates: list[RefUpdate], signed: list[RefUpdate]
) -> list[Denial]:
    """A push without NIP-98 must leave branches and tags exactly as the newest
    maintainer-signed state says; each mismatching update is named with what it says."""
    state = rules.state
    if state is None:
        return [Denial(u.ref, NO_STATE) for u in signed]
    after = dict(rules.refs)
    for update in updates:
        if update.is_delete:
            after.pop(update.ref, None)
        else:
            after[update.ref] = update.new
    if state.matches(after):
        return []
    said = f"the newest maintainer-signed state (kind 30618 {state.event_id[:12]})"
    denials = []
    for update in signed:
        want = state.refs.get(update.ref)
        have = None if update.is_delete else update.new
        if want != have:
            denials.append(Denial(update.ref, f"{said} says {want or 'no such ref'}"))
    if not denials:
        differ = sorted(set(grasp.published(after).items()) ^ set(state.refs.items()))
        names = sorted({name for name, _ in differ})
        reason = f"after this push {', '.join(names[:5])} would still differ from {said}"
        denials = [Denial(u.ref, reason) for u in signed]
    return denials
