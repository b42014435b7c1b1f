"""A repository's open NIP-34 issues, patches and pull requests, as its page lists them.

Threads are the community's kind 1621 (issue), root 1617 (patch, tagged `t root`) and
1618 (pull request) events that name the repository (`a` = 30617:<maintainer>:<repo>,
for any key of its maintainer set). A thread's status is its newest status event (1630
open, 1631 applied / merged / resolved, 1632 closed, 1633 draft) from the thread's author
or a maintainer (NIP-34); without one it is open. The page lists the open and draft ones.
Work is bounded: the newest MAX_THREADS threads and MAX_STATUS_EVENTS status events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson

from relay.events import kinds
from relay.events.model import Event, parse_event
from relay.git.maintainers import HostedRepo
from relay.protocol.filters import Filter
from relay.store.events import EventStore

MAX_THREADS = 200
MAX_STATUS_EVENTS = 2000
STATUS_KINDS = frozenset(
    {kinds.STATUS_OPEN, kinds.STATUS_APPLIED, kinds.STATUS_CLOSED, kinds.STATUS_DRAFT}
)
SHOWN = {kinds.STATUS_OPEN: "open", kinds.STATUS_DRAFT: "draft"}
MAX_SUBJECT_CHARS = 200


@dataclass(frozen=True, slots=True)
class Thread:
    kind: int  # kinds.ISSUE, kinds.PATCH or kinds.PULL_REQUEST
    id: str
    author: str  # hex
    created_at: int
    subject: str
    status: str  # "open" or "draft"


def coordinates(repo: HostedRepo) -> frozenset[str]:
    return frozenset(f"{kinds.REPO_ANNOUNCEMENT}:{key}:{repo.repo_id}" for key in repo.maintainers)


def subject_of(event: Event) -> str:
    """An issue's or pull request's `subject` tag; a patch's `Subject:` line (git
    format-patch), without its `[PATCH ...]` prefix; else the first line of the content."""
    subject = event.first_tag_value("subject")
    if subject is None and event.kind == kinds.PATCH:
        for line in event.content.splitlines():
            if line.startswith("Subject:"):
                subject = line.removeprefix("Subject:").strip()
                if subject.startswith("[") and "]" in subject:
                    subject = subject.split("]", 1)[1].strip()
                break
    if subject is None:
        subject = next((line for line in event.content.splitlines() if line.strip()), "")
    subject = subject.strip() or "(no subject)"
    return subject[:MAX_SUBJECT_CHARS]


def is_thread(event: Event) -> bool:
    if event.kind == kinds.PATCH:
        return "root" in event.tag_values("t")
    return event.kind in (kinds.ISSUE, kinds.PULL_REQUEST)


def open_threads(
    threads: list[Event], statuses: list[Event], maintainers: frozenset[str]
) -> list[Thread]:
    """The open and draft threads, newest first, by the NIP-34 status rule."""
    by_id = {event.id: event for event in threads if is_thread(event)}
    newest: dict[str, Event] = {}
    for status in statuses:
        if status.kind not in STATUS_KINDS:
            continue
        for target in _roots(status):
            thread = by_id.get(target)
            if thread is None or status.pubkey not in (maintainers | {thread.pubkey}):
                continue
            current = newest.get(target)
            if current is None or (status.created_at, status.id) > (
                current.created_at, current.id
            ):  # fmt: skip
                newest[target] = status
    listed = []
    for event in by_id.values():
        state = newest.get(event.id)
        kind = kinds.STATUS_OPEN if state is None else state.kind
        if kind in SHOWN:
            listed.append(
                Thread(event.kind, event.id, event.pubkey, event.created_at, subject_of(event),
                       SHOWN[kind])
            )  # fmt: skip
    listed.sort(key=lambda t: (-t.created_at, t.id))
    return listed


def _roots(status: Event) -> list[str]:
    """The threads a status event is about: its `e` tags marked root, else every `e`."""
    marked = [t[1] for t in status.tags if len(t) >= 4 and t[0] == "e" and t[3] == "root"]
    return marked or status.tag_values("e")


async def read_threads(store: EventStore, community_id: int, repo: HostedRepo) -> list[Thread]:
    now = int(time.time())
    wanted = Filter(
        kinds=frozenset({kinds.ISSUE, kinds.PATCH, kinds.PULL_REQUEST}),
        tags=(("a", coordinates(repo)),),
        limit=MAX_THREADS,
    )
    threads = _parse(await store.query(community_id, (wanted,), now))
    threads = [event for event in threads if is_thread(event)]
    if not threads:
        return []
    about = Filter(
        kinds=STATUS_KINDS,
        tags=(("e", frozenset(event.id for event in threads)),),
        limit=MAX_STATUS_EVENTS,
    )
    statuses = _parse(await store.query(community_id, (about,), now))
    return open_threads(threads, statuses, repo.maintainers)


def _parse(rows: list[tuple[str, str]]) -> list[Event]:
    return [parse_event(orjson.loads(raw)) for _, raw in rows]
