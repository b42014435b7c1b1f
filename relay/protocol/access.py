"""Who may use a community (NIP-42, NIP-43), sans-IO.

A community is public (anyone reads and writes, as NIP-01 relays are) or members-only: a
connection must AUTH (NIP-42) before any REQ, COUNT, NEG-OPEN or EVENT is served, and then
as a member. The one exception is the NIP-43 join request (kind 28934), which an
authenticated non-member sends to become a member. NIP-43's join (28934) and leave (28936)
requests carry the NIP-70 `-` tag and a `created_at` within JOIN_WINDOW_SECONDS of now.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from relay.events.model import Event
from relay.protocol.filters import Filter

PUBLIC = "public"
MEMBERS = "members"
ACCESS_MODES = (PUBLIC, MEMBERS)

JOIN_REQUEST = 28934
INVITE_REQUEST = 28935
LEAVE_REQUEST = 28936
MEMBERSHIP_LIST = 13534
MEMBER_ADDED = 8000
MEMBER_REMOVED = 8001
# "now, plus or minus a few minutes" (NIP-43).
JOIN_WINDOW_SECONDS = 300
MAX_CLAIM_CHARS = 256

AUTH_REQUIRED = "auth-required: this community is for its members: authenticate (NIP-42) first"
NOT_A_MEMBER = "restricted: this community is for its members; join with an invite code (NIP-43)"
NO_LONGER_A_MEMBER = "restricted: you are no longer a member of this community"


@dataclass(frozen=True, slots=True)
class Access:
    """A community's access mode and, for a members-only one, its members."""

    mode: str = PUBLIC
    members: frozenset[str] = frozenset()

    @property
    def members_only(self) -> bool:
        return self.mode == MEMBERS

    def admits(self, authenticated: Collection[str]) -> bool:
        """Whether a connection authenticated as `authenticated` may read and write."""
        return not self.members_only or any(key in self.members for key in authenticated)

    def refusal(self, authenticated: Collection[str]) -> str | None:
        """Why a connection may not read or write here (auth-required:, restricted:), or
        None."""
        if self.admits(authenticated):
            return None
        return NOT_A_MEMBER if authenticated else AUTH_REQUIRED

    def event_refusal(self, event: Event, authenticated: Collection[str]) -> str | None:
        """As `refusal`, except that an authenticated non-member may send a join request."""
        if event.kind == JOIN_REQUEST and authenticated:
            return None
        return self.refusal(authenticated)


PUBLIC_ACCESS = Access()


def check_membership_request(event: Event, now: int) -> str | None:
    """NIP-43's rules of a join (28934) or leave (28936) request; the refusal or None."""
    if not event.has_tag("-"):
        return "invalid: a NIP-43 request must carry the NIP-70 '-' tag"
    if abs(now - event.created_at) > JOIN_WINDOW_SECONDS:
        return f"invalid: a NIP-43 request's created_at must be within {JOIN_WINDOW_SECONDS} s"
    if event.kind == JOIN_REQUEST:
        claim = event.first_tag_value("claim")
        if not claim or len(claim) > MAX_CLAIM_CHARS:
            return f"invalid: a join request needs a claim tag (1-{MAX_CLAIM_CHARS} characters)"
    return None


def asks_for_invite(filters: Collection[Filter], relay_pubkey: str) -> bool:
    """Whether a REQ asks for the relay's invite (kind 28935, NIP-43)."""
    return any(
        flt.kinds is not None
        and INVITE_REQUEST in flt.kinds
        and (flt.authors is None or relay_pubkey in flt.authors)
        for flt in filters
    )
