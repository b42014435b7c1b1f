"""Host names as community keys: one normal form for Host headers, settings and URLs."""

from __future__ import annotations

import re

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
_IPV6 = re.compile(r"^\[[0-9a-f:.]+\]$")


def normalize_host(value: str) -> str | None:
    """Lowercase, drop the port and a trailing dot; None when it is not a host name.

    A community is a host name: the port a client used to reach the relay is not part of
    its identity, so `localhost:7777`, `LOCALHOST.` and `localhost:443` are one community.
    """
    host = value.strip().lower()
    if not host or len(host) > 260:
        return None
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return None
        rest = host[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        host = host[: end + 1]
        return host if _IPV6.fullmatch(host) else None
    if ":" in host:
        host, _, port = host.partition(":")
        if not port.isdigit():
            return None
    host = host.removesuffix(".")
    if not host or len(host) > 253:
        return None
    if not all(_LABEL.fullmatch(label) for label in host.split(".")):
        return None
    return host
