"""The relay's one TCP listener: a websocket upgrade, NIP-11, health, a web page, git, or 404.

The community is resolved from the Host header before anything else; an unknown host gets
404 and no upgrade. The operator endpoints (/healthz, /readyz) answer on any host, since
orchestrators probe pods by address. OPTIONS on any path of a known host, git's included,
is a CORS preflight: 204 (every response carries the CORS headers, see `relay.http`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import orjson
import trio
import trio_websocket

from relay.git.routes import is_git_path
from relay.http import (
    PREFLIGHT_MAX_AGE_SECONDS,
    HttpError,
    Request,
    answering,
    read_request,
    refuse,
    respond,
)
from relay.metrics import CONTENT_TYPE as METRICS_TYPE
from relay.metrics import labelled
from relay.protocol.hosts import normalize_host
from relay.server.clientaddr import ClientAddress, resolve_client
from relay.server.management import is_management
from relay.server.nip11 import information_document, members_only
from relay.server.ratelimit import rate_limited
from relay.server.upgrade import check_upgrade
from relay.server.websocket import ClientConnection
from relay.server.wsstream import CLOSE_HANDSHAKE_SECONDS, RECEIVE_BYTES, WebSocketStream
from relay.web.routes import page_route

if TYPE_CHECKING:
    from relay.wiring import Relay

log = logging.getLogger(__name__)

NIP11_TYPE = "application/nostr+json"
# Messages trio-websocket may parse ahead of the relay before it stops reading the socket
# (TCP then holds the client back); at most this many times RELAY_MAX_MESSAGE_BYTES.
QUEUED_MESSAGES = 16
HANDSHAKE_SECONDS = 10.0
# Requests one connection may make before it is closed (keep-alive; git makes two or three).
MAX_REQUESTS_PER_CONNECTION = 100
PREFLIGHT_HEADERS = [("Access-Control-Max-Age", str(PREFLIGHT_MAX_AGE_SECONDS))]
# A proxy the relay was not told about sends its headers on every request: warn once.
_untrusted_proxy_warned = False


async def handle_stream(relay: Relay, stream: trio.SocketStream) -> None:
    """Serve the connection's requests in turn: HTTP/1.1 keep-alive, up to
    MAX_REQUESTS_PER_CONNECTION, while each answer says the connection can go on (a body
    read whole, no `Connection: close`); a websocket upgrade takes it over for good."""
    peer = peer_ip(stream)
    client = ClientAddress(ip=peer)
    try:
        leftover = b""
        for served in range(MAX_REQUESTS_PER_CONNECTION):
            request = await read_request(stream, leftover, idle=served > 0)
            if request is None:
                break
            request.persistent &= served + 1 < MAX_REQUESTS_PER_CONNECTION
            # Per request: a proxy may send several clients' requests on one connection.
            client = client_address(relay, peer, request)
            with answering(request):
                await route(relay, stream, request, client)
            if not request.kept_alive:
                break
            leftover = request.leftover()
    except HttpError as exc:
        await _try_respond(stream, exc)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except Exception:
        # One connection's failure must never take the listener down with it.
        log.exception("connection handler failed (client %s)", client.ip)
    finally:
        await stream.aclose()


def peer_ip(stream: trio.SocketStream) -> str:
    """The TCP peer's address; behind a proxy, the proxy's (see `client_address`)."""
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return "unknown"


def client_address(relay: Relay, peer: str, request: Request) -> ClientAddress:
    """Whom `request` comes from, as rate limits count and logs name it: the peer, or the
    client a proxy in RELAY_TRUSTED_PROXIES names (relay.server.clientaddr)."""
    settings = relay.settings
    client = resolve_client(
        peer, request.headers, settings.trusted_proxies, settings.client_address_header
    )
    if client.untrusted_proxy:
        _warn_untrusted_proxy(peer, client.ignored)
    return client


def _warn_untrusted_proxy(peer: str, header: str | None) -> None:
    global _untrusted_proxy_warned
    if _untrusted_proxy_warned:
        return
    _untrusted_proxy_warned = True
    log.warning(
        "a request from %s carried a %s header, ignored: %s is not in RELAY_TRUSTED_PROXIES."
        " If it is a reverse proxy, list its address or network there; until then every"
        " client it forwards has its address and they share one rate limit (logged once)",
        peer, header, peer,
    )  # fmt: skip


async def _try_respond(stream: trio.abc.Stream, refusal: HttpError) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await refuse(stream, refusal)


async def route(
    relay: Relay, stream: trio.SocketStream, request: Request, client: ClientAddress
) -> None:
    if request.path == "/healthz" and request.method == "GET":
        await respond(stream, 200, b"ok\n")
        return
    if request.path == "/metrics" and request.method == "GET":
        await respond(stream, 200, await scrape(relay), METRICS_TYPE)
        return
    if request.path == "/readyz" and request.method == "GET":
        ready, checks = await relay.readiness()
        body = orjson.dumps({"ready": ready, "checks": checks})
        await respond(stream, 200 if ready else 503, body, "application/json")
        return
    host = normalize_host(request.header("host"))
    community_id = await relay.communities.resolve(host) if host else None
    if host is None or community_id is None:
        await respond(stream, 404, b"unknown host\n")
        return
    if relay.moderation.ip_blocked(community_id, client.ip):
        request.persistent = False
        await respond(stream, 403, b"blocked: this address is blocked here\n")
        return
    if request.method == "OPTIONS":
        await respond(stream, 204, b"", extra_headers=PREFLIGHT_HEADERS)
        return
    page = page_route(request) if relay.settings.web_pages else None
    if page is not None:
        await relay.web.handle(stream, request, page, community_id, nip11(relay, community_id))
        return
    if is_git_path(request.path):
        await relay.git.handle(stream, request, community_id, host, client.ip)
        return
    if request.path != "/":
        await respond(stream, 404, b"not found\n")
        return
    if is_management(request):
        await relay.moderation.handle(stream, request, community_id, host)
    elif request.wants_websocket:
        request.persistent = False  # taken over, or refused: never a next request
        if relay.shutdown.is_set():
            await respond(stream, 503, b"shutting down\n", extra_headers=[("Retry-After", "1")])
            return
        limited = rate_limited(client, relay.settings.rate_limit_loopback)
        if limited and not await relay.limiter.allow("connect", client.ip):
            await respond(stream, 429, b"rate-limited: too many new connections\n")
            return
        await serve_websocket(relay, stream, request, community_id, host, client)
    elif request.method in ("GET", "HEAD") and NIP11_TYPE in request.header("accept"):
        doc = orjson.dumps(nip11(relay, community_id))
        # `/` answers NIP-11 or the relay page by Accept.
        await respond(stream, 200, doc, NIP11_TYPE, [("Vary", "Accept")])
    else:
        await respond(
            stream,
            404,
            b"this is a Nostr relay: connect with a websocket, or ask for "
            b"Accept: application/nostr+json\n",
        )


async def scrape(relay: Relay) -> bytes:
    """This relay's metrics; with several workers, every worker's (see relay.metrics)."""
    if relay.workers is None:
        return relay.metrics.render()
    gathered = await relay.workers.gather_metrics()
    if not gathered:  # the parent did not answer: this worker's own, labelled the same way
        gathered = {relay.workers.index: relay.metrics.render()}
    return labelled(gathered)


def nip11(relay: Relay, community_id: int) -> dict[str, Any]:
    """The community's NIP-11 document (NIP-86's changerelayname and friends applied)."""
    doc = information_document(relay.settings, relay.pubkey)
    doc.update(relay.settings.rate.nip11())
    doc.update(relay.moderation.info(community_id))
    if relay.moderation.access(community_id).members_only:
        members_only(doc)
    return doc


async def serve_websocket(
    relay: Relay,
    stream: trio.SocketStream,
    request: Request,
    community_id: int,
    host: str,
    address: ClientAddress,
) -> None:
    try:
        frames = check_upgrade(request)
    except HttpError as refused:
        await refuse(stream, refused)
        return
    wire = WebSocketStream(stream, request.hand_over(), frames, relay.limits.max_message_bytes)
    del frames
    ws: trio_websocket.WebSocketConnection | None = None
    try:
        async with trio.open_nursery() as nursery:  # trio-websocket's reader task
            # The request was checked above, so trio-websocket's handshake succeeds; the
            # deadline only guards against a client that stops in the middle of it.
            with trio.move_on_after(HANDSHAKE_SECONDS):
                ws_request = await trio_websocket.wrap_server_stream(
                    nursery, wire, message_queue_size=QUEUED_MESSAGES,
                    max_message_size=relay.limits.max_message_bytes,
                    receive_buffer_size=RECEIVE_BYTES,
                )  # fmt: skip
                ws = await ws_request.accept()
            try:
                if ws is not None:
                    names = await relay.communities.hosts_of(community_id)
                    client = ClientConnection(
                        relay, ws, wire, community_id, host, address.ip, names,
                        rate_limited=rate_limited(address, relay.settings.rate_limit_loopback),
                    )  # fmt: skip
                    await client.run()
            finally:
                with trio.move_on_after(2 * CLOSE_HANDSHAKE_SECONDS) as closing:
                    closing.shield = True
                    if ws is not None:
                        await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await wire.finish(ws.closed if ws is not None else None)
