"""Push authorization, pure: who may push, and which ref protections the announcement asks for.

Fail-closed: the pusher must be the announcer or listed in its `maintainers` tag; every
updated ref must be a safe refname; `["protect", "<pattern>", "no-force-push" |
"no-delete", ...]` tags forbid force pushes or deletions of matching refs. Patterns are
refnames where a `*` segment matches one segment and a trailing `**` segment one or more.
One denial rejects the whole push.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.events.model import Event, is_hex
from relay.git import model

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


def maintainers(announcement: Event) -> frozenset[str]:
    """The announcer and every valid pubkey in its `maintainers` tags."""
    keys = {announcement.pubkey}
    for tag in announcement.tags:
        if tag and tag[0] == "maintainers":
            keys.update(v for v in tag[1:] if is_hex(v, 64))
    return frozenset(keys)


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


def evaluate(pusher: str, announcement: Event, updates: list[RefUpdate]) -> list[Denial]:
    if pusher not in maintainers(announcement):
        return [Denial(u.ref, "not a maintainer of this repository") for u in updates] or [
            Denial("", "not a maintainer of this repository")
        ]
    denials = []
    rules = protections(announcement)
    for update in updates:
        if not model.is_safe_refname(update.ref):
            denials.append(Denial(update.ref, "unsafe refname"))
            continue
        for pattern, flags in rules:
            if not pattern_matches(pattern, update.ref):
                continue
            if "no-force-push" in flags and update.is_force:
                denials.append(Denial(update.ref, f"force push to {pattern} is not allowed"))
            if "no-delete" in flags and update.is_delete:
                denials.append(Denial(update.ref, f"deleting {pattern} is not allowed"))
    return denials
