"""NIP-86 relay management over HTTP, per community, authorized with NIP-98.

`POST /` with `Content-Type: application/nostr+json+rpc` and a body
`{"method": ..., "params": [...]}` is answered `{"result": ..., "error": ...}`. The
`Authorization` header must be a NIP-98 token (kind 27235) signed by an admin of the
community (RELAY_ADMIN_PUBKEYS, or a row of `community_admins`), whose `u` is the relay's
URL on one of the community's host names, `method` POST and `payload` the sha256 of the body.

The sans-IO parts (the call, the token's extra tags, the state and its checks) come first;
then `Moderation`, which keeps each pod's copy of the state in memory: reloaded whole from
Postgres after every change, and on the other pods when told through Redis (a channel of its
own, `<prefix>:moderation`) or, without Redis, every RELOAD_SECONDS.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import ipaddress
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis
import trio
from trio_asyncio import aio_as_trio

from relay.events.model import Event, InvalidEvent, parse_event
from relay.git import nip98
from relay.http import Request, read_decoded_body, respond
from relay.protocol.access import ACCESS_MODES, PUBLIC_ACCESS, Access
from relay.pubsub.redis_bridge import REDIS_ERRORS
from relay.store.moderation import ALLOWED, BANNED, ModerationRows, ModerationStore

if TYPE_CHECKING:
    from relay.server.membership import Membership

log = logging.getLogger(__name__)

RPC_TYPE = "application/nostr+json+rpc"
MAX_BODY_BYTES = 64 * 1024
# Without Redis each pod reads the state again this often; with Redis, this often as well
# as when told (a notice lost while Redis was down is caught up then).
RELOAD_SECONDS = 1.0
RELOAD_WITH_REDIS_SECONDS = 30.0
REDIS_SECONDS = 1.0
# A ban that deletes a pubkey's events deletes them once more after this long: what another
# pod accepted before the ban reached it (within RELOAD_SECONDS) goes too.
PURGE_AGAIN_SECONDS = 2 * RELOAD_SECONDS

METHODS = (
    "supportedmethods",
    "banpubkey",
    "unbanpubkey",
    "listbannedpubkeys",
    "allowpubkey",
    "unallowpubkey",
    "listallowedpubkeys",
    "banevent",
    "allowevent",
    "listbannedevents",
    "changerelayname",
    "changerelaydescription",
    "blockip",
    "unblockip",
    "listblockedips",
    "changerelayaccess",
)


class RpcError(Exception):
    """A call that cannot be carried out; the message is the answer's `error`."""


@dataclass(frozen=True)
class Call:
    method: str
    params: list[Any]


def parse_call(body: bytes) -> Call:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RpcError("the body is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("method"), str):
        raise RpcError('the body must be {"method": <string>, "params": [...]}')
    params = doc.get("params", [])
    if not isinstance(params, list):
        raise RpcError("params must be an array")
    return Call(doc["method"], params)


def hex32(params: list[Any], what: str) -> str:
    value = params[0] if params else None
    if not isinstance(value, str) or len(value) != 64:
        raise RpcError(f"params[0] must be a 32-byte hex {what}")
    try:
        bytes.fromhex(value)
    except ValueError:
        raise RpcError(f"params[0] must be a 32-byte hex {what}") from None
    return value.lower()


def text(params: list[Any], index: int, what: str, *, required: bool = False) -> str:
    if len(params) <= index or params[index] is None:
        if required:
            raise RpcError(f"params[{index}] must be the {what}")
        return ""
    value = params[index]
    if not isinstance(value, str):
        raise RpcError(f"params[{index}] must be a string ({what})")
    return value


def ip_param(params: list[Any]) -> str:
    try:
        return normalize_ip(text(params, 0, "IP address", required=True))
    except ValueError:
        raise RpcError("params[0] must be an IP address") from None


def normalize_ip(value: str) -> str:
    """The canonical text of an address (raises ValueError for anything else)."""
    return ipaddress.ip_address(value.strip().strip("[]")).compressed


def token_event(header: str) -> Event:
    """The event of a `Nostr <base64>` Authorization header (not yet checked)."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "nostr" or not token:
        raise nip98.Unauthorized("send Authorization: Nostr <base64 NIP-98 event>")
    token = token.strip()
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4))
        return parse_event(orjson.loads(raw))
    except (binascii.Error, ValueError, orjson.JSONDecodeError, InvalidEvent) as exc:
        raise nip98.Unauthorized(f"the token is not a base64 Nostr event: {exc}") from None


def authorize(
    header: str,
    body: bytes,
    *,
    scheme: str,
    host: str,
    aliases: frozenset[str],
    now: int | None = None,
    window: int = nip98.DEFAULT_WINDOW_SECONDS,
) -> str:
    """The pubkey that signed a valid NIP-86 token for this request; raises
    nip98.Unauthorized. NIP-98's checks (kind, time window, `u` on a name of the community,
    signature) are `nip98.authenticate`'s, with the relay's root as the URL; here also
    `method` POST and the `payload` tag, which NIP-86 requires."""
    if not header:
        raise nip98.Unauthorized("authentication required: send a NIP-98 Authorization header")
    event = token_event(header)
    if (event.first_tag_value("method") or "").upper() != "POST":
        raise nip98.Unauthorized("the token's method tag must be POST")
    payload = event.first_tag_value("payload")
    if payload is None:
        raise nip98.Unauthorized("the token needs a payload tag (sha256 hex of the body)")
    if payload.lower() != hashlib.sha256(body).hexdigest():
        raise nip98.Unauthorized("the token's payload tag is not the sha256 of the body")
    return nip98.authenticate(
        header, scheme=scheme, host=host, repo_root="/", aliases=aliases, now=now, window=window
    )


@dataclass
class ModerationState:
    """One pod's copy of every community's moderation, built from the rows in Postgres."""

    banned_pubkeys: dict[int, dict[str, str]] = field(default_factory=dict)
    allowed_pubkeys: dict[int, dict[str, str]] = field(default_factory=dict)
    banned_events: dict[int, dict[str, str]] = field(default_factory=dict)
    blocked_ips: dict[int, dict[str, str]] = field(default_factory=dict)
    info: dict[int, dict[str, str]] = field(default_factory=dict)
    # Members-only communities (NIP-43): their mode and members; absent is public.
    access: dict[int, Access] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: ModerationRows) -> ModerationState:
        state = cls()
        for community_id, list_name, pubkey, reason in rows.pubkeys:
            lists = state.banned_pubkeys if list_name == BANNED else state.allowed_pubkeys
            lists.setdefault(community_id, {})[pubkey] = reason
        for community_id, event_id, reason in rows.events:
            state.banned_events.setdefault(community_id, {})[event_id] = reason
        for community_id, ip, reason in rows.ips:
            state.blocked_ips.setdefault(community_id, {})[ip] = reason
        for community_id, name, value in rows.info:
            state.info.setdefault(community_id, {})[name] = value
        members: dict[int, set[str]] = {}
        for community_id, pubkey in rows.members:
            members.setdefault(community_id, set()).add(pubkey)
        for community_id, mode in rows.access:
            state.access[community_id] = Access(mode, frozenset(members.get(community_id, ())))
        return state

    def access_of(self, community_id: int) -> Access:
        return self.access.get(community_id, PUBLIC_ACCESS)

    def refusal(self, community_id: int, event: Event) -> str | None:
        """Why the community refuses `event` (a banned author or event, or an author not on
        its allow-list), or None."""
        if event.pubkey in self.banned_pubkeys.get(community_id, ()):
            return "blocked: this pubkey is banned here"
        if event.id in self.banned_events.get(community_id, ()):
            return "blocked: this event is banned here"
        allowed = self.allowed_pubkeys.get(community_id)
        if allowed and event.pubkey not in allowed:
            return "blocked: only allowed pubkeys may publish here"
        return None

    def ip_blocked(self, community_id: int, ip: str) -> bool:
        blocked = self.blocked_ips.get(community_id)
        if not blocked:
            return False
        try:
            return normalize_ip(ip) in blocked
        except ValueError:
            return False


def listing(entries: dict[str, str], key: str) -> list[dict[str, str]]:
    return [{key: value, "reason": reason} for value, reason in sorted(entries.items())]


class Moderation:
    """The moderation state of this pod, its changes (written to Postgres, then told to the
    other pods) and the NIP-86 endpoint."""

    def __init__(
        self,
        store: ModerationStore,
        *,
        admins: frozenset[str],
        https: bool,
        auth_window: int,
        hosts_of: Callable[[int], Awaitable[frozenset[str]]],
        redis_url: str | None = None,
        prefix: str = "relay",
    ) -> None:
        self.store = store
        self.admins = admins
        self.scheme = "https" if https else "http"
        self.auth_window = auth_window
        self.hosts_of = hosts_of
        self.state = ModerationState()
        self.channel = f"{prefix}:moderation"
        self.pod_id = secrets.token_hex(8)
        self._redis = (
            aioredis.Redis.from_url(redis_url, socket_timeout=REDIS_SECONDS) if redis_url else None
        )
        self._reload_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        # Members-only communities' changes (relay.server.membership), set once it is built.
        self.membership: Membership | None = None
        # Called with a community whose access changed (mode or members), after a reload.
        self.on_access_change: list[Callable[[int], None]] = []

    # -- the checks ingest and the listener make ------------------------------------------

    def refusal(self, community_id: int, event: Event) -> str | None:
        return self.state.refusal(community_id, event)

    def ip_blocked(self, community_id: int, ip: str) -> bool:
        return self.state.ip_blocked(community_id, ip)

    def access(self, community_id: int) -> Access:
        return self.state.access_of(community_id)

    def info(self, community_id: int) -> dict[str, str]:
        """The NIP-11 fields an admin changed for this community."""
        return dict(self.state.info.get(community_id, {}))

    # -- keeping the copy current ----------------------------------------------------------

    async def reload(self) -> None:
        async with self._reload_lock:
            before = self.state.access
            self.state = ModerationState.of(await self.store.load())
            after = self.state.access
        for community_id in sorted(set(before) | set(after)):
            if before.get(community_id) != after.get(community_id):
                for listener in self.on_access_change:
                    listener(community_id)

    async def run(self) -> None:
        """Keep this pod's copy current: through Redis when configured (plus a slow
        periodic reload), else by reading Postgres every RELOAD_SECONDS."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._reload_forever)
            if self._redis is not None:
                nursery.start_soon(self._listen_forever)

    async def _reload_forever(self) -> None:
        every = RELOAD_WITH_REDIS_SECONDS if self._redis is not None else RELOAD_SECONDS
        while True:
            await trio.sleep(every)
            try:
                await self.reload()
            except Exception as exc:
                log.warning("reloading the moderation state failed: %s", exc)

    async def _purge_again(self, community_id: int, pubkey: str) -> None:
        await trio.sleep(PURGE_AGAIN_SECONDS)
        try:
            deleted = await self.store.purge_banned(community_id, pubkey)
        except Exception as exc:
            log.warning("deleting the events of banned %s again failed: %s", pubkey, exc)
            return
        if deleted:
            log.info("management: deleted %d more events of banned %s", deleted, pubkey)

    async def _listen_forever(self) -> None:
        assert self._redis is not None
        backoff = 0.5
        while True:
            pubsub = self._redis.pubsub()
            try:
                await aio_as_trio(pubsub.subscribe)(self.channel)
                backoff = 0.5
                await self.reload()  # whatever changed while not subscribed
                while True:
                    message = await aio_as_trio(pubsub.get_message)(
                        ignore_subscribe_messages=True, timeout=1.0
                    )
                    if message is not None and message.get("data") != self.pod_id.encode():
                        await self.reload()
            except REDIS_ERRORS as exc:
                log.warning("moderation channel lost (%s); retrying in %.1f s", exc, backoff)
            except Exception as exc:
                log.warning("reloading the moderation state failed: %s", exc)
            finally:
                with trio.CancelScope(shield=True), contextlib.suppress(*REDIS_ERRORS):
                    await aio_as_trio(pubsub.aclose)()
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def changed(self) -> None:
        """After a change committed: reload here, and tell the other pods."""
        await self.reload()
        if self._redis is None:
            return
        with trio.move_on_after(REDIS_SECONDS):
            try:
                await aio_as_trio(self._redis.publish)(self.channel, self.pod_id)
                return
            except REDIS_ERRORS as exc:
                log.warning("telling other pods of a moderation change failed: %s", exc)
        log.warning(
            "other pods see this moderation change within %.0f s", RELOAD_WITH_REDIS_SECONDS
        )

    async def aclose(self) -> None:
        if self._redis is not None:
            with trio.CancelScope(shield=True), contextlib.suppress(*REDIS_ERRORS):
                await aio_as_trio(self._redis.aclose)()

    # -- the endpoint ----------------------------------------------------------------------

    async def handle(
        self, stream: trio.abc.Stream, request: Request, community_id: int, host: str
    ) -> None:
        """Answer one NIP-86 request."""
        body = await read_decoded_body(stream, request, MAX_BODY_BYTES)
        try:
            pubkey = authorize(
                request.header("authorization"),
                body,
                scheme=self.scheme,
                host=host,
                aliases=await self.hosts_of(community_id),
                window=self.auth_window,
            )
        except nip98.Unauthorized as exc:
            await answer(stream, 401, error=f"unauthorized: {exc}", headers=[CHALLENGE])
            return
        if pubkey not in self.admins and not await self.store.is_admin(community_id, pubkey):
            await answer(stream, 403, error="forbidden: not an admin of this community")
            return
        try:
            call = parse_call(body)
        except RpcError as exc:
            await answer(stream, 400, error=str(exc))
            return
        log.info(
            "management: %s by %s on community %d, params %s",
            call.method, pubkey, community_id, orjson.dumps(call.params).decode()[:1000],
        )  # fmt: skip
        try:
            result = await self.call(community_id, call)
        except RpcError as exc:
            await answer(stream, 200, error=str(exc))
            return
        await answer(stream, 200, result=result)

    async def call(self, community_id: int, call: Call) -> Any:
        """Carry out one method for the community; its result (RpcError: its error)."""
        p, store, cid = call.params, self.store, community_id
        state = self.state
        if state.access_of(cid).members_only and call.method in MEMBERSHIP_METHODS:
            # In a members-only community the allowed pubkeys are its members, and a ban
            # ends a membership too (then the ban itself, below).
            if self.membership is None:
                raise RpcError("membership changes need the relay's key (RELAY_SECRET_KEY)")
            if call.method != "banpubkey":
                return await self._member_call(cid, call, self.membership)
            await self.membership.remove(cid, hex32(p, "public key"))
        match call.method:
            case "supportedmethods":
                return list(METHODS)
            case "banpubkey":
                pubkey, reason = hex32(p, "public key"), text(p, 1, "reason")
                purge = len(p) > 2 and p[2] in (True, "delete")
                deleted = await store.set_pubkey(cid, BANNED, pubkey, reason, purge=purge)
                if purge:
                    log.info("management: deleted %d events of %s", deleted, pubkey)
                    if self._nursery is not None:
                        self._nursery.start_soon(self._purge_again, cid, pubkey)
            case "unbanpubkey":
                await store.unset_pubkey(cid, BANNED, hex32(p, "public key"))
            case "allowpubkey":
                await store.set_pubkey(cid, ALLOWED, hex32(p, "public key"), text(p, 1, "reason"))
            case "unallowpubkey":
                await store.unset_pubkey(cid, ALLOWED, hex32(p, "public key"))
            case "banevent":
                await store.ban_event(cid, hex32(p, "event id"), text(p, 1, "reason"))
            case "allowevent":
                await store.unban_event(cid, hex32(p, "event id"))
            case "changerelayname":
                await store.set_info(cid, "name", text(p, 0, "new name", required=True))
            case "changerelaydescription":
                value = text(p, 0, "new description", required=True)
                await store.set_info(cid, "description", value)
            case "blockip":
                await store.block_ip(cid, ip_param(p), text(p, 1, "reason"))
            case "unblockip":
                await store.unblock_ip(cid, ip_param(p))
            case "listbannedpubkeys":
                return listing(state.banned_pubkeys.get(cid, {}), "pubkey")
            case "listallowedpubkeys":
                return listing(state.allowed_pubkeys.get(cid, {}), "pubkey")
            case "listbannedevents":
                return listing(state.banned_events.get(cid, {}), "id")
            case "listblockedips":
                return listing(state.blocked_ips.get(cid, {}), "ip")
            case "changerelayaccess":
                mode = text(p, 0, "access: public or members", required=True)
                if mode not in ACCESS_MODES:
                    raise RpcError("params[0] must be public or members")
                if self.membership is None:
                    raise RpcError("membership changes need the relay's key (RELAY_SECRET_KEY)")
                await self.membership.set_access(cid, mode)
            case _:
                raise RpcError(f"unsupported method: {call.method}")
        await self.changed()
        return True


    async def _member_call(self, cid: int, call: Call, membership: Membership) -> Any:
        """allowpubkey, unallowpubkey and listallowedpubkeys in a members-only community:
        the membership."""
        p = call.params
        if call.method == "listallowedpubkeys":
            members = await membership.store.members(cid)
            return [{"pubkey": m.pubkey, "reason": f"member ({m.via})"} for m in members]
        if call.method == "allowpubkey":
            await membership.add(cid, hex32(p, "public key"))
        else:
            await membership.remove(cid, hex32(p, "public key"))
        return True


# NIP-86 methods that change or list the members of a members-only community.
MEMBERSHIP_METHODS = frozenset({"allowpubkey", "unallowpubkey", "listallowedpubkeys", "banpubkey"})
CHALLENGE = ("WWW-Authenticate", 'Nostr realm="nip86", method="POST"')


async def answer(
    stream: trio.abc.Stream,
    status: int,
    *,
    result: Any = None,
    error: str | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> None:
    body = {"result": result, "error": error}
    await respond(stream, status, orjson.dumps(body), "application/json", headers)


def is_management(request: Request) -> bool:
    """A NIP-86 call: POST with the RPC content type (parameters such as charset allowed)."""
    content_type = request.header("content-type").split(";", 1)[0].strip().lower()
    return request.method == "POST" and content_type == RPC_TYPE

