"""HTTP/1.1 on the relay's port, parsed with h11: a request head, its body, a response.

One error type for the whole boundary: every refusal is an HttpError carrying the status
to answer with (as h11's `error_status_hint` does), so a route raises and the listener or
the route's own handler answers. The bytes read while parsing the head are kept, so a
websocket upgrade can hand them to the stream under trio-websocket (`server/wsstream`).
Every response head is made by `response_head`, which adds the CORS headers: any answer on
the port, an error included, can be read by a web page of any origin.
Imported by both the websocket server and the git routes; it imports nothing of the relay.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import BinaryIO

import h11
import trio

MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT_SECONDS = 10.0
RECEIVE_CHUNK = 16 * 1024

BodySink = Callable[[bytes], Awaitable[None]]

# On every response (not the websocket's 101, which trio-websocket writes): browser Nostr and
# git clients on any origin may read each answer, its error statuses, and the headers that
# tell them to authenticate or retry. A preflight (OPTIONS) is answered 204 by the listener.
CORS_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
    (
        "Access-Control-Allow-Headers",
        "Authorization, Content-Type, Git-Protocol, Accept, Content-Encoding, X-Requested-With",
    ),
    ("Access-Control-Expose-Headers", "WWW-Authenticate, Retry-After"),
)
PREFLIGHT_MAX_AGE_SECONDS = 86400


class HttpError(Exception):
    """A request refused with `status`; `message` is the plain-text body (one line)."""

    def __init__(
        self, status: int, message: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


async def refuse(stream: trio.abc.Stream, refusal: HttpError) -> None:
    """Answer with the refusal's status, headers and message (the connection closes)."""
    body = (refusal.message + "\n").encode()
    await respond(stream, refusal.status, body, extra_headers=refusal.headers)


class BodyTooLarge(HttpError):
    """The request body (or what it decompresses to) is larger than the route allows."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


class BadGzip(HttpError, ValueError):
    """A body sent with Content-Encoding: gzip is not one whole gzip stream."""

    def __init__(self, detail: str) -> None:
        super().__init__(400, f"the request body is not valid gzip: {detail}")


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    raw: bytes  # every byte read from the socket so far
    conn: h11.Connection | None  # None once `hand_over` gave the bytes away
    # The client allows another request on the connection (HTTP/1.1 without Connection:
    # close) and the server is willing; `reusable` also asks that the body was all read.
    persistent: bool = False
    # Whether the answer said `Connection: keep-alive` (the connection then serves the next).
    kept_alive: bool = False

    def reusable(self) -> bool:
        """Whether the connection can serve another request after the answer to this one:
        persistent, and the whole body read (a body nobody read is never skipped over)."""
        conn = self.conn
        if not self.persistent or conn is None:
            return False
        if conn.their_state is h11.SEND_BODY:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return False
            if not isinstance(event, h11.EndOfMessage):
                return False
        return conn.their_state is h11.DONE

    def leftover(self) -> bytes:
        """Bytes the client sent after this request (the start of its next one)."""
        return bytes(self.conn.trailing_data[0]) if self.conn is not None else b""

    def hand_over(self) -> bytes:
        """Every byte read so far, for a protocol that takes over the connection (a
        websocket); the request keeps neither them nor its parser, which a long-lived
        connection would otherwise carry to its end."""
        raw, self.raw, self.conn = self.raw, b"", None
        return raw

    @property
    def parser(self) -> h11.Connection:
        if self.conn is None:
            raise HttpError(500, "the request was handed over to another protocol")
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


async def read_request(
    stream: trio.abc.Stream, leftover: bytes = b"", *, idle: bool = False
) -> Request | None:
    """The next request head, or None if the peer closed before sending one. `leftover`
    is what the client sent after its previous request on the connection; `idle` says the
    connection is between requests (kept alive), so a client that sends nothing within
    HEAD_TIMEOUT_SECONDS is let go without a 408."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    raw = bytearray(leftover)
    if leftover:
        conn.receive_data(leftover)
    with trio.move_on_after(HEAD_TIMEOUT_SECONDS) as timeout:
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise HttpError(exc.error_status_hint, f"bad request: {exc}") from None
            if isinstance(event, h11.Request):
                # h11 bounds only a head still incomplete; one that arrived whole in a
                # couple of reads is held to the same limit here.
                if len(raw) - len(conn.trailing_data[0]) > MAX_HEAD_BYTES:
                    raise HttpError(431, "request header fields too large")
                headers: dict[str, str] = {}
                for name, value in event.headers:
                    key = name.decode("latin-1").lower()
                    text = value.decode("latin-1")
                    headers[key] = f"{headers[key]}, {text}" if key in headers else text
                tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
                return Request(
                    method=event.method.decode("ascii"),
                    target=event.target.decode("latin-1"),
                    headers=headers,
                    raw=bytes(raw),
                    conn=conn,
                    persistent=event.http_version == b"1.1" and "close" not in tokens,
                )
            if event is h11.NEED_DATA:
                data = await stream.receive_some(RECEIVE_CHUNK)
                if not data:
                    return None
                raw += data
                conn.receive_data(bytes(data))
            else:
                return None
    if timeout.cancelled_caught and not (idle and not raw):
        raise HttpError(408, "request head not received in time")
    return None


# The request the current task is answering (set by the listener for each request): its
# answer says `Connection: keep-alive` only when the connection can serve another.
_answering: ContextVar[Request | None] = ContextVar("answering", default=None)


@contextmanager
def answering(request: Request) -> Iterator[None]:
    """Responses sent inside the block answer `request`."""
    token = _answering.set(request)
    try:
        yield
    finally:
        _answering.reset(token)


def _connection() -> str:
    request = _answering.get()
    if request is not None and not request.kept_alive and request.reusable():
        request.kept_alive = True
        return "keep-alive"
    return "close"


def response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    """The status line and `headers`, then the CORS headers, which every response has."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {status} {phrase}", *(f"{k}: {v}" for k, v in (*headers, *CORS_HEADERS))]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def respond(
    stream: trio.abc.Stream,
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    extra_headers: list[tuple[str, str]] | None = None,
    *,
    send_body: bool = True,
) -> None:
    """Send a complete response (the connection is kept for the next request when the
    request being answered allows it: see `answering`).
    Without `send_body` (an answer to HEAD) the head says the length the body would have."""
    framing = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    if status == 204:  # a preflight's answer: no body, and nothing said of one (RFC 9110 8.6)
        framing = []
    headers = [*framing, ("Connection", _connection()), *(extra_headers or [])]
    await stream.send_all(response_head(status, headers) + (body if send_body else b""))


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
    HttpError 400 when the client stops before the end of the body.
    """
    conn = request.parser
    if conn.they_are_waiting_for_100_continue:
        await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
    total = 0
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise HttpError(400, f"bad request body: {exc}") from None
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
                raise HttpError(400, "the request body ended early")
            conn.receive_data(bytes(data))
        else:
            raise HttpError(400, "unexpected data in the request body")


async def discard_body(stream: trio.abc.Stream, request: Request, max_bytes: int) -> bool:
    """Read and drop what is left of the request body, so the client reads an answer it
    sent the whole body for; False when more than `max_bytes` are left (then the caller
    closes the connection instead)."""
    if request.parser.their_state is not h11.SEND_BODY:  # the body has all been read
        return True

    async def drop(chunk: bytes) -> None:
        pass

    try:
        await read_body(stream, request, max_bytes, drop)
    except BodyTooLarge:
        return False
    return True


class CountingStream(trio.abc.Stream):
    """A stream that counts the bytes through it (for the access log)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.received = 0
        self.sent = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self.inner.receive_some(max_bytes)
        self.received += len(data)
        return bytes(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)
        self.sent += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        raise NotImplementedError("the relay never half-closes an HTTP answer")

    async def aclose(self) -> None:
        await self.inner.aclose()


def is_gzipped(request: Request) -> bool:
    return request.header("content-encoding").strip().lower() == "gzip"


async def read_decoded_body(stream: trio.abc.Stream, request: Request, max_bytes: int) -> bytes:
    """The whole request body in memory, gunzipped when it says Content-Encoding: gzip;
    neither what arrives nor what it decompresses to may exceed `max_bytes`."""
    parts: list[bytes] = []

    async def keep(chunk: bytes) -> None:
        parts.append(chunk)

    await read_body(stream, request, max_bytes, keep)
    body = b"".join(parts)
    if not is_gzipped(request):
        return body
    out: list[bytes] = []
    await trio.to_thread.run_sync(gunzip, io.BytesIO(body), out.append, max_bytes)
    return b"".join(out)


async def spool_decoded_body(
    stream: trio.abc.Stream, request: Request, path: Path, max_bytes: int
) -> None:
    """The request body written to the file `path`, gunzipped when it says so, within
    `max_bytes` both ways: for bodies too large to hold in memory (a pushed pack)."""
    gzipped = is_gzipped(request)
    received = path.with_suffix(".gz") if gzipped else path
    handle = await trio.open_file(received, "wb")
    async with handle:
        await read_body(stream, request, max_bytes, handle.write)  # type: ignore[arg-type]
    if gzipped:
        try:
            await trio.to_thread.run_sync(_gunzip_file, received, path, max_bytes)
        finally:
            received.unlink(missing_ok=True)


def _gunzip_file(source: Path, target: Path, max_bytes: int) -> None:
    """The gzip file `source` decompressed into `target`, at most `max_bytes` of it (the
    caller removes a partial `target` when the limit refuses the body)."""
    with open(source, "rb") as compressed, open(target, "wb") as plain:
        gunzip(compressed, plain.write, max_bytes)


async def send_chunked(
    stream: trio.abc.Stream,
    status: int,
    content_type: str,
    chunks: AsyncIterator[bytes],
    extra_headers: list[tuple[str, str]] | None = None,
) -> None:
    """Stream a response body with chunked transfer encoding."""
    headers = [
        ("Content-Type", content_type),
        ("Transfer-Encoding", "chunked"),
        ("Connection", _connection()),
        *(extra_headers or []),
    ]
    await stream.send_all(response_head(status, headers))
    async for chunk in chunks:
        if chunk:
            await stream.send_all(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    await stream.send_all(b"0\r\n\r\n")
