"""Who may use a community (relay.protocol.access), and the member commands' arguments."""

from __future__ import annotations

import pytest

from relay.admin import AdminRefused
from relay.members import parse_access, parse_duration
from relay.protocol import access
from relay.protocol.filters import Filter
from tests.helpers import make_event, new_key

MEMBER, OTHER = "aa" * 32, "bb" * 32


def test_a_public_community_admits_everyone() -> None:
    assert access.PUBLIC_ACCESS.refusal([]) is None
    assert access.PUBLIC_ACCESS.refusal([OTHER]) is None


def test_a_members_only_community_asks_for_auth_then_membership() -> None:
    club = access.Access(access.MEMBERS, frozenset({MEMBER}))
    assert club.refusal([]) == access.AUTH_REQUIRED
    assert club.refusal([OTHER]) == access.NOT_A_MEMBER
    assert club.refusal([OTHER, MEMBER]) is None  # any authenticated key that is a member
    note = make_event(kind=1)
    join = make_event(kind=access.JOIN_REQUEST, tags=[["-"], ["claim", "x"]])
    assert club.event_refusal(note, [OTHER]) == access.NOT_A_MEMBER
    assert club.event_refusal(join, [OTHER]) is None  # how a non-member becomes one
    assert club.event_refusal(join, []) == access.AUTH_REQUIRED


def test_membership_requests_follow_nip43() -> None:
    key = new_key()
    now = 1_800_000_000
    good = make_event(key, kind=access.JOIN_REQUEST, tags=[["-"], ["claim", "c"]], created_at=now)
    assert access.check_membership_request(good, now + 299) is None
    assert access.check_membership_request(good, now + 301).startswith("invalid:")  # type: ignore[union-attr]
    bare = make_event(key, kind=access.JOIN_REQUEST, tags=[["claim", "c"]], created_at=now)
    assert "'-' tag" in (access.check_membership_request(bare, now) or "")
    for tags in ([["-"]], [["-"], ["claim", ""]], [["-"], ["claim", "x" * 257]]):
        event = make_event(key, kind=access.JOIN_REQUEST, tags=tags, created_at=now)
        assert "claim tag" in (access.check_membership_request(event, now) or "")
    leave = make_event(key, kind=access.LEAVE_REQUEST, tags=[["-"]], created_at=now)
    assert access.check_membership_request(leave, now) is None


def test_a_req_asks_for_an_invite_by_kind_and_author() -> None:
    relay = "cc" * 32
    invite = frozenset({access.INVITE_REQUEST})
    assert access.asks_for_invite([Filter(kinds=invite)], relay)
    assert access.asks_for_invite([Filter(kinds=invite, authors=frozenset({relay}))], relay)
    assert not access.asks_for_invite([Filter(kinds=invite, authors=frozenset({MEMBER}))], relay)
    assert not access.asks_for_invite([Filter(kinds=frozenset({1}))], relay)
    assert not access.asks_for_invite([Filter()], relay)


def test_member_command_arguments() -> None:
    assert parse_duration("30m") == 1800
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("2w") == 14 * 86400
    assert parse_duration("never") is None
    for bad in ("7", "d", "-1d", "1.5h", "7days"):
        with pytest.raises(AdminRefused):
            parse_duration(bad)
    assert parse_access("access=members") == access.MEMBERS
    assert parse_access("access=public") == access.PUBLIC
    for bad in ("access=closed", "members", "mode=members"):
        with pytest.raises(AdminRefused):
            parse_access(bad)
