"""Is this HTTP request a websocket upgrade the relay accepts? (RFC 6455, section 4.2.1)

Checked before trio-websocket sees the request, so every refusal is a specific HTTP answer
(426 names the version the relay speaks) and trio-websocket's own handshake, which then
replays the same bytes, always succeeds.
"""

from __future__ import annotations

import base64
import binascii

import h11

from relay.http import HttpError, Request

WEBSOCKET_VERSION = "13"
KEY_BYTES = 16


def check_upgrade(request: Request) -> bytes:
    """The bytes the client sent after the request head (its first frames, if any), for
    a valid upgrade request; HttpError (400, or 426 naming the version) otherwise."""
    if request.method != "GET":
        raise HttpError(400, "a websocket upgrade must be a GET")
    tokens = {t.strip().lower() for t in request.header("connection").split(",")}
    if "upgrade" not in tokens:
        raise HttpError(400, "a websocket upgrade needs Connection: Upgrade")
    if request.header("sec-websocket-version").strip() != WEBSOCKET_VERSION:
        raise HttpError(
            426, f"unsupported websocket version: this relay speaks {WEBSOCKET_VERSION}",
            [("Sec-WebSocket-Version", WEBSOCKET_VERSION)],
        )  # fmt: skip
    key = request.header("sec-websocket-key").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == KEY_BYTES
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise HttpError(400, "Sec-WebSocket-Key must be 16 bytes in base64")
    return _after_head(request)


def _after_head(request: Request) -> bytes:
    conn = request.parser
    while True:
        event = conn.next_event()
        if event is h11.PAUSED:  # the head asked for a protocol switch: the rest is frames
            return bytes(conn.trailing_data[0])
        if not isinstance(event, h11.EndOfMessage):
            raise HttpError(400, "a websocket upgrade has no body")
