"""Which git request is this? The URL forms of a hosted repository, parsed once (sans-IO).

  GET  <repo>/info/refs?service=git-upload-pack|git-receive-pack   (the advertisement)
  POST <repo>/git-upload-pack | <repo>/git-receive-pack             (the service itself)

where <repo> is /git/<owner-hex>/<repo>[.git] or /<npub>/<repo>.git. Everything a handler
needs is in the GitRoute; anything else is an HttpError with the status to answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from relay.git import model
from relay.http import HttpError
from relay.protocol.bech32 import npub_to_hex

UPLOAD_PACK = "git-upload-pack"
RECEIVE_PACK = "git-receive-pack"
SERVICES = (UPLOAD_PACK, RECEIVE_PACK)
ADVERTISEMENT = "info/refs"
# The metrics label of a request whose route did not parse: labels stay a closed set.
UNKNOWN_SERVICE = "unknown"


# What git may ask for in the Git-Protocol header (`version=2`, `:`-separated key=value
# pairs): passed to git as GIT_PROTOCOL, which git itself parses; anything else is dropped.
_PROTOCOL = re.compile(r"^[A-Za-z0-9=:._-]{1,256}$")


def git_protocol(header: str) -> str | None:
    """The Git-Protocol request header as GIT_PROTOCOL for git, or None when absent or
    not the shape git sends."""
    value = header.strip()
    return value if _PROTOCOL.fullmatch(value) else None


def wants_v2(protocol: str | None) -> bool:
    return protocol is not None and "version=2" in protocol.split(":")


@dataclass(frozen=True, slots=True)
class GitRoute:
    owner: str  # hex
    repo_id: str  # normalized
    service: str  # UPLOAD_PACK or RECEIVE_PACK
    advertise: bool  # GET info/refs (the ref advertisement), else the service's POST
    repo_root: str  # the URL path of the repo, as signed in NIP-98 tokens

    @property
    def is_push(self) -> bool:
        return self.service == RECEIVE_PACK


def is_git_path(path: str) -> bool:
    return path.startswith("/git/") or (path.startswith("/npub1") and ".git/" in path)


def parse_route(method: str, path: str, query: str) -> GitRoute:
    """The route of a git request; HttpError 400 (unusable name or service), 404 (no such
    route) or 405 (wrong method)."""
    owner, repo_id, action, root = _locate(path)
    if action == ADVERTISEMENT:
        if method not in ("GET", "HEAD"):
            raise HttpError(405, "use GET for info/refs")
        service = dict(parse_qsl(query)).get("service", "")
        if service not in SERVICES:
            raise HttpError(400, "unsupported service: use smart HTTP (git 1.6.6 or newer)")
        return GitRoute(owner, repo_id, service, True, root)
    if method != "POST":
        raise HttpError(405, f"use POST for {action}")
    return GitRoute(owner, repo_id, action, False, root)


def service_label(method: str, path: str, query: str) -> str:
    """The service a request asked for, for metrics: one of SERVICES or UNKNOWN_SERVICE."""
    try:
        return parse_route(method, path, query).service
    except HttpError:
        return UNKNOWN_SERVICE


def _locate(raw_path: str) -> tuple[str, str, str, str]:
    """(owner hex, repo id, action, repo root) of a git URL path."""
    segments = raw_path.split("/")
    decoded = [unquote(s) for s in segments]
    if any("\0" in s for s in decoded):
        raise HttpError(400, "invalid path")
    if decoded[1] == "git":
        if len(decoded) < 5:
            raise HttpError(404, "not found")
        owner, repo, rest, root = decoded[2], decoded[3], decoded[4:], "/".join(segments[:4])
    else:
        if len(decoded) < 4 or not decoded[2].endswith(".git"):
            raise HttpError(404, "not found")
        owner_hex = npub_to_hex(decoded[1])
        if owner_hex is None:
            raise HttpError(400, "invalid owner: not an npub")
        owner, repo, rest, root = owner_hex, decoded[2], decoded[3:], "/".join(segments[:3])
    action = "/".join(rest)
    if action not in (ADVERTISEMENT, *SERVICES):
        raise HttpError(404, "not found")
    try:
        model.validate_owner(owner)
        repo_id = model.normalize_repo_id(repo)
    except model.InvalidName as exc:
        raise HttpError(400, f"invalid repository: {exc}") from None
    return owner, repo_id, action, root
