"""HTTP/1.1 keep-alive on the relay's port: several requests on one connection, in turn
or pipelined, until the client says close or a body is left unread."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.helpers import RelayUnderTest
from tests.services import start_relay

HEALTH = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"


async def exchange(port: int, data: bytes, answers: int) -> tuple[list[bytes], bool]:
    """Send `data`, read until `answers` responses came; (their heads, whether the relay
    then closed the connection)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        got = b""
        with trio.fail_after(10):
            while got.count(b"HTTP/1.1 ") < answers or not got.endswith(b"ok\n"):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return _heads(got), True
                got += chunk
            with trio.move_on_after(0.5):
                closed = await stream.receive_some(65536) == b""
                return _heads(got), closed
    return _heads(got), False


def _heads(data: bytes) -> list[bytes]:
    return [part.split(b"\r\n\r\n", 1)[0] for part in data.split(b"HTTP/1.1 ")[1:]]


async def relay(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> RelayUnderTest:
    return await start_relay(nursery, db_url, tmp_path)


async def test_requests_in_turn_and_pipelined_share_one_connection(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    r = await relay(nursery, db_url, tmp_path)
    heads, closed = await exchange(r.port, HEALTH * 3, 3)
    assert len(heads) == 3 and not closed
    assert all(b"Connection: keep-alive" in h for h in heads), heads


async def test_connection_close_and_http_1_0_end_the_connection(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    r = await relay(nursery, db_url, tmp_path)
    last = HEALTH.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    heads, closed = await exchange(r.port, HEALTH + last + HEALTH, 2)
    assert len(heads) == 2 and closed  # the third request is never answered
    assert b"Connection: close" in heads[1]
    old = b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n"
    heads, closed = await exchange(r.port, old + HEALTH, 1)
    assert len(heads) == 1 and closed


async def test_an_unread_body_ends_the_connection(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """/healthz does not read a body: the relay cannot know where the next request starts,
    so it closes after answering."""
    r = await relay(nursery, db_url, tmp_path)
    posted = b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello"
    heads, closed = await exchange(r.port, posted + HEALTH, 1)
    assert len(heads) == 1 and closed
