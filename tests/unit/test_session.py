"""relay.protocol.session: one connection's state (challenge, authenticated keys,
subscriptions, held-back events)."""

from __future__ import annotations

import re

from relay.protocol.limits import Limits
from relay.protocol.session import Session
from tests.unit.samples import ALICE, ALICE_PK, BOB, BOB_PK, LIMITS, SMALL, event, flt


def test_session_challenge_is_random_hex() -> None:
    first, second = Session("localhost", LIMITS), Session("localhost", LIMITS)
    assert re.fullmatch(r"[0-9a-f]{32}", first.challenge)
    assert first.challenge != second.challenge
    assert first.authenticated == frozenset()


def test_session_authenticates_at_most_max_auth_keys() -> None:
    session = Session("localhost", Limits(max_auth_keys=2))
    assert session.authenticate("a" * 64) is None
    assert session.authenticate("b" * 64) is None
    assert session.authenticate("a" * 64) is None  # already there: no new place taken
    assert session.authenticate("c" * 64) == (
        "blocked: too many keys authenticated on this connection (max 2)"
    )
    assert session.authenticated == frozenset({"a" * 64, "b" * 64})


def test_session_open_close_and_the_subscription_limit() -> None:
    session = Session("localhost", SMALL)
    kind1 = (flt({"kinds": [1]}),)
    assert session.open("a", kind1) is None
    assert session.open("b", kind1) is None
    assert session.open("c", kind1) == "blocked: too many open subscriptions (max 2)"
    assert set(session.subscriptions) == {"a", "b"}
    # Replacing an open subscription is not a new one.
    assert session.open("a", (flt({"kinds": [7]}),)) is None
    assert session.subscriptions["a"].filters == (flt({"kinds": [7]}),)
    assert session.close("b") is True
    assert session.close("b") is False
    assert session.close("never") is False
    assert session.open("c", kind1) is None
    assert set(session.subscriptions) == {"a", "c"}


def test_session_replacing_a_subscription_starts_a_new_backlog() -> None:
    session = Session("localhost", LIMITS)
    session.open("s", (flt({}),))
    held = event()
    session.subscriptions["s"].backlog = [(held.id, held.to_json())]
    session.subscriptions["s"].backlog_bytes = 10
    session.open("s", (flt({"kinds": [1]}),))
    assert session.subscriptions["s"].backlog == []
    assert session.subscriptions["s"].backlog_bytes == 0
    assert session.go_live("s", set()) == []


def test_session_matching() -> None:
    session = Session("localhost", LIMITS)
    session.open("notes", (flt({"kinds": [1]}),))
    session.open("both", (flt({"kinds": [1]}), flt({"authors": [ALICE_PK]})))
    session.open("bob", (flt({"authors": [BOB_PK]}),))
    note = event(ALICE, kind=1)
    every = {"notes", "both", "bob"}
    matched = session.matching(note, every)
    assert [sid for sid, _ in matched] == ["notes", "both"]  # each once, in opening order
    assert matched[0][1] is session.subscriptions["notes"]
    assert [sid for sid, _ in session.matching(event(BOB, kind=7), every)] == ["bob"]
    both = [("both", session.subscriptions["both"])]
    assert session.matching(event(ALICE, kind=7), every) == both
    # Only the candidates are looked at.
    assert [sid for sid, _ in session.matching(note, {"both", "bob"})] == ["both"]
    session.close("both")
    assert [sid for sid, _ in session.matching(note, every)] == ["notes"]


def test_session_go_live_releases_held_back_events_not_already_sent() -> None:
    session = Session("localhost", LIMITS)
    session.open("s", (flt({}),))
    sub = session.subscriptions["s"]
    assert sub.backlog == []
    held = [event(content=str(i)) for i in range(4)]
    for ev in held:
        sub.backlog.append((ev.id, ev.to_json()))
        sub.backlog_bytes += len(ev.to_json())
    sent = {held[1].id, held[3].id, "ff" * 32}
    assert session.go_live("s", sent) == [held[0].to_json(), held[2].to_json()]
    assert sub.backlog is None
    assert sub.backlog_bytes == 0
    # Live now: nothing more is held back, and a second go_live releases nothing.
    assert session.go_live("s", set()) == []
    assert session.go_live("unknown", set()) == []


def test_session_go_live_with_nothing_held() -> None:
    session = Session("localhost", LIMITS)
    session.open("s", (flt({}),))
    assert session.go_live("s", set()) == []
    assert session.subscriptions["s"].backlog is None


def test_session_routes_a_live_event_to_live_subscriptions_and_holds_it_for_the_others() -> None:
    session = Session("localhost", LIMITS)
    session.open("live", (flt({"kinds": [1]}),))
    session.go_live("live", set())
    session.open("reading", (flt({"kinds": [1]}),))  # still sending its stored events
    session.open("other", (flt({"kinds": [7]}),))
    note = event(ALICE, kind=1)
    raw = note.to_json()
    send, held, overflowed = session.route_live(note, raw, {"live", "reading", "other"}, 10_000)
    assert (send, held, overflowed) == (["live"], 1, False)
    assert session.subscriptions["reading"].backlog == [(note.id, raw)]
    assert session.subscriptions["reading"].backlog_bytes == len(raw)
    # Once live, it gets what was held and then live events directly.
    assert session.go_live("reading", set()) == [raw]
    assert session.route_live(note, raw, {"live", "reading"}, 10_000) == (
        ["live", "reading"], 0, False,
    )  # fmt: skip


def test_session_a_hold_past_the_bound_gives_the_connection_up() -> None:
    session = Session("localhost", LIMITS)
    session.open("reading", (flt({}),))
    first, second = event(content="a" * 50), event(content="b" * 50)
    bound = len(first.to_json()) + len(second.to_json()) - 1
    assert session.route_live(first, first.to_json(), {"reading"}, bound) == ([], 1, False)
    assert session.route_live(second, second.to_json(), {"reading"}, bound) == ([], 0, True)
