"""GRASP-01 rules, pure: which announcements we host, what a state event claims, PR refs.

NIP-34 clients (ngit, gitworkshop.dev) decide who may push by the newest kind 30618 signed
by a maintainer, push without HTTP auth, and open pull requests by pushing
`refs/nostr/<event id>`. These are the rules that need no I/O; `maintainers`, `purgatory`
and `receive` apply them.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from relay.events import kinds
from relay.events.model import Event, is_hex
from relay.git import model
from relay.git.refstate import PEELED_SUFFIX, PUBLISHED_PREFIXES
from relay.protocol.bech32 import npub_to_hex
from relay.protocol.hosts import normalize_host

PR_PREFIX = "refs/nostr/"
PR_KINDS = frozenset({kinds.PULL_REQUEST, kinds.PULL_REQUEST_UPDATE})
PURGATORY_MESSAGE = "purgatory: won't be served until git data arrives"


def is_published(ref: str) -> bool:
    """A ref a state event speaks for: a branch or a tag."""
    return ref.startswith(PUBLISHED_PREFIXES)


def published(refs: dict[str, str]) -> dict[str, str]:
    """The branches and tags of `refs`."""
    return {name: oid for name, oid in refs.items() if is_published(name)}


def pr_event_id(ref: str) -> str | None:
    """The event id of a pull-request ref `refs/nostr/<64 hex>`; None for any other ref."""
    if not ref.startswith(PR_PREFIX):
        return None
    event_id = ref.removeprefix(PR_PREFIX)
    return event_id if is_hex(event_id, 64) else None


def pr_ref(event_id: str) -> str:
    return PR_PREFIX + event_id


# -- announcements --------------------------------------------------------------------------


def clone_urls(event: Event) -> list[str]:
    return [value for tag in event.tags if tag and tag[0] == "clone" for value in tag[1:]]


def names_repo(url: str, hosts: frozenset[str], repo_id: str) -> str | None:
    """The owner (hex) in `url` when it is one of this relay's git URLs for `repo_id`
    (`http[s]://<host>/<npub>/<repo>.git` or `http[s]://<host>/git/<hex>/<repo>[.git]`, on
    any host of `hosts`); None otherwise."""
    try:
        parts = urlsplit(url.strip())
        host = normalize_host(parts.netloc.rsplit("@", 1)[-1])
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or host is None or host not in hosts:
        return None
    segments = [unquote(s) for s in parts.path.rstrip("/").split("/")]
    if len(segments) == 3 and segments[2] == f"{repo_id}.git":
        return npub_to_hex(segments[1]) if segments[1].startswith("npub1") else None
    if len(segments) == 4 and segments[1] == "git" and segments[3] in (repo_id, f"{repo_id}.git"):
        return segments[2] if is_hex(segments[2], 64) else None
    return None


def lists_this_relay(event: Event, hosts: frozenset[str], repo_id: str) -> bool:
    """Whether an announcement's `clone` tag lists this relay's URL of the repository under
    its author's key: the author asks us to host it."""
    return any(names_repo(url, hosts, repo_id) == event.pubkey for url in clone_urls(event))


# -- state events (kind 30618) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateClaim:
    """What a maintainer's 30618 says the repository holds."""

    event_id: str
    author: str
    created_at: int
    refs: dict[str, str]  # branches and tags; peeled `^{}` entries left out
    head: str | None  # the branch HEAD names, if the event says

    def matches(self, refs: dict[str, str]) -> bool:
        """The branches and tags of `refs` are exactly the claimed ones."""
        return published(refs) == self.refs


def state_claim(event: Event) -> StateClaim:
    """The claim of a kind 30618 (already checked by `refstate.check_ref_state`). Peeled
    entries (`refs/tags/v1^{}`, the commit an annotated tag points at) are ignored: git
    derives them from the tag object, so they are never a reason to refuse."""
    refs: dict[str, str] = {}
    head = None
    for tag in event.tags:
        if len(tag) < 2:
            continue
        name = tag[0]
        if name == "HEAD" and tag[1].startswith("ref: "):
            head = tag[1].removeprefix("ref: ")
        elif is_published(name) and not name.endswith(PEELED_SUFFIX) and model.is_oid(tag[1]):
            refs[name] = tag[1]
    return StateClaim(event.id, event.pubkey, event.created_at, refs, head)


def newest(claims: list[StateClaim]) -> StateClaim | None:
    """The newest claim, ties settled as replaceable events are (the lower id wins)."""
    if not claims:
        return None
    return max(claims, key=lambda c: (c.created_at, _descending(c.event_id)))


def _descending(event_id: str) -> tuple[int, ...]:
    return tuple(-b for b in bytes.fromhex(event_id))


# -- pull requests (kinds 1618, 1619) --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PullRequest:
    event_id: str
    tip: str  # the `c` tag: the commit refs/nostr/<event id> must name
    repos: tuple[tuple[str, str], ...]  # (owner, repo id) of each `a` tag naming a 30617


def pull_request(event: Event) -> PullRequest | None:
    """The tip and repositories of a PR or PR update; None when it names no valid tip."""
    tip = event.first_tag_value("c")
    if event.kind not in PR_KINDS or tip is None or not model.is_oid(tip):
        return None
    repos = []
    for tag in event.tags:
        if len(tag) >= 2 and tag[0] == "a":
            kind, _, rest = tag[1].partition(":")
            owner, _, repo_id = rest.partition(":")
            if kind == str(kinds.REPO_ANNOUNCEMENT) and is_hex(owner, 64) and repo_id:
                repos.append((owner, repo_id))
    return PullRequest(event.id, tip, tuple(repos))
