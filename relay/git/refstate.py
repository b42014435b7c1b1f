"""Kind 30618 ref-state events: built and signed by the relay, and checked when users send them.

The relay's 30618 for a repo is a statement of what its object store holds, derived from
the pointer; it is not what clients follow. NIP-34 clients follow the newest 30618 signed
by one of the repository's maintainers (`grasp`), and a push without NIP-98 must match that.
"""

from __future__ import annotations

from coincurve import PrivateKey

from relay.events import kinds
from relay.events.model import Event, is_hex, sign_event
from relay.git import model

PUBLISHED_PREFIXES = ("refs/heads/", "refs/tags/")
PEELED_SUFFIX = "^{}"


def state_tags(repo_id: str, head: str, refs: dict[str, str]) -> list[list[str]]:
    """`d`, every safe `refs/heads/*` and `refs/tags/*` ref, and `HEAD`: what a relay-signed
    30618 says of a manifest (its `p` tag names who caused it, not the state)."""
    tags = [["d", repo_id]]
    for name in sorted(refs):
        oid = refs[name]
        published = name.startswith(PUBLISHED_PREFIXES) and model.is_safe_refname(name)
        if published and model.is_oid(oid):
            tags.append([name, oid])
    tags.append(["HEAD", f"ref: {head}"])
    return tags


def build_ref_state(
    key: PrivateKey,
    *,
    repo_id: str,
    head: str,
    refs: dict[str, str],
    actor: str,
    created_at: int,
) -> Event:
    """The state tags, and `p` = the actor."""
    if not is_hex(actor, 64):
        raise ValueError("the actor must be a 64-hex pubkey")
    tags = [*state_tags(repo_id, head, refs), ["p", actor]]
    return sign_event(key, kind=kinds.REPO_STATE, tags=tags, created_at=created_at)


def states_agree(event: Event, repo_id: str, manifest: model.Manifest) -> bool:
    """Whether a relay-signed 30618 says what `manifest` holds."""
    said = [list(tag) for tag in event.tags if tag and tag[0] != "p"]
    return said == state_tags(repo_id, manifest.head, manifest.refs)


def check_ref_state(event: Event) -> str | None:
    """Why a kind 30618 is malformed, or None: same rules as the relay's own."""
    d = event.first_tag_value("d")
    if d is None:
        return "invalid: kind 30618 needs a d tag with the repo id"
    try:
        if model.normalize_repo_id(d) != d:
            return "invalid: the d tag of a kind 30618 must not end in .git"
    except model.InvalidName as exc:
        return f"invalid: {exc}"
    for tag in event.tags:
        if not tag:
            continue
        if tag[0] == "HEAD":
            target = tag[1] if len(tag) > 1 else ""
            head = target.removeprefix("ref: ")
            if not target.startswith("ref: refs/heads/") or not model.is_safe_refname(head):
                return "invalid: HEAD must be 'ref: refs/heads/<branch>'"
        elif tag[0].startswith("refs/"):
            # A peeled entry (`refs/tags/v1^{}`: the commit an annotated tag points at), as
            # ngit writes them, names a safe ref plus the suffix.
            if not model.is_safe_refname(tag[0].removesuffix(PEELED_SUFFIX)):
                return f"invalid: unsafe refname {tag[0][:80]!r}"
            if len(tag) < 2 or not model.is_oid(tag[1]):
                return f"invalid: {tag[0][:80]} must name a 40- or 64-hex object id"
    return None
