"""A closed connection's memory returns at close, not at the next full garbage collection.

The relay's memory per connection is dominated by what the connection holds (subscriptions,
filters, queued frames). If a reference cycle (a stored exception and its traceback, a task
that keeps its connection) ties them together, only the cyclic garbage collector frees
them, and it runs a full collection rarely: a relay that opened and closed connections with
many large subscriptions grew to a gigabyte. Each test here closes a connection one way,
with the collector off, and asserts the connection's objects were freed by reference
counting alone.
"""

from __future__ import annotations

import contextlib
import gc
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from relay.app import Relay
from tests.helpers import (
    OP_CLOSE,
    OP_TEXT,
    RelayUnderTest,
    client_frame,
    close_body,
    connect,
    text_frame,
)

SUBSCRIPTIONS = 50
TAG_VALUES = 200
WAIT = 5.0


@asynccontextmanager
async def collector_off() -> AsyncIterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def big_filter(i: int) -> dict[str, Any]:
    return {"kinds": [1], "#t": [f"value-{i}-{j}" for j in range(TAG_VALUES)]}


async def the_connection(app: Relay) -> weakref.ref[Any]:
    with trio.fail_after(WAIT):
        while len(app.connections) != 1:
            await trio.sleep(0.01)
    (connection,) = list(app.connections)
    return weakref.ref(connection)


async def closed(app: Relay, ref: weakref.ref[Any]) -> None:
    """Wait until the relay has ended the connection; then it must be gone already."""
    with trio.fail_after(WAIT):
        while len(app.connections):
            await trio.sleep(0.01)
    await trio.sleep(0.2)  # let its tasks finish unwinding
    assert ref() is None, "the closed connection is still referenced (a reference cycle?)"


async def subscribe_raw(stream: trio.SocketStream) -> None:
    for i in range(SUBSCRIPTIONS):
        await stream.send_all(text_frame(["REQ", f"s{i}", big_filter(i)]))


UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def raw_session(port: int, end: Callable[[trio.SocketStream], Awaitable[None]]) -> None:
    """Upgrade by hand, open the subscriptions, then end the connection with `end`."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(UPGRADE)
        await subscribe_raw(stream)
        await trio.sleep(0.3)  # the relay has taken the subscriptions
        await end(stream)
        # Read until the relay closes (nothing to read once the client dropped TCP itself).
        with trio.move_on_after(WAIT), contextlib.suppress(trio.ClosedResourceError):
            while await stream.receive_some(65536):
                pass


async def drop_tcp(stream: trio.SocketStream) -> None:
    """The client vanishes: no close frame."""
    await stream.aclose()


async def close_frame(stream: trio.SocketStream) -> None:
    await stream.send_all(client_frame(OP_CLOSE, close_body(1000)))


async def invalid_utf8(stream: trio.SocketStream) -> None:
    await stream.send_all(client_frame(OP_TEXT, b'["REQ","\xff"]'))


@pytest.mark.parametrize("end", [drop_tcp, close_frame, invalid_utf8])
async def test_a_connection_ended_by_the_client_is_freed_at_close(
    relay: RelayUnderTest, end: Callable[[trio.SocketStream], Awaitable[None]]
) -> None:
    app = relay.app
    assert app is not None
    async with collector_off(), trio.open_nursery() as nursery:
        nursery.start_soon(raw_session, relay.port, end)
        ref = await the_connection(app)
        await closed(app, ref)


async def test_a_connection_closed_by_a_websocket_client_is_freed_at_close(
    relay: RelayUnderTest,
) -> None:
    app = relay.app
    assert app is not None
    async with collector_off():
        async with connect(relay.port) as client:
            for i in range(SUBSCRIPTIONS):
                await client.req(f"s{i}", big_filter(i), live=True)
            ref = await the_connection(app)
        await closed(app, ref)
