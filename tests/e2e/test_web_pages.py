"""The web pages in a real browser (headless Chromium over the DevTools protocol): the
relay page and a repository page of a relay with a pushed repository, the README rendered
and its HTML harmless, the community's open issues and pull requests, the 404 page, a
phone-width screen; and git on the same URLs, unaffected."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio
from coincurve import PrivateKey

from relay.events import kinds
from relay.protocol.bech32 import hex_to_npub
from tests.browser import Browser, open_browser
from tests.git.gitclient import Git, announce
from tests.git.hosting import HOST, Hosted, hosted_relay
from tests.helpers import connect, make_event, new_key

README = """# Demo Project Heading

Some *emphasis* and a [link](https://example.invalid/).

<script>window.pwned = "script"; document.title = "pwned";</script>

<img src="x" onerror="window.pwned = 'onerror'">

[click me](javascript:window.pwned='link')
"""
SUBJECT = "Add the frobnicator to the parser"


async def publish(h: Hosted, *events: object) -> None:
    async with connect(h.port) as client:
        for event in events:
            answer = await client.publish(event)  # type: ignore[arg-type]
            assert answer[2] is True, answer


async def pushed_repo(h: Hosted, tmp_path: Path) -> tuple[PrivateKey, str, str]:
    """`demo`, announced with a description and pushed: two commits, a README.md and a
    tag; (key, owner, the tip of main)."""
    git = Git(tmp_path / "home")
    key = new_key()
    extra = [["description", "A repository shown in a browser"], ["name", "Demo"]]
    owner = (await announce(h.port, key, "demo", extra_tags=extra)).pubkey
    work = tmp_path / "work"
    await git.run("init", "-q", "-b", "main", str(work))
    await git.commit(work, "README.md", README, "Write the README")
    await git.commit(work, "parser.py", "x = 1\n", SUBJECT)
    await git.run("tag", "v1.0", cwd=work)
    url = h.url(owner, "demo")
    await git.run("push", "-q", url, "main", "v1.0", cwd=work, key=key, url=url)
    tip = (await git.run("rev-parse", "HEAD", cwd=work)).stdout.decode().strip()
    return key, owner, tip


def repo_coordinate(owner: str) -> list[str]:
    return ["a", f"{kinds.REPO_ANNOUNCEMENT}:{owner}:demo"]


async def publish_threads(h: Hosted, key: PrivateKey, owner: str, tip: str, work: Path) -> None:
    """An open issue, a closed one, an open pull request (its tip pushed first, as GRASP
    clients do) and a draft patch."""
    now = int(time.time())
    stranger = new_key()
    a = repo_coordinate(owner)
    open_issue = make_event(
        stranger, kind=kinds.ISSUE, content="It crashes", tags=[a, ["subject", "Crash on start"]],
        created_at=now - 30,
    )  # fmt: skip
    closed = make_event(stranger, kind=kinds.ISSUE, content="Old",
                        tags=[a, ["subject", "An old bug"]], created_at=now - 20)  # fmt: skip
    closing = make_event(key, kind=kinds.STATUS_CLOSED, tags=[["e", closed.id, "", "root"]],
                         created_at=now - 10)  # fmt: skip
    # A stranger's status does not count: the issue stays open.
    ignored = make_event(new_key(), kind=kinds.STATUS_CLOSED,
                         tags=[["e", open_issue.id, "", "root"]], created_at=now - 5)  # fmt: skip
    pr = make_event(stranger, kind=kinds.PULL_REQUEST, content="",
                    tags=[a, ["subject", "Faster parsing"], ["c", tip]],
                    created_at=now - 15)  # fmt: skip
    git = Git(work.parent / "home")
    await git.run("push", "-q", h.url(owner, "demo"), f"HEAD:refs/nostr/{pr.id}", cwd=work)
    patch = make_event(stranger, kind=kinds.PATCH, tags=[a, ["t", "root"]],
                       content="From x\nSubject: [PATCH 1/2] Fix the tests\n\n---\n",
                       created_at=now - 12)  # fmt: skip
    draft = make_event(stranger, kind=kinds.STATUS_DRAFT, tags=[["e", patch.id, "", "root"]],
                       created_at=now - 2)  # fmt: skip
    await publish(h, open_issue, closed, closing, ignored, pr, patch, draft)


async def texts(browser: Browser, selector: str) -> list[str]:
    found = await browser.evaluate(
        f"Array.from(document.querySelectorAll({selector!r})).map(e => e.innerText)"
    )
    return [str(t) for t in found]


async def fits_width(browser: Browser) -> bool:
    return bool(await browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


@pytest.mark.slow
async def test_a_browser_sees_the_relay_page_and_a_repository_page(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        key, owner, tip = await pushed_repo(h, tmp_path)
        await publish_threads(h, key, owner, tip, tmp_path / "work")
        base = f"http://{HOST}:{h.port}"
        npub = hex_to_npub(owner)
        shots = tmp_path / "screenshots"
        shots.mkdir()
        async with open_browser(tmp_path / "profile") as browser:
            # The relay page.
            await browser.goto(f"{base}/")
            assert browser.last_status == 200
            assert "Content-Security-Policy".lower() in browser.last_headers
            assert await browser.evaluate("document.querySelector('#ws-url').value") == (
                f"ws://{HOST}:{h.port}/"
            )
            assert await texts(browser, ".repo-name") == ["Demo"]
            listed = await browser.text(".repo-list li")
            assert listed is not None and "A repository shown in a browser" in listed
            assert "last push: never" not in listed
            nips = await texts(browser, ".facts .pill")
            assert "34" in nips and "GRASP-01" in nips, nips
            await browser.screenshot(shots / "home.png")

            # Following the link reaches the repository's page.
            href = await browser.evaluate("document.querySelector('.repo-name').href")
            assert href == f"{base}/{npub}/demo.git"
            await browser.goto(href)
            assert browser.last_status == 200
            assert await browser.text(".repo-title") == "Demo"
            assert await browser.title() == "Demo · " + (await browser.text(".brand") or "")
            subjects = await texts(browser, ".commit-list .subject")
            assert subjects == [SUBJECT, "Write the README"]
            assert await texts(browser, ".refs .ref") == ["main", "v1.0"]
            clone_urls = await browser.evaluate(
                "Array.from(document.querySelectorAll('.copy-field input')).map(e => e.value)"
            )
            assert clone_urls == [f"{base}/{npub}/demo.git", f"{base}/git/{owner}/demo"]
            # The README, rendered; its HTML shown as text, nothing of it run.
            assert await browser.text(".markdown h1") == "Demo Project Heading"
            assert await browser.evaluate("window.pwned === undefined") is True
            assert await browser.evaluate("document.querySelectorAll('.markdown script, "
                                          ".markdown [onerror]').length") == 0  # fmt: skip
            markdown = await browser.text(".markdown") or ""
            assert "<script>" in markdown, markdown  # shown, escaped
            link = await browser.evaluate(
                "Array.from(document.querySelectorAll('.markdown a')).map(a => a.href)"
            )
            assert link == ["https://example.invalid/"], link
            # Issues and pull requests: open and draft ones, by the status rule.
            threads = await texts(browser, ".thread-list a")
            assert threads == ["Fix the tests", "Faster parsing", "Crash on start"], threads
            workshop = await browser.evaluate(
                "Array.from(document.querySelectorAll('.thread-list a')).map(a => a.href)"
            )
            assert all(u.startswith(f"https://gitworkshop.dev/{npub}/demo/") for u in workshop)
            statuses = await texts(browser, ".thread-list .pill.draft")
            assert statuses == ["draft"]
            # The copy button copies the clone URL.
            await browser.click("button[data-copy]")
            await trio.sleep(0.2)
            assert await browser.text("button[data-copy]") == "Copied"
            assert await browser.evaluate("navigator.clipboard.readText()") == clone_urls[0]
            assert browser.exceptions == [], browser.exceptions
            assert browser.console == [], browser.console
            await browser.screenshot(shots / "repo.png")

            # The hex form of the URL is the same page.
            await browser.goto(f"{base}/git/{owner}/demo")
            assert browser.last_status == 200
            assert await browser.text(".repo-title") == "Demo"

            # A phone-width screen: nothing wider than the screen.
            await browser.set_viewport(390, 844, mobile=True)
            await browser.goto(href)
            assert await fits_width(browser)
            await browser.screenshot(shots / "repo-phone.png")
            await browser.goto(f"{base}/")
            assert await fits_width(browser)

            # The 404 page, in the same style.
            await browser.goto(f"{base}/{npub}/nothing.git")
            assert browser.last_status == 404
            assert await browser.text("h1") == "Not found"
            assert await browser.text(".brand") is not None
            await browser.screenshot(shots / "missing.png")
            await browser.goto(f"{base}/no/such/page")
            assert browser.last_status == 404
            assert await browser.text("h1") == "Not found"
        for name in ("home", "repo", "repo-phone", "missing"):
            assert (shots / f"{name}.png").stat().st_size > 1000

        # git on the same URL is unaffected.
        git = Git(tmp_path / "home")
        clone = tmp_path / "clone"
        await git.run("clone", "-q", f"{base}/{npub}/demo.git", str(clone))
        assert (clone / "README.md").read_text() == README
