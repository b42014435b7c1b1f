"""NIP-50 search against a running relay and real PostgreSQL: full-text matching of content
and of title/subject/description tags, ranked by relevance, combined with the other filter
fields, inside one community, never showing deleted or expired events, under the query
timeout."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import trio

from relay.events.model import Event
from relay.store import events as events_store
from tests.helpers import connect, make_event, new_key, sql, transaction_held
from tests.services import RelayUnderTest, start_relay


def ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in events]


async def store(relay: RelayUnderTest, *events: Event, host: str = "127.0.0.1") -> None:
    async with connect(relay.port, host) as client:
        for event in events:
            answer = await client.publish(event)
            assert answer[:3] == ["OK", event.id, True], answer


async def search(
    relay: RelayUnderTest, *filters: dict[str, Any], host: str = "127.0.0.1"
) -> list[str]:
    async with connect(relay.port, host) as client:
        return ids(await client.req("s", *filters))


async def count(relay: RelayUnderTest, *filters: dict[str, Any]) -> Any:
    async with connect(relay.port) as client:
        await client.send(["COUNT", "c", *filters])
        return await client.recv()


async def test_content_matches_ranked_by_relevance_then_newest(relay: RelayUnderTest) -> None:
    now = int(time.time())
    once = make_event(content="Orange juice for breakfast", created_at=now - 30)
    twice = make_event(content="orange, orange everywhere", created_at=now - 20)
    once_newer = make_event(content="an ORANGE cat", created_at=now - 10)
    other = make_event(content="purple rain", created_at=now)
    await store(relay, once, twice, once_newer, other)
    assert await search(relay, {"search": "orange"}) == [twice.id, once_newer.id, once.id]
    # `limit` applies after ranking.
    assert await search(relay, {"search": "orange", "limit": 2}) == [twice.id, once_newer.id]
    assert await search(relay, {"search": "purple"}) == [other.id]
    assert await search(relay, {"search": "green"}) == []
    # websearch syntax: every word (AND), "phrases", -exclusions, or.
    assert await search(relay, {"search": "orange cat"}) == [once_newer.id]
    assert await search(relay, {"search": '"orange juice"'}) == [once.id]
    assert await search(relay, {"search": "orange -cat -juice"}) == [twice.id]
    assert set(await search(relay, {"search": "cat or rain"})) == {once_newer.id, other.id}


async def test_search_combines_with_the_other_fields(relay: RelayUnderTest) -> None:
    alice, bob = new_key(), new_key()
    note = make_event(alice, content="nostr relays")
    long_form = make_event(alice, kind=30023, content="nostr relays", tags=[["d", "a"]])
    bobs = make_event(bob, content="nostr relays", tags=[["t", "x"]])
    await store(relay, note, long_form, bobs)
    assert set(await search(relay, {"search": "relays"})) == {note.id, long_form.id, bobs.id}
    assert await search(relay, {"search": "relays", "kinds": [30023]}) == [long_form.id]
    assert await search(relay, {"search": "relays", "authors": [bobs.pubkey]}) == [bobs.id]
    assert await search(relay, {"search": "relays", "#t": ["x"]}) == [bobs.id]
    assert await search(relay, {"search": "relays", "ids": [note.id]}) == [note.id]
    assert await search(relay, {"search": "relays", "until": note.created_at - 1}) == []


async def test_metadata_and_title_subject_description_tags_are_searched(
    relay: RelayUnderTest,
) -> None:
    profile = make_event(
        kind=0, content=orjson.dumps({"name": "satoshi", "about": "bitcoin inventor"}).decode()
    )
    article = make_event(
        kind=30023, content="body text", tags=[["d", "x"], ["title", "Pelican migration"]]
    )
    mail = make_event(kind=14, content="hi", tags=[["subject", "quarterly report"]])
    listing = make_event(content="x", tags=[["description", "vintage bicycle"]])
    other_tag = make_event(content="y", tags=[["alt", "zebra"], ["t", "zebra"]])
    await store(relay, profile, article, mail, listing, other_tag)
    assert await search(relay, {"search": "satoshi"}) == [profile.id]
    assert await search(relay, {"search": "inventor", "kinds": [0]}) == [profile.id]
    assert await search(relay, {"search": "pelican"}) == [article.id]
    assert await search(relay, {"search": "quarterly"}) == [mail.id]
    assert await search(relay, {"search": "bicycle"}) == [listing.id]
    assert await search(relay, {"search": "zebra"}) == []


async def test_unsupported_extensions_are_ignored(relay: RelayUnderTest) -> None:
    event = make_event(content="hello world")
    await store(relay, event)
    query = "hello language:en include:spam domain:example.com nsfw:false"
    assert await search(relay, {"search": query}) == [event.id]
    # Nothing left but extensions: no words to match, so nothing matches.
    assert await search(relay, {"search": "language:en"}) == []
    assert await search(relay, {"search": ""}) == []
    assert await count(relay, {"search": "language:en"}) == ["COUNT", "c", {"count": 0}]


async def test_count_with_search(relay: RelayUnderTest) -> None:
    events = [make_event(content=f"apple number {i}") for i in range(5)]
    await store(relay, *events, make_event(content="pear"))
    assert await count(relay, {"search": "apple"}) == ["COUNT", "c", {"count": 5}]
    # An event two filters match counts once.
    assert await count(relay, {"search": "apple"}, {"search": "number 3"}) == [
        "COUNT", "c", {"count": 5},
    ]  # fmt: skip
    assert await count(relay, {"search": "apple", "ids": [events[0].id]}) == [
        "COUNT", "c", {"count": 1},
    ]  # fmt: skip


async def test_search_stays_in_its_community(relay: RelayUnderTest) -> None:
    here = make_event(content="tenancy secret")
    there = make_event(content="tenancy secret")
    await store(relay, here)
    await store(relay, there, host="alpha.test")
    assert await search(relay, {"search": "tenancy"}) == [here.id]
    assert await search(relay, {"search": "tenancy"}, host="alpha.test") == [there.id]
    assert await search(relay, {"search": "secret"}, host="beta.test") == []


async def test_deleted_and_expired_events_never_match(relay: RelayUnderTest) -> None:
    author = new_key()
    kept = make_event(author, content="ephemera kept")
    deleted = make_event(author, content="ephemera deleted")
    expiring = make_event(
        author, content="ephemera expiring", tags=[["expiration", str(int(time.time()) + 600)]]
    )
    await store(relay, kept, deleted, expiring)
    assert set(await search(relay, {"search": "ephemera"})) == {kept.id, deleted.id, expiring.id}
    await store(relay, make_event(author, kind=5, tags=[["e", deleted.id]]))
    # Expired, and not purged yet.
    await sql(
        relay.db_url, "UPDATE events SET expires_at = 1 WHERE id = $1", bytes.fromhex(expiring.id)
    )
    assert await search(relay, {"search": "ephemera"}) == [kept.id]
    assert await count(relay, {"search": "ephemera"}) == ["COUNT", "c", {"count": 1}]


async def test_search_results_come_before_other_filters_results(relay: RelayUnderTest) -> None:
    now = int(time.time())
    old_match = make_event(content="walrus", created_at=now - 100)
    new_other = make_event(kind=7, content="+", created_at=now)
    await store(relay, old_match, new_other)
    both = await search(relay, {"kinds": [7]}, {"search": "walrus"})
    assert both == [old_match.id, new_other.id]


async def test_a_search_subscription_gets_stored_events_only(relay: RelayUnderTest) -> None:
    stored = make_event(content="heron sighting")
    await store(relay, stored)
    async with connect(relay.port) as client:
        assert ids(await client.req("live", {"search": "heron"}, live=True)) == [stored.id]
        later = make_event(content="heron again")
        assert (await client.publish(later))[:3] == ["OK", later.id, True]
        # No EVENT for the live one: the next frame is the answer to a later REQ.
        assert ids(await client.req("after", {"ids": [later.id]})) == [later.id]


async def test_events_with_escapes_jsonb_refuses_are_stored_and_searched(
    relay: RelayUnderTest,
) -> None:
    """jsonb refuses \\u0000 and lone surrogates; the index's document reads them as spaces,
    so such an event is stored (the index never fails an insert) and its words are found."""
    event = make_event(content="nul\x00byte inside")
    await store(relay, event)
    assert await search(relay, {"search": "byte"}) == [event.id]
    assert await search(relay, {"search": "nul"}) == [event.id]
    rows = await sql(
        relay.db_url,
        "SELECT event_search_text($1)",
        '{"content":"lone \\ud800 surrogate \\\\u0000 kept","tags":[["title","t"]]}',
    )
    assert rows[0][0] == "lone   surrogate \\u0020 kept t"


async def test_a_search_past_the_query_timeout_is_closed(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, query_timeout_seconds=0.5)
    lock = ("LOCK TABLE events IN ACCESS EXCLUSIVE MODE", ())
    for verb in ("REQ", "COUNT"):
        async with transaction_held(db_url, lock), connect(relay.port) as client:
            await client.send([verb, "slow", {"search": "anything"}])
            assert await client.recv() == ["CLOSED", "slow", "error: query too expensive"]


async def test_relevance_ranks_the_newest_candidates(
    relay: RelayUnderTest, monkeypatch: Any
) -> None:
    """The cost of ranking is bounded: the newest SEARCH_CANDIDATES matches are ranked."""
    monkeypatch.setattr(events_store, "SEARCH_CANDIDATES", 2)
    now = int(time.time())
    best_but_old = make_event(content="kiwi kiwi kiwi", created_at=now - 30)
    middle = make_event(content="kiwi", created_at=now - 20)
    newest = make_event(content="kiwi kiwi", created_at=now - 10)
    await store(relay, best_but_old, middle, newest)
    assert await search(relay, {"search": "kiwi"}) == [newest.id, middle.id]
    assert await count(relay, {"search": "kiwi"}) == ["COUNT", "c", {"count": 3}]


async def test_quotes_and_backslashes_are_search_text(relay: RelayUnderTest) -> None:
    event = make_event(content="it's a back\\slash")
    await store(relay, event)
    assert await search(relay, {"search": "it's"}) == [event.id]
    assert await search(relay, {"search": "back\\slash"}) == [event.id]
    hostile = "x' OR true; DROP TABLE events; -- \\' E'\\\\"
    assert await search(relay, {"search": hostile}) == []
    assert await search(relay, {"ids": [event.id]}) == [event.id]
