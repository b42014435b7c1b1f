"""Which web page does a request ask for? Sans-IO, parsed once.

Content negotiation is by path, then by `Accept`:
  GET /                              with Accept: text/html   the community's relay page
  GET /<npub>/<repo>.git[/]                                   the repository's page
  GET /git/<owner-hex>/<repo>[.git][/]                        the repository's page
  GET /static/<asset>                                         the stylesheet and the script
  GET <anything else>                with Accept: text/html   the 404 page

git never asks for a repository's own URL (it asks for `<repo>/info/refs` and POSTs to
`<repo>/git-upload-pack`), so those paths stay git's; NIP-11 (Accept:
application/nostr+json), NIP-86 (Content-Type: application/nostr+json+rpc) and websocket
upgrades on `/` stay the relay's. Everything that is not a page is None.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from relay.git import model
from relay.git.routes import is_git_path
from relay.http import Request
from relay.protocol.bech32 import npub_to_hex

# The pages of repositories on the relay page: ?page=1 .. MAX_PAGE.
MAX_PAGE = 10_000
ASSETS = {
    "relay.css": "text/css; charset=utf-8",
    "copy.js": "text/javascript; charset=utf-8",
}
NIP11_TYPE = "application/nostr+json"
RPC_TYPE = "application/nostr+json+rpc"


@dataclass(frozen=True, slots=True)
class Home:
    page: int  # 1-based


@dataclass(frozen=True, slots=True)
class RepoPage:
    owner: str  # hex, as the URL names it (any maintainer's key reaches the repository)
    repo_id: str  # normalized


@dataclass(frozen=True, slots=True)
class Asset:
    name: str


@dataclass(frozen=True, slots=True)
class NotFound:
    pass


Page = Home | RepoPage | Asset | NotFound


def wants_html(accept: str) -> bool:
    return "text/html" in accept.lower()


def page_route(request: Request) -> Page | None:
    """The page `request` asks for, or None when it is not a request for a page."""
    if request.method not in ("GET", "HEAD") or request.wants_websocket:
        return None
    path, accept = request.path, request.header("accept")
    if path.startswith("/static/"):
        name = path.removeprefix("/static/")
        return Asset(name) if name in ASSETS else NotFound()
    if path == "/":
        if NIP11_TYPE in accept or RPC_TYPE in request.header("content-type"):
            return None
        return Home(_page_number(request.query)) if wants_html(accept) else None
    repo = repo_page(path)
    if repo is not None:
        return repo
    if is_git_path(path) or not wants_html(accept):
        return None
    return NotFound()


def repo_page(path: str) -> RepoPage | NotFound | None:
    """The repository page of a repository URL (`/<npub>/<repo>.git`,
    `/git/<hex>/<repo>[.git]`, either with a trailing slash); NotFound for such a URL whose
    owner or name is unusable; None for any other path."""
    segments = [unquote(s) for s in path.rstrip("/").split("/")]
    if len(segments) == 4 and segments[1] == "git":
        owner, name = segments[2], segments[3]
    elif len(segments) == 3 and segments[1].startswith("npub1") and segments[2].endswith(".git"):
        owner, name = npub_to_hex(segments[1]) or "", segments[2]
    else:
        return None
    try:
        model.validate_owner(owner)
        return RepoPage(owner, model.normalize_repo_id(name))
    except model.InvalidName:
        return NotFound()


def _page_number(query: str) -> int:
    value = dict(parse_qsl(query)).get("page", "1")
    return int(value) if value.isdigit() and 1 <= int(value) <= MAX_PAGE else 1
