"""HTTP/1.1 on the relay's port, over in-memory streams: heads, bodies, refusals."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import trio
import trio.testing

from relay.http import (
    BadGzip,
    BodyTooLarge,
    HttpError,
    discard_body,
    read_body,
    read_decoded_body,
    read_request,
    refuse,
    spool_decoded_body,
)


async def sent(data: bytes) -> trio.testing.MemoryReceiveStream:
    """A stream from which `data` can be read, then end of file."""
    stream = trio.testing.MemoryReceiveStream()
    stream.put_data(data)
    stream.put_eof()
    return stream


def post(body: bytes, *headers: str) -> bytes:
    lines = ["POST /x HTTP/1.1", "Host: a", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_a_head_is_read_with_its_headers_folded_and_lower_cased() -> None:
    raw = b"GET /p?q=1 HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\n\r\n"
    request = await read_request(await sent(raw))
    assert request is not None
    assert (request.method, request.path, request.query) == ("GET", "/p", "q=1")
    assert request.header("X-A") == "1, 2" and request.header("missing") == ""
    assert request.raw == raw  # kept, for a websocket to take over
    assert request.hand_over() == raw and request.raw == b""
    with pytest.raises(HttpError):
        _ = request.parser


async def test_a_closed_connection_is_no_request() -> None:
    assert await read_request(await sent(b"")) is None


@pytest.mark.parametrize(
    "raw",
    [
        b"NOT HTTP\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nbad header\r\n\r\n",
    ],
)
async def test_a_bad_head_is_an_http_error_with_h11s_status(raw: bytes) -> None:
    with pytest.raises(HttpError) as refused:
        await read_request(await sent(raw))
    assert refused.value.status == 400


async def test_a_head_larger_than_the_limit_is_refused() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 20_000 + b"\r\n\r\n"
    with pytest.raises(HttpError) as refused:
        await read_request(await sent(raw))
    assert refused.value.status == 431


async def body_of(raw: bytes, limit: int) -> bytes:
    stream = await sent(raw)
    request = await read_request(stream)
    assert request is not None
    parts: list[bytes] = []

    async def keep(chunk: bytes) -> None:
        parts.append(chunk)

    await read_body(stream, request, limit, keep)
    return b"".join(parts)


async def test_plain_and_chunked_bodies_arrive_whole() -> None:
    assert await body_of(post(b"hello"), 5) == b"hello"
    chunked = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert await body_of(chunked, 5) == b"abcde"


async def test_a_body_over_the_limit_is_413_and_a_short_one_400() -> None:
    with pytest.raises(BodyTooLarge) as large:
        await body_of(post(b"123456"), 5)
    assert large.value.status == 413
    with pytest.raises(HttpError) as short:
        await body_of(post(b"123456")[:-2], 10)
    assert short.value.status == 400


async def test_expect_100_continue_is_answered_before_the_body_is_read() -> None:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(post(b"", "Expect: 100-continue").replace(b"Length: 0", b"Length: 2"))
    request = await read_request(server)
    assert request is not None
    async with trio.open_nursery() as nursery:
        got: list[bytes] = []

        async def keep(chunk: bytes) -> None:
            got.append(chunk)

        nursery.start_soon(read_body, server, request, 10, keep)
        assert await client.receive_some() == b"HTTP/1.1 100 Continue\r\n\r\n"
        await client.send_all(b"ok")
    assert got == [b"ok"]


async def test_gzip_bodies_are_decoded_in_memory_and_on_disk(tmp_path: Path) -> None:
    packed = gzip.compress(b"x" * 1000)
    raw = post(packed, "Content-Encoding: gzip")
    stream = await sent(raw)
    request = await read_request(stream)
    assert request is not None
    assert await read_decoded_body(stream, request, 1000) == b"x" * 1000
    stream = await sent(raw)
    request = await read_request(stream)
    assert request is not None
    await spool_decoded_body(stream, request, tmp_path / "body", 1000)
    assert (tmp_path / "body").read_bytes() == b"x" * 1000
    assert list(tmp_path.iterdir()) == [tmp_path / "body"]  # the gzip spool is gone


async def test_a_body_that_inflates_past_the_limit_is_413(tmp_path: Path) -> None:
    raw = post(gzip.compress(b"x" * 1001), "Content-Encoding: gzip")
    stream = await sent(raw)
    request = await read_request(stream)
    assert request is not None
    with pytest.raises(BodyTooLarge):
        await spool_decoded_body(stream, request, tmp_path / "body", 1000)
    assert not (tmp_path / "body.gz").exists()


async def test_a_body_that_says_gzip_and_is_not_is_400() -> None:
    stream = await sent(post(b"plain", "Content-Encoding: gzip"))
    request = await read_request(stream)
    assert request is not None
    with pytest.raises(BadGzip) as refused:
        await read_decoded_body(stream, request, 1000)
    assert refused.value.status == 400 and "not valid gzip" in refused.value.message


async def test_a_refusal_carries_status_headers_and_message() -> None:
    client, server = trio.testing.memory_stream_pair()
    await refuse(server, HttpError(503, "busy", [("Retry-After", "5")]))
    answer = await client.receive_some()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Retry-After: 5" in head and b"Connection: close" in head
    assert body == b"busy\n"


async def test_the_rest_of_a_body_is_dropped_within_a_bound() -> None:
    raw = post(b"x" * 100)
    stream = await sent(raw)
    request = await read_request(stream)
    assert request is not None
    with pytest.raises(BodyTooLarge):
        await read_body(stream, request, 10, _ignore)
    assert await discard_body(stream, request, 100) is True
    assert await discard_body(stream, request, 100) is True  # nothing left: at once
    stream = await sent(raw)
    request = await read_request(stream)
    assert request is not None
    assert await discard_body(stream, request, 50) is False


async def _ignore(chunk: bytes) -> None:
    pass
