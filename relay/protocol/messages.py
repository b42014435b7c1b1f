"""Client-to-relay frames parsed into values, and relay-to-client frames built (NIP-01/42/45,
and NIP-77's NEG-OPEN, NEG-MSG, NEG-CLOSE and NEG-ERR).

Parsing never raises: a frame is either a client message or a `Refusal` carrying the
exact frame to send back (NOTICE, OK false or CLOSED).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from relay.events.model import Event, InvalidEvent, is_hex, parse_event
from relay.protocol.filters import Filter, InvalidFilter, parse_filters
from relay.protocol.limits import Limits


@dataclass(frozen=True, slots=True)
class ClientEvent:
    event: Event


@dataclass(frozen=True, slots=True)
class ClientReq:
    sub_id: str
    filters: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class ClientCount:
    sub_id: str
    filters: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class ClientClose:
    sub_id: str


@dataclass(frozen=True, slots=True)
class ClientAuth:
    event: Event


@dataclass(frozen=True, slots=True)
class ClientNegOpen:
    sub_id: str
    filter: Filter
    message: bytes  # the first negentropy message, hex-decoded


@dataclass(frozen=True, slots=True)
class ClientNegMsg:
    sub_id: str
    message: bytes


@dataclass(frozen=True, slots=True)
class ClientNegClose:
    sub_id: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """A frame that could not be acted on, and the answer for the client."""

    reply: str


ClientMessage = (
    ClientEvent | ClientReq | ClientCount | ClientClose | ClientAuth
    | ClientNegOpen | ClientNegMsg | ClientNegClose
)  # fmt: skip


def _dump(value: list[Any]) -> str:
    return orjson.dumps(value).decode()


def notice(message: str) -> str:
    return _dump(["NOTICE", message])


def ok(event_id: str, accepted: bool, message: str = "") -> str:
    return _dump(["OK", event_id, accepted, message])


def closed(sub_id: str, message: str) -> str:
    return _dump(["CLOSED", sub_id, message])


def eose(sub_id: str) -> str:
    return _dump(["EOSE", sub_id])


def count(sub_id: str, n: int) -> str:
    return _dump(["COUNT", sub_id, {"count": n}])


def auth_challenge(challenge: str) -> str:
    return _dump(["AUTH", challenge])


def event_frame(sub_id: str, raw_event: str) -> str:
    """An EVENT frame from an event's stored JSON, without decoding it again."""
    return '["EVENT",' + orjson.dumps(sub_id).decode() + "," + raw_event + "]"


def neg_msg(sub_id: str, message: bytes) -> str:
    return _dump(["NEG-MSG", sub_id, message.hex()])


def neg_err(sub_id: str, reason: str, max_records: int | None = None) -> str:
    """NIP-77's error; `max_records` (the 4th element) with a `blocked` one, when known."""
    extra = [] if max_records is None else [max_records]
    return _dump(["NEG-ERR", sub_id, reason, *extra])


def _parse_negentropy(body: list[Any], verb: str, limits: Limits) -> ClientMessage | Refusal:
    """NEG-OPEN [id, filter, hex], NEG-MSG [id, hex], NEG-CLOSE [id]; a malformed one is
    answered NEG-ERR when it names a subscription, else NOTICE."""
    arity = {"NEG-OPEN": 4, "NEG-MSG": 3, "NEG-CLOSE": 2}[verb]
    sub_id = body[1] if len(body) > 1 else None
    if not isinstance(sub_id, str) or not 1 <= len(sub_id) <= limits.max_subid_length:
        return Refusal(notice(
            f"invalid: {verb} needs a subscription id of 1 to {limits.max_subid_length} characters"
        ))  # fmt: skip
    if len(body) != arity:
        return Refusal(neg_err(sub_id, f"invalid: {verb} takes {arity - 1} values"))
    if verb == "NEG-CLOSE":
        return ClientNegClose(sub_id)
    raw = body[-1]
    message = None
    if isinstance(raw, str) and len(raw) % 2 == 0:
        try:
            message = bytes.fromhex(raw)
        except ValueError:
            message = None
    if message is None:
        return Refusal(neg_err(sub_id, "invalid: the negentropy message must be hex"))
    if verb == "NEG-MSG":
        return ClientNegMsg(sub_id, message)
    try:
        (flt,) = parse_filters([body[2]], limits)
    except InvalidFilter as exc:
        return Refusal(neg_err(sub_id, f"invalid: {exc}"))
    return ClientNegOpen(sub_id, flt, message)


def _event_id_of(obj: object) -> str | None:
    """The id of an event that will not parse, if an OK can name it: 64 hex characters in
    either case (an upper-case id is refused, but the client can still match its OK)."""
    if isinstance(obj, dict):
        candidate = obj.get("id")
        if isinstance(candidate, str) and is_hex(candidate.lower(), 64):
            return candidate
    return None


def _parse_event_frame(body: list[Any], verb: str) -> ClientEvent | ClientAuth | Refusal:
    if len(body) != 2:
        return Refusal(notice(f"invalid: {verb} takes exactly one event"))
    try:
        event = parse_event(body[1])
    except InvalidEvent as exc:
        event_id = _event_id_of(body[1])
        if event_id is None:
            return Refusal(notice(f"invalid: {exc}"))
        return Refusal(ok(event_id, False, f"invalid: {exc}"))
    return ClientEvent(event) if verb == "EVENT" else ClientAuth(event)


def _parse_subscription(
    body: list[Any], verb: str, limits: Limits
) -> ClientReq | ClientCount | Refusal:
    if len(body) < 2:
        return Refusal(notice(f"invalid: {verb} needs a subscription id"))
    sub_id = body[1]
    if not isinstance(sub_id, str):
        return Refusal(notice(f"invalid: {verb} subscription id must be a string"))
    if not 1 <= len(sub_id) <= limits.max_subid_length:
        return Refusal(
            closed(
                sub_id,
                f"invalid: subscription id must have 1 to {limits.max_subid_length} characters",
            )
        )
    try:
        filters = parse_filters(body[2:], limits)
    except InvalidFilter as exc:
        return Refusal(closed(sub_id, f"invalid: {exc}"))
    return ClientReq(sub_id, filters) if verb == "REQ" else ClientCount(sub_id, filters)


def parse_client_message(frame: str | bytes, limits: Limits) -> ClientMessage | Refusal:
    try:
        body = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        too_deep = any(word in str(exc).lower() for word in ("depth", "recursion"))
        reason = "nested too deeply" if too_deep else "not valid JSON"
        return Refusal(notice(f"invalid: message is {reason}"))
    if not isinstance(body, list) or not body:
        return Refusal(notice("invalid: message must be a non-empty JSON array"))
    verb = body[0]
    if verb in ("EVENT", "AUTH"):
        return _parse_event_frame(body, verb)
    if verb in ("REQ", "COUNT"):
        return _parse_subscription(body, verb, limits)
    if verb in ("NEG-OPEN", "NEG-MSG", "NEG-CLOSE"):
        return _parse_negentropy(body, verb, limits)
    if verb == "CLOSE":
        if len(body) != 2 or not isinstance(body[1], str):
            return Refusal(notice("invalid: CLOSE takes exactly one subscription id"))
        return ClientClose(body[1])
    if isinstance(verb, str):
        return Refusal(notice(f"invalid: unknown message type {verb[:32]!r}"))
    return Refusal(notice("invalid: message type must be a string"))
