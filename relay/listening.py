"""The listening sockets of a relay, or of one worker of several (RELAY_WORKERS, see
relay.workers): what a worker process is told by its parent, and how it opens its socket
on the relay's one port."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import trio

from relay.config import Settings

# Set by the parent for its workers only: internal, not settings (hence the leading _).
INDEX_ENV = "_RELAY_WORKER_INDEX"
BUS_ENV = "_RELAY_WORKER_BUS"
COUNT_ENV = "_RELAY_WORKER_COUNT"
LISTEN_FD_ENV = "_RELAY_LISTEN_FD"
BACKLOG = 4096


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """What a worker process is told by its parent."""

    index: int
    count: int  # the relay's workers
    bus_path: str
    listen_fd: int | None  # the parent's listening socket, where there is no SO_REUSEPORT


def worker_role(environ: dict[str, str] | None = None) -> WorkerRole | None:
    env = os.environ if environ is None else environ
    if INDEX_ENV not in env or BUS_ENV not in env:
        return None
    fd = env.get(LISTEN_FD_ENV)
    count = int(env.get(COUNT_ENV, "1"))
    return WorkerRole(int(env[INDEX_ENV]), count, env[BUS_ENV], int(fd) if fd else None)


def has_reuse_port() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def listening_socket(bind: str, port: int, *, reuse_port: bool, listen: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((bind, port))
        if listen:
            sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_listeners(settings: Settings, role: WorkerRole | None) -> list[trio.SocketListener]:
    """The listening sockets of this process: a single relay's own (trio's), or a worker's
    (its own SO_REUSEPORT socket on the relay's port, or the parent's socket)."""
    if role is None:
        return await trio.open_tcp_listeners(settings.port, host=settings.bind)
    if role.listen_fd is not None:
        sock = socket.socket(fileno=role.listen_fd)
    else:
        sock = listening_socket(settings.bind, settings.port, reuse_port=True, listen=True)
    sock.setblocking(False)
    return [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]
