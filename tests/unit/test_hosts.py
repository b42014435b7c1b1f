"""relay.protocol.hosts: Host header values normalised to the host names communities
are keyed by, and garbage refused."""

from __future__ import annotations

import pytest

from relay.protocol.hosts import normalize_host


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("localhost", "localhost"),
        ("Example.COM", "example.com"),
        ("  example.com  ", "example.com"),
        ("example.com.", "example.com"),
        ("example.com:443", "example.com"),
        ("LOCALHOST.:7777", "localhost"),
        ("1.2.3.4:80", "1.2.3.4"),
        ("a_b.test", "a_b.test"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("[::1]", "[::1]"),
        ("[::1]:7777", "[::1]"),
        ("[::FFFF:1.2.3.4]", "[::ffff:1.2.3.4]"),
        ("[2001:DB8::1]:443", "[2001:db8::1]"),
        ("a" * 63 + ".test", "a" * 63 + ".test"),
    ],
)
def test_normalize_host(value: str, host: str) -> None:
    assert normalize_host(value) == host


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        ".",
        "exa mple.com",
        "example.com:abc",
        "example.com:",
        "example.com:+1",
        "example.com:80:90",
        "a..b",
        "example.com..",
        "-a.com",
        "a-.com",
        "a" * 64 + ".com",
        ".".join(["a" * 60] * 5),
        "user@host",
        "http://example.com",
        "example.com/path",
        "exämple.com",
        "[::1",
        "[::1]x",
        "[::1]:",
        "[::1]:port",
        "[zz]",
        "[]",
    ],
)
def test_normalize_host_garbage(value: str) -> None:
    assert normalize_host(value) is None


def test_normalize_host_rejects_a_newline_inside() -> None:
    assert normalize_host("bad\n.example") is None


def test_normalize_host_rejects_non_ascii_that_lowercases_to_ascii() -> None:
    assert normalize_host("\u212aey.test") is None


def test_normalize_host_rejects_a_non_ascii_port() -> None:
    assert normalize_host("localhost:\u00b2") is None


@pytest.mark.parametrize("value", ["[abc]", "[.]"])
def test_normalize_host_rejects_bracketed_non_addresses(value: str) -> None:
    assert normalize_host(value) is None
