"""Members-only communities: membership changes and the relay's NIP-43 events.

Every change is written to Postgres (relay.store.membership), then announced: the relay
signs and stores, in one transaction, the community's new kind 13534 membership list (NIP-70
`-` tag, a `member` tag each, at most MAX_LISTED_MEMBERS of them) and a kind 8000 (added) or
8001 (removed) naming the member, and hands them to the fan-out (every pod, through Redis
or the worker bus). The list is stored only if it still equals the members table, under a
per-community lock, so concurrent changes on several pods never leave an older list last.
Then every pod reloads its copy of the members (relay.server.management), at once here and
on the others within RELOAD_SECONDS (or when told through Redis), and closes what a removed
member had open.

From clients: a join request (kind 28934) claims an invite code, a leave request (28936)
ends a membership, and a member's REQ for kind 28935 is answered with a fresh invite the
relay signs (single use, valid MEMBER_INVITE_SECONDS; a member may hold at most
MAX_MEMBER_INVITES unclaimed).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from coincurve import PrivateKey

from relay.events.model import Event, next_created_at, sign_event
from relay.events.side_effects import Handled, Verdict
from relay.keys import pubkey_hex
from relay.protocol import access
from relay.store.db import Connection
from relay.store.events import EventStore, Saved
from relay.store.membership import VIA_ADMIN, Claim, Invite, MembershipStore

log = logging.getLogger(__name__)

# A 13534 lists at most this many members (the newest), to stay within the event size limit.
MAX_LISTED_MEMBERS = 700
MEMBER_INVITE_SECONDS = 7 * 24 * 3600
MAX_MEMBER_INVITES = 100
ANNOUNCE_ATTEMPTS = 5
INVITE_BYTES = 16

Publish = Callable[[int, Event, str], None]

CLAIM_ANSWERS = {
    Claim.ALREADY_MEMBER: Verdict(True, "duplicate: you are already a member of this relay."),
    Claim.INVALID: Verdict(False, "restricted: that is an invalid invite code."),
    Claim.EXPIRED: Verdict(False, "restricted: that invite code is expired."),
    Claim.USED_UP: Verdict(False, "restricted: that invite code has been used up."),
}


def new_code() -> str:
    return secrets.token_urlsafe(INVITE_BYTES)


def _lock_key(community_id: int) -> int:
    digest = hashlib.sha256(f"membership list {community_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Membership:
    def __init__(
        self,
        store: MembershipStore,
        events: EventStore,
        key: PrivateKey,
        changed: Callable[[], Awaitable[None]],
        publish: Publish | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.events = events
        self.key = key
        self.pubkey = pubkey_hex(key)
        # Reload this pod's copy of the members and tell the other pods (Moderation.changed).
        self.changed = changed
        self.publish = publish
        self.clock = clock

    # -- the operator's and the admins' changes --------------------------------------------

    async def set_access(self, community_id: int, mode: str) -> None:
        if mode not in access.ACCESS_MODES:
            raise ValueError(f"access must be one of {', '.join(access.ACCESS_MODES)}")
        await self.store.set_access(community_id, mode)
        await self.changed()

    async def add(self, community_id: int, pubkey: str, via: str = VIA_ADMIN) -> bool:
        """Make `pubkey` a member and announce it; False when it was one already."""
        added = await self.store.add(community_id, pubkey, via)
        if added:
            await self._announce(community_id, access.MEMBER_ADDED, pubkey)
        return added

    async def remove(self, community_id: int, pubkey: str) -> bool:
        """End a membership and announce it; False when there was none."""
        removed = await self.store.remove(community_id, pubkey)
        if removed:
            await self._announce(community_id, access.MEMBER_REMOVED, pubkey)
        return removed

    async def invite(
        self, community_id: int, uses: int | None, expires_at: int | None, created_by: str = ""
    ) -> Invite:
        invite = Invite(new_code(), uses, expires_at, created_by)
        await self.store.create_invite(community_id, invite)
        return invite

    # -- from clients ----------------------------------------------------------------------

    async def member_invite(self, community_id: int, member: str) -> Event | None:
        """A fresh kind 28935 for a member's REQ, or None past MAX_MEMBER_INVITES."""
        now = int(self.clock())
        if await self.store.open_invites_by(community_id, member, now) >= MAX_MEMBER_INVITES:
            log.info("member %s holds %d open invites: none more", member, MAX_MEMBER_INVITES)
            return None
        invite = await self.invite(community_id, 1, now + MEMBER_INVITE_SECONDS, member)
        tags = [["-"], ["claim", invite.code]]
        return sign_event(self.key, kind=access.INVITE_REQUEST, tags=tags, created_at=now)

    async def __call__(self, community_id: int, event: Event, raw: str) -> Handled:
        """The side effect of a join (28934) or leave (28936) request: neither is stored
        or passed on (a join's claim is a secret)."""
        if event.kind == access.LEAVE_REQUEST:
            if await self.remove(community_id, event.pubkey):
                return Handled(Verdict(True, "info: you are no longer a member of this relay."))
            return Handled(Verdict(True, "duplicate: you are not a member of this relay."))
        code = event.first_tag_value("claim") or ""
        outcome = await self.store.claim(community_id, code, event.pubkey, int(self.clock()))
        if outcome is not Claim.JOINED:
            return Handled(CLAIM_ANSWERS[outcome])
        await self._announce(community_id, access.MEMBER_ADDED, event.pubkey)
        log.info("membership: %s joined community %d with an invite", event.pubkey, community_id)
        return Handled(Verdict(True, "info: welcome, you are a member of this relay."))

    # -- the relay's NIP-43 events ---------------------------------------------------------------

    async def _announce(self, community_id: int, kind: int, pubkey: str) -> None:
        """Store and pass on the new 13534 and the 8000/8001 of `pubkey`; then every pod
        reloads the members."""
        for _ in range(ANNOUNCE_ATTEMPTS):
            members = [m.pubkey for m in await self.store.members(community_id)]
            listed = members[-MAX_LISTED_MEMBERS:]
            previous = await self.events.latest_created_at(
                community_id, self.pubkey, access.MEMBERSHIP_LIST, ""
            )
            now = int(self.clock())
            created_at = next_created_at(now, previous)
            tags = [["-"], *(["member", m] for m in sorted(listed))]
            member_list = sign_event(
                self.key, kind=access.MEMBERSHIP_LIST, tags=tags, created_at=created_at
            )
            change = sign_event(self.key, kind=kind, tags=[["-"], ["p", pubkey]], created_at=now)
            pair = [(member_list, member_list.to_json()), (change, change.to_json())]

            async def unchanged(conn: Connection, cid: int, expected: list[str] = members) -> bool:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(cid))
                rows = await conn.fetch(
                    "SELECT pubkey FROM community_members WHERE community_id = $1"
                    " ORDER BY added_at, pubkey",
                    cid,
                )
                return [r["pubkey"] for r in rows] == expected

            results = await self.events.save_together(community_id, pair, unchanged)
            if results[0].outcome is Saved.STORED:
                if self.publish is not None:
                    for event, raw in pair:
                        self.publish(community_id, event, raw)
                break
        else:
            log.warning("the membership list of community %d changed under every attempt to "
                        "publish it; the next change publishes it", community_id)  # fmt: skip
        await self.changed()
