"""The web pages: rendering (Jinja2, autoescaped) and the HTTP answer of each.

Every page is one response with a strict Content-Security-Policy (the relay's own
stylesheet and script, its own and `data:` images, nothing else), `nosniff`, no referrer,
an ETag (a repeat view with If-None-Match gets 304) and `Cache-Control: no-cache` (a
browser revalidates, a shared cache may keep it). The stylesheet and the script are
served under a versioned URL and cached for a year. `/` varies by Accept (NIP-11 and the
relay page share it), so every page says `Vary: Accept`.

A repository page hydrates the repository (through the pack cache) under one of the git
slots (RELAY_GIT_MAX_PROCESSES), so pages and git share the same bound on git work.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

import jinja2
import orjson
import trio

from relay.events import kinds
from relay.events.model import Event, parse_event
from relay.git import model
from relay.git.objectstore import StoreError
from relay.git.smart_http import RETRY_AFTER_SECONDS
from relay.git.workspace import GitFailed, RepoNotFound, ResourceLimit, hydrate_into, scratch_dir
from relay.http import HttpError, Request, respond
from relay.protocol.access import PUBLIC_ACCESS, Access
from relay.protocol.bech32 import hex_to_note, hex_to_npub
from relay.protocol.hosts import normalize_host
from relay.web.gitview import GitView, read_view
from relay.web.routes import ASSETS, Asset, Home, NotFound, Page, RepoPage
from relay.web.threads import Thread, read_threads

if TYPE_CHECKING:
    from relay.git.maintainers import HostedRepo
    from relay.git.registry import RepoRegistry
    from relay.git.smart_http import GitService
    from relay.store.events import EventStore

log = logging.getLogger(__name__)

# Repositories per page of the relay page.
REPOS_PER_PAGE = 50
GITWORKSHOP = "https://gitworkshop.dev"
CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HTML_TYPE = "text/html; charset=utf-8"
PAGE_HEADERS = [
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Vary", "Accept"),
]
ASSET_MAX_AGE_SECONDS = 365 * 24 * 3600

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("relay.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(value: int | None) -> str:
    if not value:
        return "never"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M UTC")


_env.filters["when"] = _when
_env.filters["npub"] = hex_to_npub
_env.filters["short"] = lambda oid: oid[:12]


def _asset_bytes(name: str) -> bytes:
    return resources.files("relay.web").joinpath("static", name).read_bytes()


_ASSETS = {name: _asset_bytes(name) for name in ASSETS}
ASSET_VERSION = hashlib.sha256(b"".join(_ASSETS[n] for n in sorted(_ASSETS))).hexdigest()[:12]
_env.globals["asset_version"] = ASSET_VERSION


@dataclass(frozen=True, slots=True)
class Clone:
    url: str
    label: str


@dataclass
class WebPages:
    """Answers page requests (see relay.web.routes); it is handed the parts it reads."""

    git: GitService
    registry: RepoRegistry
    store: EventStore
    relay_pubkey: str
    https: bool
    public_read: bool
    # Members-only communities (NIP-43) show their pages to nobody: a browser cannot AUTH.
    access_of: Callable[[int], Access] = lambda _community_id: PUBLIC_ACCESS

    async def handle(
        self,
        stream: trio.abc.Stream,
        request: Request,
        page: Page,
        community_id: int,
        info: dict[str, Any],
    ) -> None:
        """Answer `page`; `info` is the community's NIP-11 document (name, description,
        contact, NIPs), which every page's header and the relay page show."""
        if isinstance(page, Asset):
            await self._asset(stream, request, page.name)
            return
        base = {
            "relay_name": info.get("name") or "Nostr relay",
            "relay_description": info.get("description") or "",
            "contact": info.get("contact") or "",
            "nips": info.get("supported_nips", []),
            "grasps": info.get("supported_grasps", []),
            "software": info.get("software", ""),
            "version": info.get("version", ""),
        }
        status, body = 200, ""
        if isinstance(page, Home):
            body = await self._home(request, page, community_id, base)
        elif isinstance(page, RepoPage):
            status, body = await self._repo(request, page, community_id, base)
        if isinstance(page, NotFound) or not body:
            status, body = 404, message_page(base, "There is no page here.")
        await _send_page(stream, request, status, body)

    async def _asset(self, stream: trio.abc.Stream, request: Request, name: str) -> None:
        headers = [
            ("Cache-Control", f"public, max-age={ASSET_MAX_AGE_SECONDS}, immutable"),
            ("X-Content-Type-Options", "nosniff"),
        ]
        await respond(
            stream, 200, _ASSETS[name], ASSETS[name], headers,
            send_body=request.method != "HEAD",
        )  # fmt: skip

    # -- the relay page -------------------------------------------------------------------

    async def _home(
        self, request: Request, page: Home, community_id: int, base: dict[str, Any]
    ) -> str:
        listed: list[dict[str, Any]] = []
        total = 0
        members_only = self.access_of(community_id).members_only
        if self.public_read and not members_only:
            offset = (page.page - 1) * REPOS_PER_PAGE
            rows, total = await self.registry.listing(
                community_id, self.relay_pubkey, offset, REPOS_PER_PAGE
            )
            for row in rows:
                announcement = parse_event(orjson.loads(row.announcement))
                state = parse_event(orjson.loads(row.state)) if row.state else None
                listed.append(
                    {
                        "repo_id": row.repo_id,
                        "name": announcement.first_tag_value("name") or row.repo_id,
                        "owner": row.owner,
                        "description": announcement.first_tag_value("description") or "",
                        "pushed_at": _pushed_at(state),
                        "path": f"/{hex_to_npub(row.owner)}/{row.repo_id}.git",
                    }
                )
        pages = max(1, -(-total // REPOS_PER_PAGE))
        template = _env.get_template("home.html")
        return template.render(
            **base,
            websocket_url=f"{'wss' if self.https else 'ws'}://{_host(request)}/",
            repos=listed,
            total=total,
            page=page.page,
            pages=pages,
            public_read=self.public_read,
            members_only=members_only,
        )

    # -- a repository's page ----------------------------------------------------------------

    async def _repo(
        self, request: Request, page: RepoPage, community_id: int, base: dict[str, Any]
    ) -> tuple[int, str]:
        """(status, page); an empty page for a repository not hosted here (or private)."""
        if not self.public_read or self.access_of(community_id).members_only:
            return 404, ""
        repo = await self.git.repos.hosted(community_id, page.repo_id)
        if repo is None or page.owner not in repo.maintainers:
            return 404, ""
        try:
            view = await self._git_view(community_id, repo)
        except RepoNotFound:
            return 404, ""
        except HttpError as busy:  # every git slot is taken
            log.info("repository page of %s/%s: %s", repo.owner, repo.repo_id, busy)
            reason = "The relay is busy with other git work; try again in a few seconds."
            return busy.status, message_page(base, reason, title="Busy")
        except (StoreError, model.InvalidManifest, GitFailed, ResourceLimit) as exc:
            log.error("repository page of %s/%s failed: %s", repo.owner, repo.repo_id, exc)
            reason = "The repository could not be read just now; try again shortly."
            return 503, message_page(base, reason, title="Unavailable")
        threads = await read_threads(self.store, community_id, repo)
        return 200, self._render_repo(request, repo, view, threads, base)

    async def _git_view(self, community_id: int, repo: HostedRepo) -> GitView:
        git = self.git
        key = model.pointer_key(community_id, repo.owner, repo.repo_id)
        async with git.slot(), scratch_dir(git.scratch) as tmp:
            bare = tmp / "repo.git"
            bare.mkdir()
            ws = await hydrate_into(bare, git.objects, key, git.limits, git.cache)
            return await read_view(ws, git.limits.timeout_seconds)

    def _render_repo(
        self,
        request: Request,
        repo: HostedRepo,
        view: GitView,
        threads: list[Thread],
        base: dict[str, Any],
    ) -> str:
        announcement = repo.announcement
        npub = hex_to_npub(repo.owner)
        scheme = "https" if self.https else "http"
        host = _host(request)
        clones = [
            Clone(f"{scheme}://{host}/{npub}/{repo.repo_id}.git", "npub"),
            Clone(f"{scheme}://{host}/git/{repo.owner}/{repo.repo_id}", "hex"),
        ]
        workshop = f"{GITWORKSHOP}/{npub}/{repo.repo_id}"
        others = sorted(repo.maintainers - {repo.owner})
        return _env.get_template("repo.html").render(
            **base,
            repo_id=repo.repo_id,
            name=announcement.first_tag_value("name") or repo.repo_id,
            description=announcement.first_tag_value("description") or "",
            owner=repo.owner,
            maintainers=[repo.owner, *others],
            clones=clones,
            view=view,
            threads=[
                {
                    "thread": t,
                    "label": _THREAD_LABELS[t.kind],
                    "link": f"{workshop}/{_THREAD_PATHS[t.kind]}/{hex_to_note(t.id)}",
                }
                for t in threads
            ],
            workshop=workshop,
        )


_THREAD_LABELS = {kinds.ISSUE: "issue", kinds.PATCH: "patch", kinds.PULL_REQUEST: "pull request"}
# gitworkshop.dev's paths of a thread under the repository's.
_THREAD_PATHS = {kinds.ISSUE: "issues", kinds.PATCH: "prs", kinds.PULL_REQUEST: "prs"}


def message_page(base: dict[str, Any], reason: str, title: str = "Not found") -> str:
    return _env.get_template("message.html").render(**base, reason=reason, title=title)


def _pushed_at(state: Event | None) -> int | None:
    """When the repository was last pushed: its relay-signed state's time, when the state
    names any ref (the first state, made at announcement, names none)."""
    if state is None or not any(t and t[0].startswith("refs/") for t in state.tags):
        return None
    return state.created_at


def _host(request: Request) -> str:
    """The host (and port) the browser used, for URLs to show; the listener has resolved it
    to this community, so it is a valid host name."""
    raw = request.header("host").strip().lower()
    return raw if normalize_host(raw) is not None else "localhost"


async def _send_page(stream: trio.abc.Stream, request: Request, status: int, body: str) -> None:
    data = body.encode()
    etag = f'"{hashlib.sha256(data).hexdigest()[:32]}"'
    headers = [*PAGE_HEADERS, ("Cache-Control", "no-cache"), ("ETag", etag)]
    if status == 503:  # every git slot was taken, or the object store did not answer
        headers.append(("Retry-After", RETRY_AFTER_SECONDS))
    if status == 200 and etag in request.header("if-none-match"):
        await respond(stream, 304, data, HTML_TYPE, headers, send_body=False)
        return
    await respond(stream, status, data, HTML_TYPE, headers, send_body=request.method != "HEAD")
