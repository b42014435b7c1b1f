"""Host names as community keys: one normal form for Host headers, settings and URLs."""

from __future__ import annotations

import ipaddress
import re

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and int(text) <= 65535


def normalize_host(value: str) -> str | None:
    """Lowercase, drop the port and a trailing dot; None when it is not a host name.

    A community is a host name: the port a client used to reach the relay is not part of
    its identity, so `localhost:7777`, `LOCALHOST.` and `localhost:443` are one community.
    """
    stripped = value.strip()
    # ASCII first: str.lower() folds some non-ASCII letters into ASCII ones (U+212A -> k).
    if not stripped or len(stripped) > 260 or not stripped.isascii():
        return None
    host = stripped.lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return None
        rest = host[end + 1 :]
        if rest and not (rest.startswith(":") and _is_port(rest[1:])):
            return None
        try:
            ipaddress.IPv6Address(host[1:end])
        except ValueError:
            return None
        return host[: end + 1]
    if ":" in host:
        host, _, port = host.partition(":")
        if not _is_port(port):
            return None
    host = host.removesuffix(".")
    if not host or len(host) > 253:
        return None
    if not all(_LABEL.fullmatch(label) for label in host.split(".")):
        return None
    return host


ALIAS_SEPARATOR = "|"


def host_group(spec: str) -> tuple[str, ...]:
    """The names of one community as RELAY_HOSTS writes them, `name|alias|alias`: the first
    is the community's own host, the others reach the same community. ValueError names
    a part that is not a host name."""
    names = []
    for part in spec.split(ALIAS_SEPARATOR):
        host = normalize_host(part)
        if host is None:
            raise ValueError(f"{part.strip()!r} is not a host name")
        names.append(host)
    return tuple(dict.fromkeys(names))


def primary_host(spec: str) -> str:
    """The community's own host of a `name|alias` group."""
    return host_group(spec)[0]
