"""A hosted repository and who maintains it, as NIP-34 and ngit read it.

Within a community a repo id has one repository: the registry names its owner, whose kind
30617 is the announcement. Its maintainer set is recursive: the owner, the keys in the
owner's `maintainers` tag, and those listed in those maintainers' own announcements of
the same repo id, breadth first, bounded in depth and size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson

from relay.events import kinds
from relay.events.model import Event, is_hex, parse_event
from relay.git.registry import RepoRegistry
from relay.protocol.filters import Filter
from relay.store.events import EventStore

# Hops from the owner: 1 is the owner's own `maintainers` tag.
MAX_MAINTAINER_DEPTH = 3
# Keys in a repository's maintainer set, the owner included.
MAX_MAINTAINERS = 64


@dataclass(frozen=True, slots=True)
class HostedRepo:
    owner: str  # the registry's owner: the pointer is under this key
    repo_id: str
    announcement: Event  # the owner's
    maintainers: frozenset[str]  # the owner included


def listed_maintainers(announcement: Event) -> list[str]:
    """The valid keys of an announcement's `maintainers` tags, in order."""
    return [
        value
        for tag in announcement.tags
        if tag and tag[0] == "maintainers"
        for value in tag[1:]
        if is_hex(value, 64)
    ]


def direct_maintainers(announcement: Event) -> frozenset[str]:
    """The announcer and the keys its own `maintainers` tags list (the first hop)."""
    return frozenset({announcement.pubkey, *listed_maintainers(announcement)})


class Repos:
    """Looks up hosted repositories and their maintainer sets."""

    def __init__(self, store: EventStore, registry: RepoRegistry) -> None:
        self.store = store
        self.registry = registry

    async def hosted(self, community_id: int, repo_id: str) -> HostedRepo | None:
        """The repository of `repo_id` in the community, or None when none is hosted (no
        registry row, or the owner's announcement is gone)."""
        owner = await self.registry.owner_of(community_id, repo_id)
        if owner is None:
            return None
        found = await self._announcements(community_id, [owner], repo_id)
        if not found:
            return None
        return await self._with_maintainers(community_id, found[0])

    async def maintainers_of(self, community_id: int, announcement: Event) -> frozenset[str]:
        return (await self._with_maintainers(community_id, announcement)).maintainers

    async def _with_maintainers(self, community_id: int, announcement: Event) -> HostedRepo:
        repo_id = announcement.first_tag_value("d") or ""
        keys = [announcement.pubkey]
        seen = {announcement.pubkey}
        frontier = [announcement]
        for _ in range(MAX_MAINTAINER_DEPTH):
            added = []
            for event in frontier:
                for key in listed_maintainers(event):
                    if key not in seen and len(keys) < MAX_MAINTAINERS:
                        seen.add(key)
                        keys.append(key)
                        added.append(key)
            if not added:
                break
            frontier = await self._announcements(community_id, added, repo_id)
        return HostedRepo(announcement.pubkey, repo_id, announcement, frozenset(keys))

    async def _announcements(
        self, community_id: int, authors: list[str], repo_id: str
    ) -> list[Event]:
        flt = Filter(
            authors=frozenset(authors),
            kinds=frozenset({kinds.REPO_ANNOUNCEMENT}),
            tags=(("d", frozenset({repo_id})),),
            limit=len(authors),
        )
        rows = await self.store.query(community_id, (flt,), int(time.time()))
        return [parse_event(orjson.loads(raw)) for _, raw in rows]
