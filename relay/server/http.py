"""Plain HTTP on the relay's port, parsed with h11: read a request head, send a response.

The bytes read while parsing are kept so a websocket upgrade can replay them into
trio-websocket, which then performs the handshake itself.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import BinaryIO

import h11
import trio

MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT_SECONDS = 10.0
RECEIVE_CHUNK = 16 * 1024

BodySink = Callable[[bytes], Awaitable[None]]


class BadRequest(Exception):
    """The bytes are not an HTTP/1.1 request head we can act on."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    raw: bytes  # every byte read from the socket so far
    conn: h11.Connection | None  # None once `hand_over` gave the bytes away

    def hand_over(self) -> bytes:
        """Every byte read so far, for a protocol that takes over the connection (a
        websocket); the request keeps neither them nor its parser, which a long-lived
        connection would otherwise carry to its end."""
        raw, self.raw, self.conn = self.raw, b"", None
        return raw

    @property
    def parser(self) -> h11.Connection:
        if self.conn is None:
            raise BadRequest(500, "the request was handed over to another protocol")
        return self.conn

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    @property
    def wants_websocket(self) -> bool:
        return self.header("upgrade").lower() == "websocket"


async def read_request(stream: trio.abc.Stream) -> Request | None:
    """The next request head, or None if the peer closed before sending one."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    raw = bytearray()
    with trio.move_on_after(HEAD_TIMEOUT_SECONDS) as timeout:
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise BadRequest(exc.error_status_hint, f"bad request: {exc}") from None
            if isinstance(event, h11.Request):
                headers: dict[str, str] = {}
                for name, value in event.headers:
                    key = name.decode("latin-1").lower()
                    text = value.decode("latin-1")
                    headers[key] = f"{headers[key]}, {text}" if key in headers else text
                return Request(
                    method=event.method.decode("ascii"),
                    target=event.target.decode("latin-1"),
                    headers=headers,
                    raw=bytes(raw),
                    conn=conn,
                )
            if event is h11.NEED_DATA:
                data = await stream.receive_some(RECEIVE_CHUNK)
                if not data:
                    return None
                raw += data
                conn.receive_data(bytes(data))
            else:
                return None
    if timeout.cancelled_caught:
        raise BadRequest(408, "request head not received in time")
    return None


def response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {status} {phrase}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def respond(
    stream: trio.abc.Stream,
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    extra_headers: list[tuple[str, str]] | None = None,
) -> None:
    """Send a complete response; the connection is closed after it (one request each)."""
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
        *(extra_headers or []),
    ]
    await stream.send_all(response_head(status, headers) + body)


class BodyTooLarge(Exception):
    """The request body is larger than the route allows."""


class BadGzip(ValueError):
    """A body sent with Content-Encoding: gzip is not one whole gzip stream."""


GUNZIP_CHUNK = 256 * 1024


def gunzip(source: BinaryIO, sink: Callable[[bytes], object], max_bytes: int) -> int:
    """Decompress the gzip stream read from `source` into `sink` a chunk at a time; the
    decompressed length. BodyTooLarge as soon as more than `max_bytes` come out (a few KB of
    gzip can announce gigabytes), BadGzip if it is not one complete gzip member. Blocking:
    run it in a worker thread."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    total = 0
    try:
        while chunk := source.read(GUNZIP_CHUNK):
            while chunk and not decompressor.eof:
                out = decompressor.decompress(chunk, GUNZIP_CHUNK)
                total += len(out)
                if total > max_bytes:
                    raise BodyTooLarge(f"the decompressed body is larger than {max_bytes} bytes")
                sink(out)
                chunk = decompressor.unconsumed_tail
            if decompressor.eof and (chunk or decompressor.unused_data):
                raise BadGzip("data after the end of the gzip stream")
    except zlib.error as exc:
        raise BadGzip(f"not valid gzip: {exc}") from None
    if not decompressor.eof:
        raise BadGzip("the gzip stream ends early")
    return total


async def read_body(
    stream: trio.abc.Stream, request: Request, max_bytes: int, sink: BodySink
) -> int:
    """Feed the request body (plain or chunked) to `sink`; returns its length.

    Answers `Expect: 100-continue` first. Raises BodyTooLarge past `max_bytes` and
    BadRequest when the client stops before the end of the body.
    """
    conn = request.parser
    if conn.they_are_waiting_for_100_continue:
        await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
    total = 0
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise BadRequest(400, f"bad request body: {exc}") from None
        if isinstance(event, h11.Data):
            total += len(event.data)
            if total > max_bytes:
                raise BodyTooLarge(f"request body larger than {max_bytes} bytes")
            await sink(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return total
        elif event is h11.NEED_DATA:
            data = await stream.receive_some(RECEIVE_CHUNK)
            if not data:
                raise BadRequest(400, "the request body ended early")
            conn.receive_data(bytes(data))
        else:
            raise BadRequest(400, "unexpected data in the request body")


async def send_chunked(
    stream: trio.abc.Stream,
    status: int,
    content_type: str,
    chunks: AsyncIterator[bytes],
    extra_headers: list[tuple[str, str]] | None = None,
) -> None:
    """Stream a response body with chunked transfer encoding, then close."""
    headers = [
        ("Content-Type", content_type),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "close"),
        *(extra_headers or []),
    ]
    await stream.send_all(response_head(status, headers))
    async for chunk in chunks:
        if chunk:
            await stream.send_all(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    await stream.send_all(b"0\r\n\r\n")
