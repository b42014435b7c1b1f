"""NIP-98 HTTP authentication for git routes.

git sends one `Authorization` header (from `http.extraHeader`) on every request of a
fetch or push, so the token is scoped to the repository, not to one request. The token
comes as `Authorization: Nostr <base64 event>`, or as the password of HTTP Basic auth
(`Basic base64("<any user>:<base64 event>")`), which is how a git credential helper
(`relay git-credential`) hands it to stock git without a hand-made header. The signed
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
# The answer to a request that needs a token: NIP-98 first, and Basic, which makes stock git
# ask its credential helper (curl reads several challenges from one header field).
CHALLENGE = ("WWW-Authenticate", 'Nostr realm="git", method="GET", Basic realm="nostr"')


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
    aliases: frozenset[str] = frozenset(),
    now: int | None = None,
    window: int = DEFAULT_WINDOW_SECONDS,
) -> str:
    """The pubkey that signed a valid token for this repo; raises Unauthorized otherwise.
    The signed URL may name the request's `host` or any of `aliases` (the other names of
    the community)."""
    if not header:
        raise Unauthorized("authentication required: send a NIP-98 Authorization header")
    if len(header) > MAX_HEADER_BYTES:
        raise Unauthorized("Authorization header too large")
    auth_scheme, _, token = header.strip().partition(" ")
    if auth_scheme.lower() == "basic" and token:
        token = _basic_password(token.strip())
    elif auth_scheme.lower() != "nostr" or not token:
        raise Unauthorized("use the Nostr scheme, or Basic with the token as password")
    event = _decode(token.strip())
    if event.kind != kinds.HTTP_AUTH:
        raise Unauthorized(f"the token must be a kind {kinds.HTTP_AUTH} event")
    current = int(time.time()) if now is None else now
    if abs(current - event.created_at) > window:
        raise Unauthorized(f"the token must be created within {window} s of now")
    signed = urlsplit(event.first_tag_value("u") or "")
    if (
        signed.scheme != scheme
        or normalize_host(signed.netloc) not in {normalize_host(host), *aliases}
        or signed.path.rstrip("/") != repo_root.rstrip("/")
        or signed.query
    ):
        raise Unauthorized(f"the token is not for {repo_url(scheme, host, repo_root)}")
    try:
        check_id_and_signature(event)
    except InvalidEvent as exc:
        raise Unauthorized(f"bad token: {exc}") from None
    return event.pubkey


def _basic_password(credentials: str) -> str:
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise Unauthorized("Basic credentials are not base64 of user:password") from None
    _, colon, password = decoded.partition(":")
    if not colon or not password:
        raise Unauthorized("Basic auth needs the NIP-98 token as its password")
    return password


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
