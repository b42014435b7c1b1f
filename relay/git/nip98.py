"""NIP-98 HTTP authentication for git routes.

git sends one `Authorization` header (from `http.extraHeader`) on every request of a
fetch or push, so the token is scoped to the repository, not to one request: the signed
`u` must be the scheme, the request's own host and the repo root path (no query, no
service suffix), and `created_at` must be within the window. The `method` tag is not
compared, since one token serves the GET and the POST of a push.
"""

from __future__ import annotations

import base64
import binascii
import time
from urllib.parse import urlsplit

import orjson
from coincurve import PrivateKey

from relay.events import kinds
from relay.events.model import Event, InvalidEvent, check_id_and_signature, parse_event, sign_event
from relay.protocol.hosts import normalize_host

DEFAULT_WINDOW_SECONDS = 60
MAX_HEADER_BYTES = 16 * 1024


class Unauthorized(Exception):
    """The request carries no usable NIP-98 token; the message says why."""


def repo_url(scheme: str, host: str, repo_root: str) -> str:
    return f"{scheme}://{host}{repo_root}"


def authenticate(
    header: str,
    *,
    scheme: str,
    host: str,
    repo_root: str,
    now: int | None = None,
    window: int = DEFAULT_WINDOW_SECONDS,
) -> str:
    """The pubkey that signed a valid token for this repo; raises Unauthorized otherwise."""
    if not header:
        raise Unauthorized("authentication required: send a NIP-98 Authorization header")
    if len(header) > MAX_HEADER_BYTES:
        raise Unauthorized("Authorization header too large")
    auth_scheme, _, token = header.strip().partition(" ")
    if auth_scheme.lower() != "nostr" or not token:
        raise Unauthorized("Authorization must use the Nostr scheme")
    event = _decode(token.strip())
    if event.kind != kinds.HTTP_AUTH:
        raise Unauthorized(f"the token must be a kind {kinds.HTTP_AUTH} event")
    current = int(time.time()) if now is None else now
    if abs(current - event.created_at) > window:
        raise Unauthorized(f"the token must be created within {window} s of now")
    signed = urlsplit(event.first_tag_value("u") or "")
    if (
        signed.scheme != scheme
        or normalize_host(signed.netloc) != normalize_host(host)
        or signed.path.rstrip("/") != repo_root.rstrip("/")
        or signed.query
    ):
        raise Unauthorized(f"the token is not for {repo_url(scheme, host, repo_root)}")
    try:
        check_id_and_signature(event)
    except InvalidEvent as exc:
        raise Unauthorized(f"bad token: {exc}") from None
    return event.pubkey


def _decode(token: str) -> Event:
    padded = token + "=" * (-len(token) % 4)
    try:
        raw = base64.b64decode(padded, altchars=b"-_" if ("-" in token or "_" in token) else None)
        return parse_event(orjson.loads(raw))
    except (binascii.Error, ValueError, orjson.JSONDecodeError, InvalidEvent) as exc:
        raise Unauthorized(f"the token is not a base64 Nostr event: {exc}") from None


def make_token(key: PrivateKey, url: str, method: str = "GET", now: int | None = None) -> str:
    """The Authorization header value for `url` (used by `relay token` and tests)."""
    event = sign_event(
        key,
        kind=kinds.HTTP_AUTH,
        tags=[["u", url], ["method", method]],
        created_at=int(time.time()) if now is None else now,
    )
    return "Nostr " + base64.b64encode(event.to_json().encode()).decode()
