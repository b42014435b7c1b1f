"""A write cut short by cancellation never leaves a cut frame on the wire.

Real sockets (a trio socketpair with a small send buffer); the peer stops reading so the
relay's write blocks part-way, the write is cancelled (as when a slow consumer is
dropped), and the goodbye that follows must reach the peer as whole frames.
"""

from __future__ import annotations

import socket

import trio

from relay.server import frames
from relay.server.wsconn import WebSocket


async def read_server_frames(sock: trio.socket.SocketType, count: int) -> list[tuple[int, bytes]]:
    """Parse `count` unmasked server frames (opcode, payload) off the peer socket."""
    buf = bytearray()

    async def need(size: int) -> None:
        while len(buf) < size:
            chunk = await sock.recv(65536)
            assert chunk, "the connection ended"
            buf.extend(chunk)

    out: list[tuple[int, bytes]] = []
    with trio.fail_after(10):
        for _ in range(count):
            await need(2)
            size, head = buf[1] & 0x7F, 2
            if size == 126:
                await need(4)
                size, head = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                await need(10)
                size, head = int.from_bytes(buf[2:10], "big"), 10
            await need(head + size)
            out.append((buf[0] & 0x0F, bytes(buf[head : head + size])))
            del buf[: head + size]
    return out


async def test_a_cancelled_write_is_completed_before_the_next_frame() -> None:
    server_sock, peer = trio.socket.socketpair()
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ws = WebSocket(trio.SocketStream(server_sock), b"", 1 << 20)
    big = "x" * (512 * 1024)  # far more than both buffers hold
    with trio.move_on_after(0.5) as scope:
        await ws.send_message(big)  # the peer is not reading: blocks part-way
    assert scope.cancelled_caught
    assert ws._unsent, "the write should have been cut short"
    async with trio.open_nursery() as nursery:
        got: list[list[tuple[int, bytes]]] = []

        async def reader() -> None:
            got.append(await read_server_frames(peer, 2))

        nursery.start_soon(reader)
        await ws.send_message("goodbye")
    (first, second), = got
    assert first == (frames.OP_TEXT, big.encode())
    assert second == (frames.OP_TEXT, b"goodbye")
    peer.close()
    server_sock.close()
