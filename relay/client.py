"""The client side of `relay`: the user's key, NIP-34 announcements published over the
relay's websocket, and a git credential helper answering with NIP-98 tokens.

`relay whoami`, `relay token`, `relay repo create|list|delete` and `relay git-credential`
run here. They talk to a relay as any Nostr client does (a websocket, EVENT/OK, REQ/EOSE)
and need none of the relay's settings. The pure parts (keys, URLs, tags, the credential
protocol) are separate from the two websocket exchanges (`publish`, `query`).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TextIO, TypeVar
from urllib.parse import urlsplit

import orjson
import trio
import trio_websocket
from coincurve import PrivateKey

from relay.errors import EXIT_CONFIG, OperatorError
from relay.events import kinds
from relay.events.model import Event, InvalidEvent, is_hex, parse_event, sign_event
from relay.git.model import InvalidName, normalize_repo_id
from relay.git.nip98 import make_token
from relay.keys import pubkey_hex
from relay.protocol.bech32 import decode_key, hex_to_npub, npub_to_hex

DEFAULT_RELAY_URL = "ws://localhost:7777"
TIMEOUT_SECONDS = 10.0
KEY_HINT = "set NOSTR_SECRET_KEY (hex or nsec) or pass --key-file"
# The user name git sends with a token as its password (HTTP Basic); the relay reads the
# password as a NIP-98 token.
CREDENTIAL_USERNAME = "nostr"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_WHITESPACE = re.compile(r"\s+")
T = TypeVar("T")


class UsageError(OperatorError):
    """An argument or key the command cannot use; nothing was sent."""

    exit_status = EXIT_CONFIG


class RelayError(OperatorError):
    """The relay could not be reached, did not answer in time, or refused."""


# -- the user's key --------------------------------------------------------------------------


def parse_secret(raw: str) -> PrivateKey | None:
    """The key in `raw` (64 hex or an nsec, surrounding whitespace ignored), else None."""
    text = raw.strip()
    secret = decode_key("nsec", text) if text.startswith("nsec1") else text.lower()
    if secret is None or not is_hex(secret, 64):
        return None
    try:
        return PrivateKey(bytes.fromhex(secret))
    except ValueError:  # zero, or not below the curve order
        return None


def load_key(key_file: str | None, environ: Mapping[str, str] = os.environ) -> PrivateKey | None:
    """The user's key: from `key_file` when given, else $NOSTR_SECRET_KEY; None when neither
    is set. A key that is given but cannot be used is a UsageError."""
    if key_file:
        try:
            raw = Path(key_file).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read --key-file: {exc.strerror or exc}") from None
    else:
        raw = environ.get("NOSTR_SECRET_KEY", "")
        if not raw.strip():
            return None
    key = parse_secret(raw)
    if key is None:
        raise UsageError(f"not a secret key: {KEY_HINT}")
    return key


def require_key(key_file: str | None, environ: Mapping[str, str] = os.environ) -> PrivateKey:
    key = load_key(key_file, environ)
    if key is None:
        raise UsageError(KEY_HINT)
    return key


def parse_pubkey(value: str) -> str:
    """The hex of a public key given as an npub or as 64 hex."""
    text = value.strip()
    pubkey = npub_to_hex(text) if text.startswith("npub1") else text.lower()
    if pubkey is None or not is_hex(pubkey, 64):
        raise UsageError(f"{value!r} is not a public key (npub or 64 hex)")
    return pubkey


def whoami_lines(key: PrivateKey) -> list[str]:
    pubkey = pubkey_hex(key)
    return [f"pubkey: {pubkey}", f"npub: {hex_to_npub(pubkey)}"]


# -- the relay's URLs ------------------------------------------------------------------------


def relay_url(value: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The relay's websocket URL: `value`, else $NOSTR_RELAY_URL, else ws://localhost:7777."""
    url = (value or environ.get("NOSTR_RELAY_URL", "") or DEFAULT_RELAY_URL).strip()
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("ws", "wss") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        valid = False
    if not valid:
        raise UsageError(f"the relay URL must be a ws:// or wss:// URL with a host, got {url!r}")
    return url


def http_base(url: str) -> str:
    """`http[s]://host[:port]` of the relay at websocket URL `url` (git is served on the
    websocket's port): http for ws://, https for wss://, the scheme's own port left out."""
    parts = urlsplit(url)
    scheme = "https" if parts.scheme == "wss" else "http"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    return f"{scheme}://{host}" + (f":{port}" if port and port != _DEFAULT_PORTS[scheme] else "")


def clone_urls(url: str, owner: str, name: str) -> tuple[str, str]:
    """This relay's two URLs of repository `name` of `owner` (hex): the npub form, then the
    hex form."""
    base = http_base(url)
    return f"{base}/{hex_to_npub(owner)}/{name}.git", f"{base}/git/{owner}/{name}.git"


def is_this_relay(clone_url: str, url: str) -> bool:
    """Whether `clone_url` is served by the relay at websocket URL `url` (same scheme, host
    and port)."""
    try:
        ours, theirs = urlsplit(http_base(url)), urlsplit(clone_url.strip())
        return (
            theirs.scheme == ours.scheme
            and theirs.hostname == ours.hostname
            and (theirs.port or _DEFAULT_PORTS.get(theirs.scheme))
            == (ours.port or _DEFAULT_PORTS[ours.scheme])
        )
    except ValueError:
        return False


# -- NIP-34 ----------------------------------------------------------------------------------


def repo_name(raw: str) -> str:
    """A repo id the relay accepts (a trailing `.git` dropped); UsageError otherwise."""
    try:
        return normalize_repo_id(raw)
    except InvalidName as exc:
        raise UsageError(f"{raw!r}: {exc}") from None


def announcement_tags(
    name: str,
    owner: str,
    url: str,
    description: str | None = None,
    maintainers: Sequence[str] = (),
) -> list[list[str]]:
    """The tags of a kind 30617 asking the relay at `url` to host `name` (GRASP-01: its
    `clone` tag lists the relay's URLs of it)."""
    tags = [["d", name], ["name", name]]
    if description is not None:
        tags.append(["description", description])
    tags.append(["clone", *clone_urls(url, owner, name)])
    tags.append(["relays", url])
    if maintainers:
        tags.append(["maintainers", *maintainers])
    return tags


def coordinate(owner: str, name: str) -> str:
    return f"{kinds.REPO_ANNOUNCEMENT}:{owner}:{name}"


def deletion_tags(owner: str, name: str, announcement_id: str | None = None) -> list[list[str]]:
    """The tags of a NIP-09 deletion of the announcement of `name`."""
    tags = [["a", coordinate(owner, name)]]
    if announcement_id is not None:
        tags.append(["e", announcement_id])
    return tags


def listing_line(event: Event, url: str) -> str:
    """`repo list`'s line for an announcement: name, owner npub, clone URL (the first one
    this relay serves, else the first), description; separated by tabs, on one line."""
    clones = [value for tag in event.tags if tag and tag[0] == "clone" for value in tag[1:]]
    ours = [clone for clone in clones if is_this_relay(clone, url)]
    fields = [
        event.first_tag_value("d") or "",
        hex_to_npub(event.pubkey),
        (ours or clones or [""])[0],
        event.first_tag_value("description") or "",
    ]
    return "\t".join(_WHITESPACE.sub(" ", field).strip() for field in fields)


# -- talking to the relay --------------------------------------------------------------------


async def _exchange(
    url: str, timeout: float, talk: Callable[[trio_websocket.WebSocketConnection], Awaitable[T]]
) -> T:
    """Open a websocket to `url`, run `talk` on it, close it; every failure is a RelayError
    of one line, and all of it must be done within `timeout` seconds. Once `talk` has its
    answer, a close that goes wrong changes nothing."""
    done: list[T] = []
    try:
        with trio.fail_after(timeout):
            async with trio_websocket.open_websocket_url(
                url, connect_timeout=timeout, disconnect_timeout=1, max_message_size=1 << 24
            ) as ws:
                done.append(await talk(ws))
    except (
        trio.TooSlowError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed, OSError
    ) as exc:  # fmt: skip
        if done:
            return done[0]
        raise connection_failure(url, timeout, exc) from None
    return done[0]


def connection_failure(url: str, timeout: float, exc: Exception) -> RelayError:
    if isinstance(exc, trio.TooSlowError | trio_websocket.ConnectionTimeout):
        return RelayError(f"no answer from {url} within {timeout:g} s")
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return RelayError(f"{url} refused the websocket: HTTP {exc.status_code}")
    if isinstance(exc, trio_websocket.ConnectionClosed):
        why = exc.reason
        said = f": {why.reason}" if why is not None and why.reason else ""
        code = why.code if why is not None else "none"
        return RelayError(f"{url} closed the connection (code {code}{said})")
    return RelayError(f"cannot reach {url}: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    """What stopped a connection, in a few words: the innermost OS error's own words
    (trio's "all attempts to connect ... failed" keeps each attempt's error inside)."""
    found: list[OSError] = []
    seen: set[int] = set()

    def walk(error: BaseException | None) -> None:
        if error is None or id(error) in seen:
            return
        seen.add(id(error))
        if isinstance(error, OSError):
            found.append(error)
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        walk(error.__cause__)

    walk(exc)
    for error in reversed(found):
        if error.strerror:
            return str(error.strerror)
    return str(found[0]) if found and str(found[0]) else "the websocket handshake failed"


async def next_frame(ws: trio_websocket.WebSocketConnection) -> list[Any]:
    """The next frame that is a JSON array; other frames are skipped."""
    while True:
        try:
            frame = orjson.loads(await ws.get_message())
        except orjson.JSONDecodeError:
            continue
        if isinstance(frame, list) and frame and isinstance(frame[0], str):
            return frame


async def _publish_on(ws: trio_websocket.WebSocketConnection, event: Event) -> str:
    await ws.send_message(orjson.dumps(["EVENT", event.to_dict()]).decode())
    while True:
        frame = await next_frame(ws)
        if frame[0] == "OK" and len(frame) >= 3 and frame[1] == event.id:
            message = str(frame[3]) if len(frame) > 3 else ""
            if frame[2] is not True:
                raise RelayError(message or "the relay refused the event")
            return message


async def _query_on(ws: trio_websocket.WebSocketConnection, flt: dict[str, Any]) -> list[Event]:
    sub_id = "relay-cli"
    await ws.send_message(orjson.dumps(["REQ", sub_id, flt]).decode())
    events: list[Event] = []
    while True:
        frame = await next_frame(ws)
        if len(frame) < 2 or frame[1] != sub_id:
            continue
        if frame[0] == "EOSE":
            await ws.send_message(orjson.dumps(["CLOSE", sub_id]).decode())
            return events
        if frame[0] == "CLOSED":
            raise RelayError(str(frame[2]) if len(frame) > 2 else "the relay closed the query")
        if frame[0] == "EVENT" and len(frame) > 2:
            try:
                events.append(parse_event(frame[2]))
            except InvalidEvent:
                continue


async def publish(url: str, event: Event, timeout: float = TIMEOUT_SECONDS) -> str:
    """Send `event` and wait for its OK; the relay's message. OK false is a RelayError
    carrying the relay's message."""
    return await _exchange(url, timeout, lambda ws: _publish_on(ws, event))


async def query(url: str, flt: dict[str, Any], timeout: float = TIMEOUT_SECONDS) -> list[Event]:
    """The stored events matching `flt`, up to EOSE."""
    return await _exchange(url, timeout, lambda ws: _query_on(ws, flt))


# -- commands --------------------------------------------------------------------------------


def whoami(key_file: str | None) -> None:
    for line in whoami_lines(require_key(key_file)):
        print(line)


def token(url: str, key_file: str | None) -> None:
    """`relay token URL`: the Authorization header value for a git repository URL."""
    print(make_token(require_key(key_file), url.rstrip("/")))


def repo_create(
    name: str,
    *,
    description: str | None,
    maintainers: Iterable[str],
    relay: str | None,
    key_file: str | None,
) -> None:
    """Announce `name` as hosted by the relay; prints its clone URL (npub form)."""
    repo = repo_name(name)
    listed = [parse_pubkey(m) for m in maintainers]
    url = relay_url(relay)
    key = require_key(key_file)
    owner = pubkey_hex(key)
    event = sign_event(
        key,
        kind=kinds.REPO_ANNOUNCEMENT,
        tags=announcement_tags(repo, owner, url, description, listed),
        created_at=int(time.time()),
    )
    trio.run(publish, url, event)
    print(clone_urls(url, owner, repo)[0])


def repo_list(*, owner: str | None, relay: str | None, key_file: str | None) -> None:
    """One line per announcement of `owner` (default: the user's key if set, else all)."""
    url = relay_url(relay)
    if owner is not None:
        author: str | None = parse_pubkey(owner)
    else:
        key = load_key(key_file)
        author = pubkey_hex(key) if key is not None else None
    flt: dict[str, Any] = {"kinds": [kinds.REPO_ANNOUNCEMENT]}
    if author is not None:
        flt["authors"] = [author]
    found = trio.run(query, url, flt)
    for event in sorted(found, key=lambda e: (e.first_tag_value("d") or "", e.pubkey)):
        print(listing_line(event, url))


def repo_delete(name: str, *, relay: str | None, key_file: str | None) -> None:
    """Publish a NIP-09 deletion of the user's announcement of `name`."""
    repo = repo_name(name)
    url = relay_url(relay)
    key = require_key(key_file)
    owner = pubkey_hex(key)

    async def delete(ws: trio_websocket.WebSocketConnection) -> Event | None:
        flt = {"kinds": [kinds.REPO_ANNOUNCEMENT], "authors": [owner], "#d": [repo]}
        current = max(await _query_on(ws, flt), key=lambda e: e.created_at, default=None)
        # A deletion removes the versions up to its own created_at (NIP-09).
        now = max(int(time.time()), current.created_at if current else 0)
        tags = deletion_tags(owner, repo, current.id if current else None)
        await _publish_on(ws, sign_event(key, kind=kinds.DELETION, tags=tags, created_at=now))
        return current

    deleted = trio.run(partial(_exchange, url, TIMEOUT_SECONDS, delete))
    if deleted is None:
        print(f"no announcement of {repo} by you was stored; published its deletion anyway")
    else:
        print(f"deleted {repo}: the relay released the name and stops serving its clones")


# -- git credential helper -------------------------------------------------------------------


def read_credential_request(text: str | Iterable[str]) -> dict[str, str]:
    """git's `key=value` lines up to a blank line or the end (`git help credential`); lines
    without `=` are skipped, and a key given twice keeps its last value."""
    lines = text.splitlines() if isinstance(text, str) else text
    fields: dict[str, str] = {}
    for line in lines:
        line = line.rstrip("\r\n")
        if not line:
            break
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    return fields


def credential_url(fields: Mapping[str, str]) -> str | None:
    """The repository URL a token is signed for: git passes the path only with
    credential.useHttpPath; without it (or for another protocol) there is none."""
    protocol, host = fields.get("protocol", ""), fields.get("host", "")
    path = fields.get("path", "").strip("/")
    if protocol not in ("http", "https") or not host or not path:
        return None
    return f"{protocol}://{host}/{path}"


def credential_answer(
    key: PrivateKey, fields: Mapping[str, str], now: int | None = None
) -> str | None:
    """What the helper prints for `get`: the user name and a NIP-98 token (the base64 of a
    kind 27235 event, as `relay token` makes it) as the password; None when git did not
    ask for a repository URL."""
    url = credential_url(fields)
    if url is None:
        return None
    password = make_token(key, url, "GET", now).removeprefix("Nostr ")
    return f"username={CREDENTIAL_USERNAME}\npassword={password}\n"


def git_credential(
    action: str, key_file: str | None, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout
) -> None:
    """`relay git-credential get|store|erase`: a git credential helper. Only `get` answers,
    and only on stdout; nothing else is ever written there (git parses it)."""
    fields = read_credential_request(iter(stdin.readline, ""))
    if action != "get" or credential_url(fields) is None:
        return
    answer = credential_answer(require_key(key_file), fields)
    if answer is not None:
        stdout.write(answer)
        stdout.flush()
