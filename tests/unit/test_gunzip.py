"""gunzip: a gzip body decompressed as a stream, bounded by the decompressed bytes."""

from __future__ import annotations

import gzip
import io
import os

import pytest

from relay.http import GUNZIP_CHUNK, BadGzip, BodyTooLarge, gunzip


def run(data: bytes, limit: int) -> tuple[int, list[bytes]]:
    out: list[bytes] = []
    return gunzip(io.BytesIO(data), out.append, limit), out


def test_a_body_within_the_limit_comes_out_whole() -> None:
    plain = os.urandom(300_000) + b"x" * 1_000_000
    total, out = run(gzip.compress(plain), len(plain))
    assert total == len(plain) and b"".join(out) == plain


def test_a_bomb_stops_at_the_limit_not_at_its_size() -> None:
    bomb = gzip.compress(b"\0" * (64 << 20))
    out: list[bytes] = []
    with pytest.raises(BodyTooLarge):
        gunzip(io.BytesIO(bomb), out.append, 1 << 20)
    # At most one chunk beyond the limit was ever produced.
    assert sum(map(len, out)) <= (1 << 20) + GUNZIP_CHUNK


@pytest.mark.parametrize(
    "data",
    [
        b"this is not gzip",
        gzip.compress(b"hello")[:-5],  # ends early
        gzip.compress(b"hello") + b"trailing",
        b"",
    ],
    ids=["not gzip", "truncated", "trailing bytes", "empty"],
)
def test_what_is_not_one_whole_gzip_stream_is_refused(data: bytes) -> None:
    with pytest.raises(BadGzip):
        run(data, 1 << 20)
