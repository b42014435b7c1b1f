"""NIP-86 calls over real HTTP with real NIP-98 tokens, as an admin's client makes them."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import orjson
from coincurve import PrivateKey

from relay.events import kinds
from relay.events.model import sign_event
from tests.helpers import http_request, new_key

RPC = "application/nostr+json+rpc"
# The admin of the tests' relays (their RELAY_ADMIN_PUBKEYS).
ADMIN = new_key()


def token(key: PrivateKey, url: str, body: bytes, *, payload: str | None = None) -> str:
    event = sign_event(
        key,
        kind=kinds.HTTP_AUTH,
        tags=[
            ["u", url],
            ["method", "POST"],
            ["payload", payload or hashlib.sha256(body).hexdigest()],
        ],
        created_at=int(time.time()),
    )
    return "Nostr " + base64.b64encode(event.to_json().encode()).decode()


async def post(
    port: int, body: bytes, host: str = "127.0.0.1", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    return await http_request(port, "POST", "/", f"{host}:{port}", body, **headers)


async def rpc_raw(
    port: int,
    method: str,
    params: list[Any] | None = None,
    *,
    key: PrivateKey = ADMIN,
    host: str = "127.0.0.1",
    payload: str | None = None,
    **headers: str,
) -> tuple[int, dict[str, Any]]:
    body = orjson.dumps({"method": method, "params": params or []})
    auth = token(key, f"http://{host}:{port}/", body, payload=payload)
    status, head, answer = await post(
        port, body, host, Content_Type=RPC, Authorization=auth, **headers
    )
    assert head["content-type"] == "application/json"
    return status, orjson.loads(answer)


async def rpc(port: int, method: str, *params: Any, **kwargs: Any) -> Any:
    status, answer = await rpc_raw(port, method, list(params), **kwargs)
    assert status == 200 and answer["error"] is None, answer
    return answer["result"]
