"""The stream under trio-websocket: writes stay whole frames, batches go out in order.

Real sockets (a trio socketpair with small buffers) and a real trio-websocket server
connection on top of `WebSocketStream`, which replays a handshake the test wrote; the peer
reads the 101 answer and then the server's frames by hand (they are never masked).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio_websocket

from relay.server.wsstream import WebSocketStream

OP_TEXT = 0x1
HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class Peer:
    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.buf = bytearray()

    async def need(self, size: int) -> None:
        while len(self.buf) < size:
            chunk = await self.sock.recv(65536)
            assert chunk, "the connection ended"
            self.buf.extend(chunk)

    async def read_head(self) -> bytes:
        with trio.fail_after(10):
            while b"\r\n\r\n" not in self.buf:
                await self.need(len(self.buf) + 1)
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        return head

    async def frames(self, count: int) -> list[tuple[int, bytes]]:
        """`count` unmasked server frames (opcode, payload)."""
        out: list[tuple[int, bytes]] = []
        with trio.fail_after(10):
            for _ in range(count):
                await self.need(2)
                size, head = self.buf[1] & 0x7F, 2
                if size == 126:
                    await self.need(4)
                    size, head = int.from_bytes(self.buf[2:4], "big"), 4
                elif size == 127:
                    await self.need(10)
                    size, head = int.from_bytes(self.buf[2:10], "big"), 10
                await self.need(head + size)
                out.append((self.buf[0] & 0x0F, bytes(self.buf[head : head + size])))
                del self.buf[: head + size]
        return out


@asynccontextmanager
async def server_and_peer(
    buffer_bytes: int = 4096,
) -> AsyncIterator[tuple[trio_websocket.WebSocketConnection, WebSocketStream, Peer]]:
    server_sock, peer_sock = trio.socket.socketpair()
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_bytes)
    peer_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
    wire = WebSocketStream(trio.SocketStream(server_sock), HANDSHAKE, b"", 1 << 20)
    peer = Peer(peer_sock)
    async with trio.open_nursery() as nursery:
        request = await trio_websocket.wrap_server_stream(nursery, wire)
        ws = await request.accept()
        assert (await peer.read_head()).startswith(b"HTTP/1.1 101")
        yield ws, wire, peer
        nursery.cancel_scope.cancel()
    await wire.finish(ws.closed)
    peer_sock.close()


async def test_a_cancelled_write_is_completed_before_the_next_frame() -> None:
    async with server_and_peer() as (ws, _, peer):
        big = "x" * (512 * 1024)  # far more than both buffers hold
        with trio.move_on_after(0.5) as scope:
            await ws.send_message(big)  # the peer is not reading: blocks part-way
        assert scope.cancelled_caught
        got: list[list[tuple[int, bytes]]] = []
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                got.append(await peer.frames(2))

            nursery.start_soon(reader)
            await ws.send_message("goodbye")
        ((first, second),) = got
        assert first == (OP_TEXT, big.encode())
        assert second == (OP_TEXT, b"goodbye")


async def test_a_batch_arrives_whole_and_in_order() -> None:
    messages = [f'["EVENT","s",{{"n":{i}}}]' + " " * (i * 37 % 300) for i in range(200)]
    async with server_and_peer(buffer_bytes=1 << 20) as (ws, wire, peer):
        await wire.send_messages(ws, messages)
        await wire.send_messages(ws, ["last"])
        frames = await peer.frames(len(messages) + 1)
    assert frames == [(OP_TEXT, m.encode()) for m in [*messages, "last"]]


async def test_a_batch_cancelled_part_way_is_finished_by_the_next_write() -> None:
    messages = ["y" * 50_000 for _ in range(20)]  # 1 MB: blocks on the small buffers
    async with server_and_peer() as (ws, wire, peer):
        with trio.move_on_after(0.5) as scope:
            await wire.send_messages(ws, messages)
        assert scope.cancelled_caught
        got: list[list[tuple[int, bytes]]] = []
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                frames = []
                while not frames or frames[-1] != (OP_TEXT, b"goodbye"):
                    frames += await peer.frames(1)
                got.append(frames)

            nursery.start_soon(reader)
            await ws.send_message("goodbye")
    # Every frame is whole: some prefix of the batch (framed before the cancel), then the
    # goodbye.
    (frames,) = got
    assert frames[-1] == (OP_TEXT, b"goodbye")
    assert all(frame == (OP_TEXT, messages[0].encode()) for frame in frames[:-1])
