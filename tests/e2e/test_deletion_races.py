"""NIP-09 under concurrency: an event and its deletion sent at the same moment, on two
connections, in either order. Whatever the interleaving, once both are answered the event
is not stored and not served (its deletion was accepted: OK true).

The already-deleted check of an insert and the removal of a deletion used to run in two
transactions that did not serialize (READ COMMITTED, no shared lock), so about a third of
such pairs left the deleted event stored and served.
"""

from __future__ import annotations

import random
import time

import pytest
import trio

from relay.events import kinds
from relay.events.model import Event
from tests.helpers import NostrClient, RelayUnderTest, connect, make_event, new_key, sql

PAIRS = 60


DELETED = "blocked: this event was deleted by its author"


async def send_both(
    first: NostrClient, second: NostrClient, a: Event, b: Event
) -> dict[str, list[object]]:
    """`a` on `first` and `b` on `second` at once; the answers by event id."""
    async with trio.open_nursery() as nursery:
        for client, event in ((first, a), (second, b)):
            nursery.start_soon(client.send, ["EVENT", event.to_dict()])
    answers = {}
    for client, event in ((first, a), (second, b)):
        answer = await client.recv()
        assert answer[1] == event.id
        answers[event.id] = answer
    return answers


async def assert_gone(relay: RelayUnderTest, deleted: list[Event]) -> None:
    ids = [bytes.fromhex(e.id) for e in deleted]
    rows = await sql(relay.db_url, "SELECT count(*) AS n FROM events WHERE id = ANY($1)", ids)
    assert rows[0]["n"] == 0, f"{rows[0]['n']} of {len(deleted)} deleted events stayed stored"
    async with connect(relay.port) as client:
        assert await client.req("check", {"ids": [e.id for e in deleted]}) == []


@pytest.mark.parametrize("how", ["e", "a"])
async def test_an_event_and_its_deletion_at_once_leave_it_deleted(
    relay: RelayUnderTest, how: str
) -> None:
    rng = random.Random(7)
    now = int(time.time())
    deleted: list[Event] = []
    async with connect(relay.port) as one, connect(relay.port) as two:
        for i in range(PAIRS):
            key = new_key()
            if how == "e":
                target = make_event(key, created_at=now)
                tag = ["e", target.id]
            else:
                target = make_event(key, kind=30023, tags=[["d", f"doc{i}"]], created_at=now)
                tag = ["a", f"30023:{target.pubkey}:doc{i}"]
            deletion = make_event(key, kind=kinds.DELETION, tags=[tag], created_at=now + 1)
            pair = [(one, target), (two, deletion)]
            rng.shuffle(pair)
            (c1, e1), (c2, e2) = pair
            answers = await send_both(c1, c2, e1, e2)
            # The deletion is taken; the target either first (and then removed) or refused
            # as deleted if the deletion got there first.
            assert answers[deletion.id] == ["OK", deletion.id, True, ""]
            assert answers[target.id] in (
                ["OK", target.id, True, ""], ["OK", target.id, False, DELETED],
            )  # fmt: skip
            deleted.append(target)
    await assert_gone(relay, deleted)
