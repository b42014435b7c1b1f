"""Client addresses on a relay served in-process: rate limits count the client a trusted
proxy names (RELAY_TRUSTED_PROXIES), never what an untrusted peer claims, and loopback
clients are not limited unless RELAY_RATE_LIMIT_LOOPBACK is on.

The test's connections all come from 127.0.0.1; a "proxy" is the test itself sending the
headers a reverse proxy would."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from ipaddress import ip_network
from pathlib import Path

import pytest
import trio
import trio_websocket

from relay.server import listener
from relay.server.clientaddr import Network
from tests.helpers import NostrClient, connect, http_get, make_event
from tests.services import start_relay

# Two REQs and two new connections per client, then refusals for the rest of the test.
LIMITS = {
    "rate_limits": True,
    "rate_reqs_per_second": 0.01,
    "rate_reqs_burst": 2,
    "rate_connections_per_second": 0.01,
    "rate_connections_burst": 2,
    "rate_events_per_second": 0.01,
    "rate_events_burst": 2,
}
REFUSED_REQ = "rate-limited: slow down, too many requests"
LOOPBACK: tuple[Network, ...] = (ip_network("127.0.0.0/8"),)
ELSEWHERE: tuple[Network, ...] = (ip_network("10.0.0.0/8"), ip_network("fd00::/8"))
CLIENT_A = {"X-Forwarded-For": "203.0.113.1"}
CLIENT_B = {"X-Forwarded-For": "203.0.113.2"}


@asynccontextmanager
async def connect_with(port: int, headers: dict[str, str]) -> AsyncIterator[NostrClient]:
    """A websocket over loopback whose upgrade request carries `headers`."""
    extra = [(name.encode(), value.encode()) for name, value in headers.items()]
    async with trio.open_nursery() as nursery:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        ws = await trio_websocket.wrap_client_stream(
            nursery, stream, "127.0.0.1", "/", extra_headers=extra
        )
        try:
            yield NostrClient(ws)
        finally:
            await ws.aclose()
            nursery.cancel_scope.cancel()


async def upgrade_status(port: int, headers: dict[str, str]) -> int:
    """The status of a websocket upgrade request carrying `headers` (101, or a refusal)."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET / HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]  # fmt: skip
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        with trio.fail_after(10):
            while b"\r\n" not in data:
                chunk = await stream.receive_some(4096)
                assert chunk, data
                data += chunk
    return int(data.split()[1])


async def req_answers(client: NostrClient, count: int) -> list[str]:
    """Send `count` REQs at once; for each, EOSE or the reason of its CLOSED."""
    for n in range(count):
        await client.send(["REQ", f"s{n}", {"ids": ["00" * 32]}])
    answers = []
    for n in range(count):
        frame = await client.recv()
        assert frame[1] == f"s{n}", frame
        answers.append("EOSE" if frame[0] == "EOSE" else frame[2])
        if frame[0] == "EOSE":
            await client.send(["CLOSE", f"s{n}"])
    return answers


async def test_clients_behind_a_trusted_proxy_are_limited_each_on_its_own(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, trusted_proxies=LOOPBACK, **LIMITS)
    async with connect_with(relay.port, CLIENT_A) as a, connect_with(relay.port, CLIENT_B) as b:
        assert await req_answers(a, 3) == ["EOSE", "EOSE", REFUSED_REQ]
        assert await req_answers(b, 2) == ["EOSE", "EOSE"]  # a's refusals are not b's
        assert await req_answers(b, 1) == [REFUSED_REQ]

        # New connections: two each. a's third is refused while b still has one.
        assert await upgrade_status(relay.port, CLIENT_A) == 101
        assert await upgrade_status(relay.port, CLIENT_A) == 429
        # a prepends b's address to the chain: the proxy's entry (the right-most) is a's.
        spoofed = {"X-Forwarded-For": "203.0.113.2, 203.0.113.1"}
        assert await upgrade_status(relay.port, spoofed) == 429
        assert await upgrade_status(relay.port, CLIENT_B) == 101

        # RFC 7239 Forwarded (IPv6, quoted, with a port) names a third client.
        forwarded = {"Forwarded": 'for="[2001:db8::7]:4711";proto=http'}
        async with connect_with(relay.port, forwarded) as c:
            assert await req_answers(c, 3) == ["EOSE", "EOSE", REFUSED_REQ]
        # Forwarded wins over X-Forwarded-For: b has no connection left, the third one has.
        both = {**forwarded, **CLIENT_B}
        assert await upgrade_status(relay.port, both) == 101
        assert await upgrade_status(relay.port, both) == 429
        # X-Real-IP, when neither of those is sent, names a fourth.
        async with connect_with(relay.port, {"X-Real-IP": "198.51.100.4"}) as d:
            assert await req_answers(d, 3) == ["EOSE", "EOSE", REFUSED_REQ]

        # A client on the proxy's own host, named by the proxy, is a loopback client.
        async with connect_with(relay.port, {"X-Forwarded-For": "127.0.0.1"}) as local:
            assert set(await req_answers(local, 10)) == {"EOSE"}


async def test_forwarding_headers_from_an_untrusted_peer_are_ignored_and_warned_of(
    nursery: trio.Nursery,
    db_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(listener, "_untrusted_proxy_warned", False)
    caplog.set_level(logging.WARNING, logger="relay.server.listener")
    relay = await start_relay(nursery, db_url, tmp_path, trusted_proxies=ELSEWHERE, **LIMITS)
    # Whatever they claim, both are 127.0.0.1, one budget: and not exempt as loopback, since
    # a loopback peer that forwards speaks for others.
    async with connect_with(relay.port, CLIENT_A) as a, connect_with(relay.port, CLIENT_B) as b:
        assert await req_answers(a, 2) == ["EOSE", "EOSE"]
        assert await req_answers(b, 1) == [REFUSED_REQ]
    assert await upgrade_status(relay.port, {"Forwarded": "for=198.51.100.4"}) == 429
    status, _, _ = await http_get(relay.port, "/healthz", X_Real_IP="198.51.100.5")
    assert status == 200

    warnings = [r.getMessage() for r in caplog.records if "RELAY_TRUSTED_PROXIES" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "127.0.0.1" in warnings[0] and "x-forwarded-for" in warnings[0]


async def test_loopback_clients_are_not_rate_limited_by_default(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, **LIMITS)
    for _ in range(5):  # more new connections than the burst
        async with connect(relay.port) as client:
            assert set(await req_answers(client, 25)) == {"EOSE"}
    async with connect(relay.port) as client:
        for _ in range(5):
            note = make_event()
            assert await client.publish(note) == ["OK", note.id, True, ""]


async def test_loopback_clients_are_limited_with_rate_limit_loopback_on(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, rate_limit_loopback=True, **LIMITS)
    async with connect(relay.port) as client:
        assert await req_answers(client, 3) == ["EOSE", "EOSE", REFUSED_REQ]
        assert await upgrade_status(relay.port, {}) == 101
        assert await upgrade_status(relay.port, {}) == 429
