"""The web pages' sans-IO parts: which page a request asks for, README rendering and its
sanitising, the NIP-34 status rule of the thread list, the README picked."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.events import kinds
from relay.http import read_request
from relay.protocol.bech32 import decode_key, hex_to_note, hex_to_npub
from relay.web.gitview import pick_readme
from relay.web.markdown import render_readme, sanitise
from relay.web.routes import Asset, Home, NotFound, RepoPage, page_route
from relay.web.threads import open_threads, subject_of
from tests.helpers import make_event, new_key

OWNER = "ab" * 32
NPUB = hex_to_npub(OWNER)
HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


async def route_of(target: str, method: str = "GET", **headers: str) -> object:
    lines = [f"{method} {target} HTTP/1.1", "Host: a", *(f"{k}: {v}" for k, v in headers.items())]
    stream = trio.testing.MemoryReceiveStream()
    stream.put_data(("\r\n".join(lines) + "\r\n\r\n").encode())
    stream.put_eof()
    request = await read_request(stream)
    assert request is not None
    return page_route(request)


async def test_the_relay_page_is_for_browsers_only() -> None:
    assert await route_of("/", Accept=HTML) == Home(1)
    assert await route_of("/", method="HEAD", Accept=HTML) == Home(1)
    assert await route_of("/?page=3", Accept=HTML) == Home(3)
    for bad in ("0", "-1", "x", "10001", "99999999999999999999"):
        assert await route_of(f"/?page={bad}", Accept=HTML) == Home(1)
    # NIP-11, NIP-86, websockets and clients without text/html keep `/`.
    assert await route_of("/", Accept="application/nostr+json") is None
    assert await route_of("/", Accept=f"application/nostr+json, {HTML}") is None
    assert await route_of("/", method="POST", Accept=HTML) is None
    assert await route_of("/", Upgrade="websocket", Connection="Upgrade", Accept=HTML) is None
    assert await route_of("/") is None
    assert await route_of("/", Accept="*/*") is None


async def test_a_repository_url_is_its_page_and_gits_urls_stay_gits() -> None:
    page = RepoPage(OWNER, "demo")
    for path in (f"/{NPUB}/demo.git", f"/{NPUB}/demo.git/", f"/git/{OWNER}/demo",
                 f"/git/{OWNER}/demo.git", f"/git/{OWNER}/demo/"):  # fmt: skip
        assert await route_of(path) == page, path
        assert await route_of(path, Accept=HTML) == page, path
    git_urls = (
        f"/{NPUB}/demo.git/info/refs?service=git-upload-pack",
        f"/git/{OWNER}/demo/info/refs",
        f"/git/{OWNER}/demo.git/git-upload-pack",
    )
    for git in git_urls:
        assert await route_of(git) is None, git
        assert await route_of(git, Accept=HTML) is None, git
    # Shorter or longer paths under /git/ are not repository pages.
    for other in (f"/git/{OWNER}", f"/git/{OWNER}/", "/git/", f"/{NPUB}/demo.git/x/y"):
        assert await route_of(other) is None, other  # git's answer (404), for anyone
        assert await route_of(other, Accept=HTML) is None, other
    for other in ("/git", f"/{NPUB}", f"/{NPUB}/demo"):
        assert await route_of(other) is None, other
        assert await route_of(other, Accept=HTML) == NotFound(), other
    # A repository URL whose owner or name is unusable is a missing page, not an error.
    assert await route_of(f"/git/{OWNER[:-1]}/demo", Accept=HTML) == NotFound()
    assert await route_of(f"/{NPUB}/..bad.git") == NotFound()
    assert await route_of(f"/{NPUB[:-1]}x/demo.git") == NotFound()


async def test_assets_and_the_404_page() -> None:
    assert await route_of("/static/relay.css") == Asset("relay.css")
    assert await route_of("/static/copy.js") == Asset("copy.js")
    assert await route_of("/static/../pyproject.toml") == NotFound()
    assert await route_of("/elsewhere", Accept=HTML) == NotFound()
    assert await route_of("/elsewhere") is None  # the plain 404, as before
    assert await route_of("/healthz/x", Accept="application/json") is None


def test_markdown_is_rendered() -> None:
    html = str(
        render_readme("README.md", b"# Title\n\n*a* `b`\n\n| x | y |\n|---|---|\n| 1 | 2 |\n")
    )
    assert "<h1>Title</h1>" in html
    assert "<em>a</em> <code>b</code>" in html
    assert "<table>" in html and "<td>1</td>" in html


HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '<a href="javascript:alert(1)">x</a>',
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![x](javascript:alert(1))",
    '<iframe src="https://evil.invalid"></iframe>',
    "<style>body{display:none}</style>",
    '<svg onload="alert(1)"></svg>',
    "<details open ontoggle=alert(1)>",
    '[x](https://ok.invalid "t" onclick=alert(1))',
    "<!-- <script>alert(1)</script> -->",
    "<a href='x' onmouseover='alert(1)'>[y](https://ok.invalid)</a>",
    "[x](<javascript:alert(1)>)",
    "[x](&#106;avascript:alert(1))",
    "[x]: javascript:alert(1)\n\n[x]",
]


class Elements(HTMLParser):
    """Every element and attribute of an HTML fragment, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, attrs))


def elements(html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    parser = Elements()
    parser.feed(html)
    parser.close()
    return parser.found


def assert_harmless(html: str) -> None:
    for tag, attrs in elements(html):
        assert tag not in ("script", "iframe", "style", "svg", "object", "embed"), html
        for name, value in attrs:
            assert not name.startswith("on") and name != "style", html
            if name in ("href", "src"):
                scheme = urlsplit((value or "").strip()).scheme.lower()
                assert scheme in ("", "http", "https", "mailto"), html


@pytest.mark.parametrize("source", HOSTILE)
def test_nothing_in_a_readme_runs(source: str) -> None:
    assert_harmless(str(render_readme("README.md", source.encode())))


@pytest.mark.parametrize("source", HOSTILE)
def test_the_sanitiser_alone_removes_what_runs(source: str) -> None:
    """Raw HTML never reaches it from a README; were the renderer to let some through, the
    sanitiser would still remove what runs."""
    assert_harmless(str(sanitise(source)))


def test_the_harmlessness_check_finds_what_runs() -> None:
    for bad in ("<script>x</script>", '<a href="javascript:x">', "<b onclick=x>", "<svg>"):
        with pytest.raises(AssertionError):
            assert_harmless(bad)


def test_raw_html_in_a_readme_is_shown_as_text() -> None:
    html = str(render_readme("README.md", b"<b>bold</b>\n"))
    assert "&lt;b&gt;bold&lt;/b&gt;" in html


def test_links_get_a_safe_rel_and_other_formats_are_text() -> None:
    html = str(render_readme("README.md", b"[x](https://example.invalid/a)"))
    assert 'href="https://example.invalid/a"' in html
    assert 'rel="noopener noreferrer nofollow"' in html
    text = str(render_readme("README.txt", b"# not a heading <b>\n"))
    assert text == "<pre class=readme-text># not a heading &lt;b&gt;\n</pre>"
    assert "\ufffd" in str(render_readme("README.md", b"caf\xe9"))


def test_the_readme_picked_prefers_markdown() -> None:
    entries = [("README", "1", 5), ("readme.md", "2", 5), ("src", "3", 1), ("README.txt", "4", 1)]
    assert pick_readme(entries) == ("readme.md", "2", 5)
    assert pick_readme([("README", "1", 5), ("README.txt", "4", 1)]) == ("README", "1", 5)
    assert pick_readme([("READ_ME", "1", 5), ("notes.md", "2", 1)]) is None


def coordinate(owner: str) -> list[str]:
    return ["a", f"{kinds.REPO_ANNOUNCEMENT}:{owner}:demo"]


def test_the_newest_status_from_the_author_or_a_maintainer_decides() -> None:
    maintainer, author, stranger = new_key(), new_key(), new_key()
    maintainers = frozenset({maintainer.public_key_xonly.format().hex()})
    a = coordinate(next(iter(maintainers)))
    issue = make_event(author, kind=kinds.ISSUE, tags=[a, ["subject", "one"]], created_at=100)
    pr = make_event(author, kind=kinds.PULL_REQUEST, tags=[a, ["subject", "two"]], created_at=90)
    # Patches in a series that are not the root are not threads.
    follow_up = make_event(author, kind=kinds.PATCH, tags=[a], content="x", created_at=95)

    def status(key: object, kind: int, target: str, at: int) -> object:
        return make_event(key, kind=kind, tags=[["e", target, "", "root"]], created_at=at)  # type: ignore[arg-type]

    closed_by_stranger = status(stranger, kinds.STATUS_CLOSED, issue.id, 200)
    threads = [issue, pr, follow_up]
    listed = open_threads(threads, [closed_by_stranger], maintainers)  # type: ignore[list-item]
    assert [(t.subject, t.status) for t in listed] == [("one", "open"), ("two", "open")]
    # The author closes, a maintainer reopens later: open. A draft is listed as draft.
    closed = status(author, kinds.STATUS_CLOSED, issue.id, 110)
    reopened = status(maintainer, kinds.STATUS_OPEN, issue.id, 120)
    draft = status(author, kinds.STATUS_DRAFT, pr.id, 130)
    listed = open_threads(threads, [closed, reopened, draft], maintainers)  # type: ignore[list-item]
    assert [(t.subject, t.status) for t in listed] == [("one", "open"), ("two", "draft")]
    # Merged or closed last: not listed.
    merged = status(maintainer, kinds.STATUS_APPLIED, pr.id, 140)
    closed_again = status(author, kinds.STATUS_CLOSED, issue.id, 150)
    statuses = [closed, reopened, draft, merged, closed_again]
    assert open_threads(threads, statuses, maintainers) == []  # type: ignore[arg-type]


def test_subjects() -> None:
    patch = make_event(kind=kinds.PATCH, content="From 1\nSubject: [PATCH 2/3] Fix it\n\nbody")
    assert subject_of(patch) == "Fix it"
    issue = make_event(kind=kinds.ISSUE, content="\n\nfirst line\nsecond")
    assert subject_of(issue) == "first line"
    assert subject_of(make_event(kind=kinds.ISSUE, content="")) == "(no subject)"
    long = make_event(kind=kinds.ISSUE, tags=[["subject", "x" * 500]])
    assert len(subject_of(long)) == 200


def test_bech32_encodes_npub_and_note() -> None:
    key = "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e"  # NIP-19's example
    assert hex_to_npub(key) == "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg"
    note = hex_to_note(key)
    assert note.startswith("note1") and decode_key("note", note) == key
    assert decode_key("npub", note) is None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(alphabet=st.sampled_from("abgitnpub1.%2fe0/:-_"), max_size=70), max_size=6),
    st.sampled_from(["", HTML, "application/nostr+json", "*/*"]),
)
async def test_no_path_makes_the_router_fail(segments: list[str], accept: str) -> None:
    """Whatever the path (segments of the characters the routes look at), the answer is a
    page, NotFound or None: never an exception (which would close the connection unanswered)."""
    path = "/" + "/".join(segments)
    found = await route_of(path.replace(" ", ""), Accept=accept)
    assert found is None or isinstance(found, (Home, RepoPage, Asset, NotFound))
