"""Test helpers: a websocket Nostr client over real sockets, signed events, SQL peeks."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import trio
import trio_websocket
from coincurve import PrivateKey

from relay.app import Relay
from relay.config import Settings
from relay.events import kinds
from relay.events.model import Event, sign_event
from relay.keys import pubkey_hex
from relay.protocol.bech32 import hex_to_npub

RECEIVE_TIMEOUT = 10.0
_counter = itertools.count()


@dataclass
class RelayUnderTest:
    port: int
    settings: Settings
    db_url: str
    # The running relay's objects, for tests that must reach inside (e.g. occupy git slots).
    app: Relay | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"


def new_key() -> PrivateKey:
    return PrivateKey()


def make_event(
    key: PrivateKey | None = None,
    *,
    kind: int = 1,
    content: str | None = None,
    tags: list[list[str]] | None = None,
    created_at: int | None = None,
) -> Event:
    return sign_event(
        key or new_key(),
        kind=kind,
        content=f"note {next(_counter)}" if content is None else content,
        tags=tags,
        created_at=int(time.time()) if created_at is None else created_at,
    )


def clone_url(key: PrivateKey | str, repo: str, host: str = "127.0.0.1") -> str:
    """This relay's git URL of a repository (the npub form), as a `clone` tag lists it."""
    pubkey = key if isinstance(key, str) else pubkey_hex(key)
    return f"http://{host}/{hex_to_npub(pubkey)}/{repo}.git"


def announcement(
    key: PrivateKey,
    repo: str,
    host: str = "127.0.0.1",
    extra_tags: list[list[str]] | None = None,
    created_at: int | None = None,
) -> Event:
    """A kind 30617 that asks the relay at `host` to host `repo`: its `clone` tag lists the
    relay's URL of it (GRASP-01)."""
    return make_event(
        key,
        kind=kinds.REPO_ANNOUNCEMENT,
        content="",
        tags=[["d", repo], ["clone", clone_url(key, repo, host)], *(extra_tags or [])],
        created_at=created_at,
    )


def auth_event(
    key: PrivateKey, challenge: str, relay_url: str, created_at: int | None = None
) -> Event:
    """A NIP-42 AUTH event (kind 22242) answering `challenge` for the relay at `relay_url`."""
    return make_event(
        key,
        kind=22242,
        content="",
        tags=[["relay", relay_url], ["challenge", challenge]],
        created_at=created_at,
    )


class NostrClient:
    """A minimal client: send frames, read frames, with a timeout on every read."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.challenge: str | None = None

    async def send(self, frame: list[Any] | str | bytes) -> None:
        if isinstance(frame, list):
            await self.ws.send_message(orjson.dumps(frame).decode())
        else:
            await self.ws.send_message(frame)

    async def recv(self, timeout: float = RECEIVE_TIMEOUT) -> list[Any]:
        with trio.fail_after(timeout):
            while True:
                frame = orjson.loads(await self.ws.get_message())
                if frame[0] == "AUTH" and self.challenge is None:
                    self.challenge = frame[1]
                    continue
                return list(frame)

    async def expect_nothing(self, seconds: float = 0.3) -> None:
        with trio.move_on_after(seconds):
            frame = await self.recv()
            raise AssertionError(f"unexpected frame {frame}")

    async def publish(self, event: Event) -> list[Any]:
        await self.send(["EVENT", event.to_dict()])
        return await self.recv()

    async def publish_many(self, events: list[Event], window: int = 200) -> None:
        """EVENT frames sent `window` at a time, each batch's OKs read; every OK must be
        true."""
        for start in range(0, len(events), window):
            batch = events[start : start + window]
            for event in batch:
                await self.send(["EVENT", event.to_dict()])
            for _ in batch:
                frame = await self.recv()
                assert frame[0] == "OK" and frame[2] is True, frame

    async def publish_auth(self, event: Event) -> list[Any]:
        await self.send(["AUTH", event.to_dict()])
        return await self.recv()

    async def req(
        self, sub_id: str, *filters: dict[str, Any], live: bool = False
    ) -> list[dict[str, Any]]:
        """Send a REQ and collect stored events up to EOSE; then CLOSE it unless `live`."""
        await self.send(["REQ", sub_id, *filters])
        events = []
        while True:
            frame = await self.recv()
            if frame[0] == "EOSE":
                assert frame[1] == sub_id
                if not live:
                    await self.send(["CLOSE", sub_id])
                return events
            assert frame[0] == "EVENT", frame
            assert frame[1] == sub_id
            events.append(frame[2])

    async def wait_challenge(self) -> str:
        with trio.fail_after(RECEIVE_TIMEOUT):
            while self.challenge is None:
                frame = orjson.loads(await self.ws.get_message())
                if frame[0] == "AUTH":
                    self.challenge = frame[1]
        return self.challenge


async def publish(port: int, event: Event) -> list[Any]:
    """Publish one event on a connection of its own; the relay's answer."""
    async with connect(port) as client:
        return await client.publish(event)


async def close_code_after(client: NostrClient) -> int:
    """Read until the relay closes the websocket; its close code."""
    with trio.fail_after(RECEIVE_TIMEOUT):
        while True:
            try:
                await client.ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                assert exc.reason is not None and client.ws.closed is not None
                assert client.ws.closed.code == exc.reason.code
                return int(exc.reason.code)


@asynccontextmanager
async def connect(
    port: int, host: str = "127.0.0.1", *, max_message_size: int = 64 * 1024 * 1024
) -> AsyncIterator[NostrClient]:
    """A websocket to the relay on loopback, sending `host` as the Host header."""
    async with trio.open_nursery() as nursery:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        ws = await trio_websocket.wrap_client_stream(
            nursery, stream, host, "/", max_message_size=max_message_size
        )
        try:
            yield NostrClient(ws)
        finally:
            await ws.aclose()
            nursery.cancel_scope.cancel()


async def sql(db_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """Run one query on its own asyncio loop in a thread, outside the relay's loop."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(db_url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return await trio.to_thread.run_sync(asyncio.run, run())


async def stored_ids(db_url: str) -> list[str]:
    """The ids of every stored event, in order."""
    rows = await sql(db_url, "SELECT encode(id, 'hex') AS id FROM events ORDER BY 1")
    return [r["id"] for r in rows]


async def community_of(db_url: str, host: str = "127.0.0.1") -> int:
    """The id of the community `host` names."""
    rows = await sql(db_url, "SELECT id FROM communities WHERE host = $1", host)
    return int(rows[0]["id"])


@asynccontextmanager
async def transaction_held(
    db_url: str, *statements: tuple[str, tuple[Any, ...]]
) -> AsyncIterator[None]:
    """Run `statements` (SQL, arguments) in a transaction of another session, on its own
    asyncio loop in a thread, and hold it open (its locks, its uncommitted rows) until the
    block ends; then commit. A real Postgres condition other sessions have to wait on."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        async def run() -> None:
            conn = await asyncpg.connect(db_url)
            try:
                async with conn.transaction():
                    for query, args in statements:
                        await conn.execute(query, *args)
                    held.set()
                    await asyncio.get_running_loop().run_in_executor(None, release.wait)
            finally:
                await conn.close()

        asyncio.run(run())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, hold)
        with trio.fail_after(RECEIVE_TIMEOUT):
            await trio.to_thread.run_sync(held.wait)
        try:
            yield
        finally:
            release.set()


async def http_get(
    port: int, path: str, host: str = "127.0.0.1", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.1 GET over loopback; returns status, headers and body."""
    return await http_request(port, "GET", path, host, **headers)


async def http_request(
    port: int, method: str, path: str, host: str = "127.0.0.1", body: bytes = b"", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.1 request over loopback (`Connection: close`, a Content-Length when
    there is a body); returns status, headers and body."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        data = b""
        with trio.fail_after(RECEIVE_TIMEOUT):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), parsed, rest


RELAY_READY_TIMEOUT = 60.0
# The `relay` command, run from this checkout.
RELAY_CLI = [sys.executable, "-m", "relay.cli"]


def clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}


@asynccontextmanager
async def relay_process(
    env: dict[str, str], port: int, log_path: Path, *, own_group: bool = False
) -> AsyncIterator[trio.Process]:
    """`python -m relay.cli serve` as its own OS process; yielded once /readyz answers 200.
    Stopped with SIGTERM (then SIGKILL) on the way out unless the test already stopped it.
    `own_group`: in a process group (and session) of its own, which a test may signal whole."""
    with open(log_path, "wb") as log:
        proc = await trio.lowlevel.open_process(
            [*RELAY_CLI, "serve"],
            env={**clean_environ(), **env, "RELAY_PORT": str(port)},
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=own_group,
        )
        try:
            with trio.fail_after(RELAY_READY_TIMEOUT):
                while True:
                    if proc.returncode is not None:
                        raise AssertionError(f"relay exited early:\n{log_path.read_text()}")
                    try:
                        if (await http_get(port, "/readyz"))[0] == 200:
                            break
                    except OSError:
                        pass
                    await trio.sleep(0.1)
            yield proc
        finally:
            with trio.CancelScope(shield=True):
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                    with trio.move_on_after(30):
                        await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    with trio.move_on_after(10):
                        await proc.wait()


OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA


def client_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
    mask: bytes | None = None,
) -> bytes:
    """One websocket client frame built by hand (RFC 6455 5.2), so its bytes can be
    anything a test needs; `length` overrides the announced payload length."""
    size = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = bytes((b0, mask_bit | size))
    elif size < 1 << 16:
        head = bytes((b0, mask_bit | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((b0, mask_bit | 127)) + size.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = mask if mask is not None else os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def text_frame(value: object, **kwargs: bool) -> bytes:
    """A masked client text frame holding `value` as JSON."""
    return client_frame(OP_TEXT, orjson.dumps(value), **kwargs)


def close_body(code: int, reason: str = "") -> bytes:
    """The payload of a close frame: the code, then the reason."""
    return struct.pack("!H", code) + reason.encode()
