"""The relay's answer to the pre-receive hook, without git: what it allows and refuses."""

from __future__ import annotations

import orjson

from relay.git import policy
from relay.git.hookserver import answer

UPDATE = {"old": "0" * 40, "new": "1" * 40, "ref": "refs/heads/main", "is_ancestor": None}


def allow_all(updates: list[policy.RefUpdate]) -> list[policy.Denial]:
    return []


def deny_main(updates: list[policy.RefUpdate]) -> list[policy.Denial]:
    return [policy.Denial(u.ref, "protected") for u in updates if u.ref == "refs/heads/main"]


def test_an_allowed_update_is_answered_allowed() -> None:
    denials, reply = answer(orjson.dumps({"updates": [UPDATE]}), allow_all)
    assert denials == [] and orjson.loads(reply) == {"allowed": True, "denials": []}


def test_the_updates_reach_the_decision_as_sent() -> None:
    seen: list[policy.RefUpdate] = []

    def record(updates: list[policy.RefUpdate]) -> list[policy.Denial]:
        seen.extend(updates)
        return []

    answer(orjson.dumps({"updates": [UPDATE, {**UPDATE, "ref": "refs/tags/v1"}]}), record)
    assert [u.ref for u in seen] == ["refs/heads/main", "refs/tags/v1"]
    assert seen[0].old == "0" * 40 and seen[0].new == "1" * 40


def test_denials_are_named_per_ref() -> None:
    denials, reply = answer(orjson.dumps({"updates": [UPDATE]}), deny_main)
    assert denials == [policy.Denial("refs/heads/main", "protected")]
    assert orjson.loads(reply) == {
        "allowed": False,
        "denials": [{"ref": "refs/heads/main", "reason": "protected"}],
    }


def test_a_malformed_message_allows_nothing() -> None:
    for message in (b"not json", b"{}", orjson.dumps({"updates": [{"ref": "x"}]}), b"[1]"):
        denials, reply = answer(message, allow_all)
        assert denials == [policy.Denial("", "malformed hook message")]
        assert orjson.loads(reply)["allowed"] is False
