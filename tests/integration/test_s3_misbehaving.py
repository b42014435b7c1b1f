"""The S3 store and the conformance probe against servers that misbehave on purpose.

A small HTTP/1.1 server (h11 on trio, loopback, port 0) runs in the test's nursery; each
test chooses how it answers: error statuses, missing ETags, connection resets, oversized
bodies, a store that ignores conditional headers, a tarpit that never answers. The S3
store must turn each of these into its typed outcome or error (see relay/git/s3store.py),
and the probe must refuse a store that does not honour conditional writes.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import h11
import pytest
import trio

from relay.git.objectstore import (
    BackendError,
    Found,
    LostRace,
    StoreError,
    TooLarge,
    TransportError,
    Won,
)
from relay.git.probe import Probe
from relay.git.s3store import S3Config, S3Store
from tests.helpers import RELAY_CLI, clean_environ
from tests.services import MOTO_KEY

ACCESS_KEY = "AKIDMISBEHAVE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
MAX_REQUESTS_PER_CONNECTION = 1000
MAX_READS_PER_REQUEST = 10_000
ETAG = '"e1"'


# --- the fake server ---------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    target: str  # the raw request target, percent-encoding as sent
    headers: dict[str, str]  # names lowercased; repeated names joined with ","
    body: bytes
    n: int  # 1 for the first request with this method, 2 for the second, ...

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    # Send these as a chunked body instead of `body` (no Content-Length).
    chunks: list[bytes] | None = None
    # Send the headers and the body so far, then never finish the message.
    hang: bool = False


@dataclass
class Reset:
    """Read the request, then close the connection abruptly (RST) without answering."""


@dataclass
class Hang:
    """Read the request, then never answer."""


Action = Reply | Reset | Hang
Handler = Callable[[Seen], Action]


class FakeS3:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.seen: list[Seen] = []
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self, method: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method]

    async def start(self, nursery: trio.Nursery) -> FakeS3:
        listeners = await nursery.start(
            partial(trio.serve_tcp, self._connection, 0, host="127.0.0.1")
        )
        self.port = listeners[0].socket.getsockname()[1]
        return self

    async def _read_request(
        self, stream: trio.SocketStream, conn: h11.Connection
    ) -> Seen | None:
        method = target = ""
        headers: dict[str, str] = {}
        body = bytearray()
        for _ in range(MAX_READS_PER_REQUEST):
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                method = event.method.decode()
                target = event.target.decode("latin-1")
                for name, value in event.headers:
                    key = name.decode().lower()
                    text = value.decode("latin-1")
                    headers[key] = f"{headers[key]},{text}" if key in headers else text
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                n = len(self.requests(method)) + 1
                return Seen(method, target, headers, bytes(body), n)
            else:  # ConnectionClosed, or PAUSED after a closed cycle
                return None
        raise AssertionError("request never finished")

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            for _ in range(MAX_REQUESTS_PER_CONNECTION):
                seen = await self._read_request(stream, conn)
                if seen is None:
                    return
                self.seen.append(seen)
                action = self.handler(seen)
                if isinstance(action, Reset):
                    stream.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    return
                if isinstance(action, Hang):
                    await trio.sleep_forever()
                await self._answer(stream, conn, action)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            await stream.aclose()

    async def _answer(self, stream: trio.SocketStream, conn: h11.Connection, reply: Reply) -> None:
        headers = list(reply.headers)
        named = {name.lower() for name, _ in headers}
        if reply.chunks is None and "content-length" not in named and reply.status not in (
            204,
            304,
        ):
            headers.append(("Content-Length", str(len(reply.body))))
        await stream.send_all(conn.send(h11.Response(status_code=reply.status, headers=headers)))
        for piece in reply.chunks if reply.chunks is not None else [reply.body]:
            if piece:
                await stream.send_all(conn.send(h11.Data(data=piece)))
        if reply.hang:
            await trio.sleep_forever()
        await stream.send_all(conn.send(h11.EndOfMessage()))


class MemoryS3:
    """An in-memory S3 that may honour or ignore the conditional headers.

    Each request is handled synchronously, so an honest instance makes every conditional
    write atomic. With both flags off it is the "lying" store: every PUT wins with a fresh
    ETag and a GET serves the last body written.
    """

    def __init__(self, *, honour_if_match: bool = True, honour_if_none_match: bool = True):
        self.honour_if_match = honour_if_match
        self.honour_if_none_match = honour_if_none_match
        self.objects: dict[str, tuple[bytes, str]] = {}
        self._versions = itertools.count(1)

    def __call__(self, req: Seen) -> Action:
        key = req.path
        current = self.objects.get(key)
        if req.method == "GET":
            if current is None:
                return Reply(404, body=b"<Error><Code>NoSuchKey</Code></Error>")
            return Reply(200, [("ETag", current[1])], current[0])
        if req.method == "PUT":
            create_only = req.headers.get("if-none-match") == "*"
            if self.honour_if_none_match and create_only and current is not None:
                return Reply(412)
            if_match = req.headers.get("if-match")
            if self.honour_if_match and if_match is not None:
                if current is None:
                    return Reply(404)
                if current[1] != if_match:
                    return Reply(412)
            etag = f'"v{next(self._versions)}"'
            self.objects[key] = (req.body, etag)
            return Reply(200, [("ETag", etag)])
        if req.method == "DELETE":
            self.objects.pop(key, None)
            return Reply(204)
        return Reply(405)


async def serve(nursery: trio.Nursery, handler: Handler) -> FakeS3:
    return await FakeS3(handler).start(nursery)


@asynccontextmanager
async def store_on(server: FakeS3, **overrides: Any) -> AsyncIterator[S3Store]:
    values: dict[str, Any] = {
        "endpoint": server.endpoint,
        "bucket": "b",
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
        "timeout_seconds": 1.0,
    }
    values.update(overrides)
    store = S3Store(S3Config(**values))
    try:
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()


def always(action: Action) -> Handler:
    return lambda _req: action


Op = Callable[[S3Store], Awaitable[Any]]
OPS: dict[str, Op] = {
    "get": lambda s: s.get("k"),
    "create": lambda s: s.put("k", b"body", None),
    "replace": lambda s: s.put("k", b"body", ETAG),
    "delete": lambda s: s.delete("k"),
}
METHOD = {"get": "GET", "create": "PUT", "replace": "PUT", "delete": "DELETE"}


# --- classification of answers --------------------------------------------------------------


@pytest.mark.parametrize("op", ["get", "create", "replace", "delete"])
async def test_forbidden_is_a_backend_error_not_an_outcome(
    nursery: trio.Nursery, op: str
) -> None:
    server = await serve(nursery, always(Reply(403, body=b"<Error>AccessDenied</Error>")))
    async with store_on(server) as store:
        with trio.fail_after(10), pytest.raises(BackendError, match="403"):
            await OPS[op](store)
    assert len(server.seen) == 1  # an answer, even a bad one, is never retried


@pytest.mark.parametrize("status", [500, 503])
async def test_server_error_on_get_is_a_backend_error_seen_once(
    nursery: trio.Nursery, status: int
) -> None:
    # 5xx is a classified answer (BackendError); only transport failures are retried.
    server = await serve(nursery, always(Reply(status, body=b"<Error>oops</Error>")))
    async with store_on(server) as store:
        with trio.fail_after(10), pytest.raises(BackendError, match=str(status)):
            await store.get("k")
    assert len(server.requests("GET")) == 1


@pytest.mark.parametrize("status", [500, 503])
@pytest.mark.parametrize("op", ["create", "replace"])
async def test_server_error_on_put_is_a_backend_error_seen_once(
    nursery: trio.Nursery, op: str, status: int
) -> None:
    server = await serve(nursery, always(Reply(status)))
    async with store_on(server) as store:
        with trio.fail_after(10), pytest.raises(BackendError, match=str(status)):
            await OPS[op](store)
    assert len(server.requests("PUT")) == 1


@pytest.mark.parametrize(
    ("op", "reply"),
    [
        ("get", Reply(200, body=b"data")),
        ("create", Reply(200)),
        ("replace", Reply(200)),
        ("create", Reply(204)),
        ("replace", Reply(201)),
    ],
    ids=["get-200", "create-200", "replace-200", "create-204", "replace-201"],
)
async def test_success_without_etag_is_a_backend_error(
    nursery: trio.Nursery, op: str, reply: Reply
) -> None:
    server = await serve(nursery, always(reply))
    async with store_on(server) as store:
        with trio.fail_after(10), pytest.raises(BackendError, match="ETag"):
            await OPS[op](store)


@pytest.mark.parametrize(
    ("status", "op"),
    [(412, "create"), (412, "replace"), (409, "create"), (409, "replace"), (404, "replace")],
)
async def test_refused_conditional_write_is_a_lost_race(
    nursery: trio.Nursery, status: int, op: str
) -> None:
    server = await serve(nursery, always(Reply(status, body=b"<Error/>")))
    async with store_on(server) as store:
        with trio.fail_after(10):
            assert await OPS[op](store) == LostRace()
    assert len(server.requests("PUT")) == 1


async def test_404_on_a_create_only_put_is_a_backend_error(nursery: trio.Nursery) -> None:
    # Only an If-Match write may find its object gone; a create-only 404 means no bucket.
    server = await serve(nursery, always(Reply(404)))
    async with store_on(server) as store:
        with trio.fail_after(10), pytest.raises(BackendError, match="404"):
            await store.put("k", b"body", None)


async def test_404_on_get_reads_as_absent(nursery: trio.Nursery) -> None:
    server = await serve(nursery, always(Reply(404, body=b"<Error>NoSuchKey</Error>")))
    async with store_on(server) as store:
        with trio.fail_after(10):
            assert await store.get("k") is None
    assert len(server.requests("GET")) == 1


@pytest.mark.parametrize(
    "etag", ['"abc"', 'W/"x"', '"d41d8cd98f00b204e9800998ecf8427e-2"', "bare-token", '"a b"']
)
async def test_etag_is_echoed_byte_for_byte(nursery: trio.Nursery, etag: str) -> None:
    def handler(req: Seen) -> Action:
        return Reply(200, [("ETag", etag)], b"pointer" if req.method == "GET" else b"")

    server = await serve(nursery, handler)
    async with store_on(server) as store:
        with trio.fail_after(10):
            found = await store.get("k")
            assert found == Found(b"pointer", etag)
            won = await store.put("k", b"next", found.token)
            assert won == Won(etag)
            assert await store.put("k", b"after", won.token) == Won(etag)
    puts = server.requests("PUT")
    assert [p.headers.get("if-match") for p in puts] == [etag, etag]
    assert all("if-none-match" not in p.headers for p in puts)


# --- retries: transport failures only, never for pointer replacements ---------------------


async def test_reset_on_the_first_get_is_retried(nursery: trio.Nursery) -> None:
    def handler(req: Seen) -> Action:
        return Reset() if req.n == 1 else Reply(200, [("ETag", ETAG)], b"second try")

    server = await serve(nursery, handler)
    async with store_on(server) as store:
        with trio.fail_after(10):
            assert await store.get("k") == Found(b"second try", ETAG)
    assert len(server.requests("GET")) == 2


async def test_persistent_reset_on_get_gives_up_after_three_attempts(
    nursery: trio.Nursery,
) -> None:
    server = await serve(nursery, always(Reset()))
    async with store_on(server) as store:
        with trio.fail_after(10), pytest.raises(TransportError):
            await store.get("k")
    assert len(server.requests("GET")) == 3


async def test_reset_on_a_pointer_replacement_is_never_retried(nursery: trio.Nursery) -> None:
    def handler(req: Seen) -> Action:
        return Reset() if req.n == 1 else Reply(200, [("ETag", '"v2"')])

    server = await serve(nursery, handler)
    async with store_on(server) as store:
        with trio.fail_after(10), pytest.raises(TransportError):
            await store.put("k", b"body", ETAG)
        await trio.sleep(0.6)  # longer than every retry delay: no late second attempt
    puts = server.requests("PUT")
    assert len(puts) == 1 and puts[0].headers["if-match"] == ETAG


async def test_reset_on_a_create_only_put_is_retried(nursery: trio.Nursery) -> None:
    def handler(req: Seen) -> Action:
        return Reset() if req.n == 1 else Reply(200, [("ETag", '"v1"')])

    server = await serve(nursery, handler)
    async with store_on(server) as store:
        with trio.fail_after(10):
            assert await store.put("k", b"body", None) == Won('"v1"')
    puts = server.requests("PUT")
    assert len(puts) == 2
    assert all(p.headers.get("if-none-match") == "*" and p.body == b"body" for p in puts)


# --- size caps -----------------------------------------------------------------------------


async def test_declared_length_over_the_cap_is_too_large_without_reading_the_body(
    nursery: trio.Nursery,
) -> None:
    # Declares a megabyte, sends ten bytes and stops: reading the body would time out
    # (a TransportError after the 5 s timeout), so TooLarge in time proves it was not read.
    reply = Reply(200, [("ETag", ETAG), ("Content-Length", "1000000")], b"x" * 10, hang=True)
    server = await serve(nursery, always(reply))
    async with store_on(server, timeout_seconds=5.0) as store:
        with trio.fail_after(3), pytest.raises(TooLarge):
            await store.get("k", max_bytes=1000)
    assert len(server.requests("GET")) == 1


async def test_chunked_body_over_the_cap_is_too_large(nursery: trio.Nursery) -> None:
    # 20 KiB of chunks and then the message never ends: the store must stop at the cap.
    reply = Reply(200, [("ETag", ETAG)], chunks=[b"y" * 1024] * 20, hang=True)
    server = await serve(nursery, always(reply))
    async with store_on(server, timeout_seconds=5.0) as store:
        with trio.fail_after(3), pytest.raises(TooLarge):
            await store.get("k", max_bytes=10_000)


async def test_chunked_body_within_the_cap_is_read_whole(nursery: trio.Nursery) -> None:
    reply = Reply(200, [("ETag", ETAG)], chunks=[b"z" * 1000] * 5)
    server = await serve(nursery, always(reply))
    async with store_on(server) as store:
        with trio.fail_after(10):
            assert await store.get("k", max_bytes=5000) == Found(b"z" * 5000, ETAG)


async def test_body_cut_short_after_a_200_is_a_transport_error(nursery: trio.Nursery) -> None:
    reply = Reply(200, [("ETag", ETAG), ("Content-Length", "100")], b"x" * 10, hang=True)
    server = await serve(nursery, always(reply))
    async with store_on(server, timeout_seconds=0.5) as store:
        with trio.fail_after(10), pytest.raises(TransportError):
            await store.get("k", max_bytes=1000)


async def test_error_answer_with_a_stalled_body_is_a_store_error(nursery: trio.Nursery) -> None:
    reply = Reply(503, [("Content-Length", "100")], b"<Error>", hang=True)
    server = await serve(nursery, always(reply))
    async with store_on(server, timeout_seconds=0.5) as store:
        with trio.fail_after(10), pytest.raises(StoreError):
            await store.get("k")


# --- the conformance probe -------------------------------------------------------------------


async def test_probe_passes_on_an_honest_store(nursery: trio.Nursery) -> None:
    # The control for the lying stores below: the fake itself is a conforming S3.
    server = await serve(nursery, MemoryS3())
    async with store_on(server) as store:
        with trio.fail_after(20):
            report = await Probe(store, writers=8, rounds=2).run()
    assert report.ok, report.render()
    assert [p.name for p in report.phases] == [
        "sequential",
        "if_match_race",
        "if_none_match_race",
        "etag_round_trip",
    ]


async def test_probe_fails_a_store_that_ignores_if_match(nursery: trio.Nursery) -> None:
    server = await serve(nursery, MemoryS3(honour_if_match=False, honour_if_none_match=False))
    async with store_on(server) as store:
        with trio.fail_after(20):
            report = await Probe(store, writers=8, rounds=2).run()
    assert not report.ok
    failed = report.phases[-1]
    assert failed.name == "if_match_race" and not failed.ok, report.render()
    assert "If-Match" in failed.detail and "8 of 8" in failed.detail
    assert [p.ok for p in report.phases[:-1]] == [True]  # sequential passed
    assert "FAILED" in report.render()


async def test_probe_fails_a_store_that_ignores_if_none_match(nursery: trio.Nursery) -> None:
    server = await serve(nursery, MemoryS3(honour_if_none_match=False))
    async with store_on(server) as store:
        with trio.fail_after(20):
            report = await Probe(store, writers=8, rounds=2).run()
    assert not report.ok
    failed = report.phases[-1]
    assert failed.name == "if_none_match_race" and not failed.ok, report.render()
    assert "If-None-Match" in failed.detail


# --- a tarpit: accepts connections, never answers -------------------------------------------


@pytest.mark.parametrize(
    ("op", "attempts"), [("get", 3), ("create", 3), ("replace", 1), ("delete", 3)]
)
async def test_tarpit_times_out_every_op(nursery: trio.Nursery, op: str, attempts: int) -> None:
    server = await serve(nursery, always(Hang()))
    async with store_on(server, timeout_seconds=1.0) as store:
        started = time.monotonic()
        with trio.fail_after(10), pytest.raises(TransportError):
            await OPS[op](store)
        elapsed = time.monotonic() - started
    assert len(server.requests(METHOD[op])) == attempts
    # Each attempt waits out the 1 s timeout; retries add 0.1 s and 0.4 s of back-off.
    assert attempts * 1.0 - 0.1 <= elapsed < attempts * 1.0 + 0.5 + 2.0


async def test_probe_on_a_tarpit_fails_quickly(nursery: trio.Nursery) -> None:
    server = await serve(nursery, always(Hang()))
    async with store_on(server) as store:
        started = time.monotonic()
        with trio.fail_after(10):
            report = await Probe(store, writers=4, rounds=1, op_timeout=0.5, deadline=5).run()
        elapsed = time.monotonic() - started
    assert not report.ok
    assert elapsed < 3
    assert report.phases[0].name == "sequential" and not report.phases[0].ok
    assert "no answer within 0.5 s" in report.phases[0].detail
    assert "FAILED" in report.render()


async def test_probe_on_a_tarpit_counts_the_drops(nursery: trio.Nursery) -> None:
    server = await serve(nursery, always(Hang()))
    async with store_on(server) as store:
        with trio.fail_after(10):
            report = await Probe(store, writers=4, rounds=1, op_timeout=0.5, deadline=5).run()
    assert not report.ok
    assert report.transport_drops >= 1, report.render()


async def test_probe_counts_drops_when_the_race_gets_no_answer(nursery: trio.Nursery) -> None:
    # Honest, except that pointer replacements (If-Match PUTs) fall into a tarpit.
    honest = MemoryS3()

    def handler(req: Seen) -> Action:
        return Hang() if "if-match" in req.headers else honest(req)

    server = await serve(nursery, handler)
    async with store_on(server) as store:
        started = time.monotonic()
        with trio.fail_after(10):
            report = await Probe(store, writers=4, rounds=1, op_timeout=0.5, deadline=5).run()
        elapsed = time.monotonic() - started
    assert elapsed < 5
    assert not report.ok
    assert [(p.name, p.ok) for p in report.phases] == [
        ("sequential", True),
        ("if_match_race", False),
    ]
    assert "fewer than two writers" in report.phases[-1].detail
    assert report.transport_drops == 4
    assert "transport drops: 4" in report.render()


async def test_probe_deadline_shorter_than_the_op_timeouts(nursery: trio.Nursery) -> None:
    server = await serve(nursery, always(Hang()))
    async with store_on(server, timeout_seconds=10.0) as store:
        started = time.monotonic()
        with trio.fail_after(10):
            report = await Probe(store, writers=4, rounds=1, op_timeout=5, deadline=0.5).run()
        elapsed = time.monotonic() - started
    assert elapsed < 3
    assert not report.ok
    assert report.phases[-1].name == "deadline" and not report.phases[-1].ok
    assert "0.5 s" in report.phases[-1].detail


# --- signing and addressing ---------------------------------------------------------------


AUTH_RE = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<access>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/s3/"
    r"aws4_request,\s*SignedHeaders=(?P<signed>[a-z0-9;-]+),\s*Signature=(?P<sig>[0-9a-f]{64})"
)


def check_signature(req: Seen, access: str, secret: str, region: str = "us-east-1") -> None:
    """Verify a request's SigV4 Authorization as S3 would, from what arrived on the wire."""
    match = AUTH_RE.fullmatch(req.headers["authorization"])
    assert match is not None, req.headers["authorization"]
    assert match["access"] == access and match["region"] == region
    amz_date = req.headers["x-amz-date"]
    assert re.fullmatch(r"\d{8}T\d{6}Z", amz_date) and amz_date[:8] == match["date"]
    signed = match["signed"].split(";")
    assert signed == sorted(signed)
    assert {"host", "x-amz-date", "x-amz-content-sha256"} <= set(signed)
    block = "".join(f"{name}:{' '.join(req.headers[name].split())}\n" for name in signed)
    path, _, query = req.target.partition("?")
    canonical = "\n".join(
        [
            req.method,
            quote(unquote_to_bytes(path), safe="/~"),
            query,  # the store sends no query strings
            block,
            match["signed"],
            req.headers["x-amz-content-sha256"],
        ]
    )
    scope = f"{match['date']}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{secret}".encode()
    for part in (match["date"], region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, match["sig"]), "signature does not verify"


async def test_requests_are_signed(nursery: trio.Nursery) -> None:
    server = await serve(nursery, MemoryS3())
    body = b"some pack bytes \x00\xff"
    async with store_on(server) as store:
        with trio.fail_after(10):
            won = await store.put("packs/abc", body, None)
            assert isinstance(won, Won)
            assert await store.put("packs/abc", b"two", won.token) == Won('"v2"')
            assert await store.get("packs/abc") == Found(b"two", '"v2"')
            await store.delete("packs/abc")
    assert [s.method for s in server.seen] == ["PUT", "PUT", "GET", "DELETE"]
    for req in server.seen:
        assert req.headers["x-amz-content-sha256"] == hashlib.sha256(req.body).hexdigest()
        check_signature(req, ACCESS_KEY, SECRET_KEY)
        assert req.headers["host"] == f"127.0.0.1:{server.port}"
    assert server.seen[0].body == body
    # The condition headers are signed, so a proxy cannot strip them unnoticed.
    assert "if-none-match" in server.seen[0].headers["authorization"]
    assert "if-match" in server.seen[1].headers["authorization"]


async def test_requests_are_unsigned_without_keys(nursery: trio.Nursery) -> None:
    server = await serve(nursery, MemoryS3())
    async with store_on(server, access_key=None, secret_key=None) as store:
        with trio.fail_after(10):
            assert isinstance(await store.put("k", b"x", None), Won)
            assert await store.get("k") is not None
    assert len(server.seen) == 2
    for req in server.seen:
        assert "authorization" not in req.headers
        assert "x-amz-date" not in req.headers


KEY_NEEDING_ENCODING = "probe/a b+c$&=?#%~é/ü"
ENCODED_KEY = "probe/a%20b%2Bc%24%26%3D%3F%23%25~%C3%A9/%C3%BC"


@pytest.mark.parametrize(
    ("endpoint", "addressing", "key", "url"),
    [
        ("http://127.0.0.1:9000", "path", "packs/k", "http://127.0.0.1:9000/b/packs/k"),
        ("http://s3.test:9000", "path", None, "http://s3.test:9000/b"),
        ("https://s3.test", "path", "k", "https://s3.test/b/k"),
        ("http://s3.test:9000", "virtual", "packs/k", "http://b.s3.test:9000/packs/k"),
        ("http://s3.test:9000", "virtual", None, "http://b.s3.test:9000/"),
        ("https://s3.test", "virtual", "k", "https://b.s3.test/k"),
        ("http://s3.test:9000", "path", KEY_NEEDING_ENCODING,
         f"http://s3.test:9000/b/{ENCODED_KEY}"),
        ("http://s3.test:9000", "virtual", KEY_NEEDING_ENCODING,
         f"http://b.s3.test:9000/{ENCODED_KEY}"),
    ],
)
def test_url_shapes(endpoint: str, addressing: str, key: str | None, url: str) -> None:
    store = S3Store(S3Config(endpoint=endpoint, bucket="b", addressing=addressing))
    assert store.url(key) == url


async def test_key_needing_encoding_is_sent_as_signed(nursery: trio.Nursery) -> None:
    server = await serve(nursery, MemoryS3())
    async with store_on(server) as store:
        with trio.fail_after(10):
            assert isinstance(await store.put(KEY_NEEDING_ENCODING, b"x", None), Won)
            found = await store.get(KEY_NEEDING_ENCODING)
    assert found is not None and found.body == b"x"
    for req in server.seen:
        assert req.target == f"/b/{ENCODED_KEY}"
        check_signature(req, ACCESS_KEY, SECRET_KEY)


# --- the command line --------------------------------------------------------------------------


def relay_env(**values: str) -> dict[str, str]:
    return {**clean_environ(), **values}


async def run_relay(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process(
            [*RELAY_CLI, *args], env=env, capture_stdout=True, capture_stderr=True, check=False
        )


def probe_env(endpoint: str, bucket: str, data_dir: Path, **extra: str) -> dict[str, str]:
    return relay_env(
        RELAY_S3_ENDPOINT=endpoint,
        RELAY_S3_BUCKET=bucket,
        RELAY_S3_ACCESS_KEY=MOTO_KEY,
        RELAY_S3_SECRET_KEY=MOTO_KEY,
        RELAY_GIT_PROBE_WRITERS="8",
        RELAY_GIT_PROBE_ROUNDS="2",
        RELAY_DATA_DIR=str(data_dir),
        **extra,
    )


async def test_probe_command_passes_on_moto(moto_endpoint: str, tmp_path: Path) -> None:
    bucket = f"probe-{uuid.uuid4().hex[:16]}"
    store = S3Store(
        S3Config(endpoint=moto_endpoint, bucket=bucket, access_key=MOTO_KEY, secret_key=MOTO_KEY)
    )
    try:
        await store.create_bucket()
    finally:
        await store.aclose()
    result = await run_relay(["probe"], probe_env(moto_endpoint, bucket, tmp_path))
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "object store conformance probe: PASSED" in out
    assert f"S3 bucket {bucket} at {moto_endpoint}" in out
    for phase in ("sequential", "if_match_race", "if_none_match_race", "etag_round_trip"):
        assert f"[ok] {phase}" in out


async def test_probe_command_fails_on_a_lying_store(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serve(nursery, MemoryS3(honour_if_match=False, honour_if_none_match=False))
    result = await run_relay(["probe"], probe_env(server.endpoint, "b", tmp_path))
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 1, out + err
    assert "object store conformance probe: FAILED" in out
    assert "[FAIL] if_match_race" in out and "If-Match" in out
    assert "conformance probe" in err
    assert server.requests("PUT"), "the probe never reached the server"


async def test_probe_command_with_only_an_access_key_is_a_config_error(tmp_path: Path) -> None:
    env = relay_env(
        RELAY_S3_ENDPOINT="http://127.0.0.1:9",
        RELAY_S3_BUCKET="b",
        RELAY_S3_ACCESS_KEY="testing",
        RELAY_DATA_DIR=str(tmp_path),
    )
    result = await run_relay(["probe"], env)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "RELAY_S3_ACCESS_KEY" in lines[0] and "RELAY_S3_SECRET_KEY" in lines[0]
    assert result.stdout == b""


async def test_serve_refuses_a_lying_store(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    server = await serve(nursery, MemoryS3(honour_if_match=False, honour_if_none_match=False))
    env = relay_env(
        RELAY_DATABASE_URL=db_url,
        RELAY_PORT="0",
        RELAY_DATA_DIR=str(tmp_path),
        RELAY_S3_ENDPOINT=server.endpoint,
        RELAY_S3_BUCKET="b",
        RELAY_GIT_PROBE_WRITERS="4",
        RELAY_GIT_PROBE_ROUNDS="1",
    )
    result = await run_relay(["serve"], env)
    err = result.stderr.decode()
    assert result.returncode != 0, err
    assert result.returncode == 1, err
    assert "conformance probe" in err
    assert "if_match_race" in err
    assert "listening" not in err
