"""A loopback TCP proxy in front of a real server that stops passing bytes on demand.

A real PostgreSQL cannot be made to stall for one test without stalling every other test
that shares it: this proxy is the fault injector for that (and only that). While stalled it
keeps every connection open and holds what both sides send; resumed, it passes it on.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio

CHUNK = 64 * 1024


class StallProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._flowing = trio.Event()
        self._flowing.set()

    def stall(self) -> None:
        self._flowing = trio.Event()

    def resume(self) -> None:
        self._flowing.set()

    async def _pipe(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await source.receive_some(CHUNK):
                await self._flowing.wait()
                await sink.send_all(data)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await sink.send_eof()

    async def _serve(self, client: trio.SocketStream) -> None:
        async with client:
            try:
                server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            except OSError:
                return
            async with server, trio.open_nursery() as nursery:
                nursery.start_soon(self._pipe, client, server)
                nursery.start_soon(self._pipe, server, client)


@asynccontextmanager
async def stall_proxy(target_port: int) -> AsyncIterator[StallProxy]:
    proxy = StallProxy(target_port)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, proxy._serve, 0, host="127.0.0.1"))
        proxy.port = listeners[0].socket.getsockname()[1]
        try:
            yield proxy
        finally:
            proxy.resume()
            nursery.cancel_scope.cancel()
