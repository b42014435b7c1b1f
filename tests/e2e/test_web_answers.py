"""The web pages as HTTP answers, over real sockets to a real relay: headers (CSP, caching,
Vary, CORS), 304 on a repeat, HEAD, the assets, pagination, communities kept apart, the
404 page, private repositories, RELAY_WEB_PAGES=off, and NIP-11 on the same `/`."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import trio

from relay.protocol.bech32 import hex_to_npub
from relay.web.pages import CSP
from tests.git.gitclient import announce
from tests.git.hosting import hosted_relay
from tests.helpers import RelayUnderTest, http_get, http_request, new_key

HTML = "text/html,application/xhtml+xml,*/*;q=0.8"


def assert_page_headers(headers: dict[str, str]) -> None:
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-security-policy"] == CSP
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["vary"] == "Accept"
    assert headers["cache-control"] == "no-cache"
    assert headers["access-control-allow-origin"] == "*"
    assert headers["etag"].startswith('"')


async def test_the_relay_page_its_headers_a_repeat_and_head(relay: RelayUnderTest) -> None:
    status, headers, body = await http_get(relay.port, "/", Accept=HTML)
    assert status == 200
    assert_page_headers(headers)
    page = body.decode()
    assert page.startswith("<!doctype html>")
    assert 'value="ws://127.0.0.1/"' in page  # the Host the request named
    assert "No repositories are hosted here yet." in page
    # No external fonts, scripts or styles: every URL the page loads is the relay's own.
    assert "//" not in page.replace("ws://127.0.0.1/", "").replace(
        "https://github.com/relay-project/relay", ""
    )
    etag = headers["etag"]
    status, again, body = await http_get(relay.port, "/", Accept=HTML, If_None_Match=etag)
    assert (status, body) == (304, b"")
    assert again["etag"] == etag
    status, head, body = await http_request(relay.port, "HEAD", "/", Accept=HTML)
    assert (status, body) == (200, b"")
    assert head["content-length"] == headers["content-length"]


async def test_nip11_and_the_plain_answers_keep_their_place(relay: RelayUnderTest) -> None:
    status, headers, body = await http_get(relay.port, "/", Accept="application/nostr+json")
    assert status == 200 and headers["vary"] == "Accept"
    assert orjson.loads(body)["supported_nips"]
    status, _, body = await http_get(relay.port, "/")
    assert status == 404 and body.startswith(b"this is a Nostr relay")
    status, _, body = await http_get(relay.port, "/elsewhere")
    assert (status, body) == (404, b"not found\n")
    status, headers, body = await http_get(relay.port, "/elsewhere", Accept=HTML)
    assert status == 404
    assert_page_headers(headers)
    assert b"<h1>Not found</h1>" in body
    # An unknown host is refused before any page.
    status, _, body = await http_get(relay.port, "/", host="nowhere.test", Accept=HTML)
    assert (status, body) == (404, b"unknown host\n")


async def test_the_assets_are_cached_for_good(relay: RelayUnderTest) -> None:
    _, _, page = await http_get(relay.port, "/", Accept=HTML)
    for name, kind in (("relay.css", "text/css"), ("copy.js", "text/javascript")):
        assert f"/static/{name}?v=".encode() in page
        status, headers, body = await http_get(relay.port, f"/static/{name}")
        assert status == 200 and headers["content-type"].startswith(kind)
        assert headers["cache-control"] == "public, max-age=31536000, immutable"
        assert headers["x-content-type-options"] == "nosniff"
        assert len(body) > 100
    status, _, _ = await http_get(relay.port, "/static/nothing.css", Accept=HTML)
    assert status == 404


@pytest.mark.slow
async def test_repositories_are_listed_by_page_and_by_community(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("relay.web.pages.REPOS_PER_PAGE", 2)
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        key = new_key()
        for name in ("carrot", "apple", "banana"):
            await announce(h.port, key, name, host="alpha.test",
                           extra_tags=[["description", f"all about {name}s <b>"]])  # fmt: skip
        owner = key.public_key_xonly.format().hex()
        npub = hex_to_npub(owner)

        async def page(path: str, host: str = "alpha.test") -> tuple[int, str]:
            status, _, body = await http_get(h.port, path, host=host, Accept=HTML)
            return status, body.decode()

        status, first = await page("/")
        assert status == 200
        assert ">apple</a>" in first and ">banana</a>" in first and "carrot" not in first
        assert "all about apples &lt;b&gt;" in first  # escaped
        assert "page 1 of 2" in first and 'href="/?page=2"' in first
        assert "last push: never" in first
        _, second = await page("/?page=2")
        assert ">carrot</a>" in second and "apple" not in second
        _, beyond = await page("/?page=3")
        assert "No repositories on this page." in beyond
        # Another community of the same relay sees none of them.
        _, other = await page("/", host="beta.test")
        assert "No repositories are hosted here yet." in other
        status, _ = await page(f"/{npub}/apple.git", host="beta.test")
        assert status == 404
        # Announced, never pushed: the page says it is empty.
        status, empty = await page(f"/{npub}/apple.git")
        assert status == 200
        assert "Empty repository" in empty and "apple" in empty
        # The URL of someone who is not a maintainer names no repository.
        stranger = hex_to_npub(new_key().public_key_xonly.format().hex())
        status, missing = await page(f"/{stranger}/apple.git")
        assert status == 404 and "<h1>Not found</h1>" in missing


async def test_private_repositories_have_no_pages(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay(
        "filesystem", nursery, db_url, tmp_path / "data", git_public_read=False
    ) as h:
        key = new_key()
        await announce(h.port, key, "secret")
        npub = hex_to_npub(key.public_key_xonly.format().hex())
        status, _, body = await http_get(h.port, f"/{npub}/secret.git", Accept=HTML)
        assert status == 404 and b"secret" not in body
        status, _, body = await http_get(h.port, "/", Accept=HTML)
        assert status == 200 and b"secret" not in body
        assert b"only their maintainers can read them" in body


async def test_pages_switched_off_leave_the_plain_answers(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data", web_pages=False) as h:
        key = new_key()
        await announce(h.port, key, "demo")
        npub = hex_to_npub(key.public_key_xonly.format().hex())
        status, _, body = await http_get(h.port, "/", Accept=HTML)
        assert status == 404 and body.startswith(b"this is a Nostr relay")
        status, _, body = await http_get(h.port, f"/{npub}/demo.git", Accept=HTML)
        assert (status, body) == (404, b"not found\n")
        status, _, _ = await http_get(h.port, "/static/relay.css")
        assert status == 404


async def test_a_page_waits_its_turn_for_a_git_slot_then_says_busy(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay(
        "filesystem", nursery, db_url, tmp_path / "data", git_max_processes=1
    ) as h:
        key = new_key()
        await announce(h.port, key, "demo")
        npub = hex_to_npub(key.public_key_xonly.format().hex())
        slots = h.relay.app.git.processes
        holder = object()
        await slots.acquire_on_behalf_of(holder)  # git work in progress, holding the one slot
        try:
            status, headers, body = await http_get(h.port, f"/{npub}/demo.git", Accept=HTML)
        finally:
            slots.release_on_behalf_of(holder)
        assert status == 503 and headers["retry-after"] == "5"
        assert b"<h1>Busy</h1>" in body
        status, _, _ = await http_get(h.port, f"/{npub}/demo.git", Accept=HTML)
        assert status == 200
