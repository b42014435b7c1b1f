"""Whom a request comes from: the TCP peer, or the client a trusted proxy names (sans-IO).

Behind a reverse proxy every connection comes from the proxy. When the peer is inside
RELAY_TRUSTED_PROXIES, the client is read from the first of these headers the request
carries: `Forwarded` (RFC 7239, its `for=` parameters), else `X-Forwarded-For`, else
`X-Real-IP`. Forwarded and X-Forwarded-For are chains each proxy appends to, and anything
left of the last proxy's entry may have been written by the client: the chain is walked
from the right past trusted proxies, and the first address that is not one is the client.
A header from any other peer is ignored, and so is one that cannot be read (an entry that
is not an address, `unknown`, an obfuscated identifier): the client is then the peer. The
first header present decides; an unreadable one never hands over to the next, which a
proxy that writes only one of them may pass through from the client untouched. Behind such
a proxy, RELAY_CLIENT_ADDRESS_HEADER names the one header it writes, and the others are
never read (a client could otherwise name itself with the one the proxy passes through).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address

# In the order they are read; names as relay.http keeps them (lowercase).
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
# RELAY_CLIENT_ADDRESS_HEADER: read the first of FORWARDING_HEADERS present, or only one.
ANY_HEADER = "auto"

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# The parts of a Forwarded header (RFC 7239 section 4): name=value pairs, `;` between the
# pairs of one element, `,` between elements. A value is a token or a quoted-string;
# unquoted brackets and colons are taken too (some proxies send `for=[2001:db8::1]:80`
# bare), as they cannot be read as anything else. Any other character spoils the header.
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_UNQUOTED = r"[!#$%&'*+.^_`|~0-9A-Za-z:\[\]-]*"
_FORWARDED_PART = re.compile(
    rf"(?P<name>{_TOKEN})=(?P<value>{_QUOTED}|{_UNQUOTED})|(?P<separator>[;,])|[ \t]+|(?P<bad>.)",
    re.DOTALL,
)
_ESCAPE = re.compile(r"\\(.)")
_OBFUSCATED_PORT = re.compile(r"_[0-9A-Za-z._-]+")


@dataclass(frozen=True, slots=True)
class ClientAddress:
    """The address rate limits count and logs name, and how it was found."""

    ip: str
    # The header `ip` was read from; None: it is the TCP peer's address.
    header: str | None = None
    # A forwarding header the request carried that named nobody (untrusted or unreadable).
    ignored: str | None = None
    # The peer is not a trusted proxy, yet sent a forwarding header: most likely a proxy the
    # relay was not told about (RELAY_TRUSTED_PROXIES), which makes its clients one address.
    untrusted_proxy: bool = False
    # On the relay's own host: a loopback peer that forwards nothing, or a loopback client a
    # trusted proxy names. A loopback peer that sends forwarding headers speaks for others.
    loopback: bool = False


def resolve_client(
    peer: str,
    headers: Mapping[str, str],
    trusted: Sequence[Network],
    header: str = ANY_HEADER,
) -> ClientAddress:
    """The client of a request from `peer` (the TCP peer's address, or "unknown") carrying
    `headers` (names lowercase), with proxies in `trusted` allowed to name it, by the first
    forwarding header present or, when `header` names one, by that header alone."""
    peer_address = parse_node(peer)
    read = FORWARDING_HEADERS if header == ANY_HEADER else (header,)
    present = next((name for name in read if name in headers), None)
    if peer_address is None:
        return ClientAddress(ip=peer, ignored=present)
    peer_ip = str(peer_address)
    if present is None:
        return ClientAddress(ip=peer_ip, loopback=peer_address.is_loopback)
    if not _trusted(peer_address, trusted):
        return ClientAddress(ip=peer_ip, ignored=present, untrusted_proxy=True)
    client = _client_from(present, headers[present], trusted)
    if client is None:
        return ClientAddress(ip=peer_ip, ignored=present)
    return ClientAddress(ip=str(client), header=present, loopback=client.is_loopback)


def _client_from(header: str, value: str, trusted: Sequence[Network]) -> Address | None:
    if header == "x-real-ip":
        return parse_node(value)
    hops: Sequence[str | None] | None
    hops = forwarded_for(value) if header == "forwarded" else value.split(",")
    if not hops:
        return None
    first: Address | None = None
    for hop in reversed(hops):
        address = parse_node(hop) if hop is not None else None
        if address is None:
            return None  # nothing left of an unreadable hop can be believed
        if not _trusted(address, trusted):
            return address
        first = address
    return first  # every hop a trusted proxy: the farthest one is whom we know of


def _trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address in network for network in trusted)


def parse_node(text: str) -> Address | None:
    """An address as proxies write one: `192.0.2.7`, `192.0.2.7:4711`, `2001:db8::1`,
    `[2001:db8::1]` or `[2001:db8::1]:4711` (an RFC 7239 obfuscated port `_x` too), with
    IPv4-mapped IPv6 addresses read as IPv4. None for anything else."""
    text = text.strip(" \t")
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not (port[0] == ":" and _is_port(port[1:]))):
            return None
        address = _address(host)
        return _unmapped(address) if isinstance(address, IPv6Address) else None
    address = _address(text)
    if address is None and text.count(":") == 1:
        host, _, port = text.partition(":")
        address = _address(host) if _is_port(port) else None
        if not isinstance(address, IPv4Address):
            return None
    return _unmapped(address) if address is not None else None


def _is_port(text: str) -> bool:
    if _OBFUSCATED_PORT.fullmatch(text):
        return True
    return text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535


def _address(text: str) -> Address | None:
    try:
        return ip_address(text)
    except ValueError:
        return None


def _unmapped(address: Address) -> Address:
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forwarded_for(value: str) -> list[str | None] | None:
    """The `for=` value of each element of a Forwarded header, in order (None for an element
    without one, or with two); None when the header does not parse. Empty elements are
    skipped, as RFC 9110 lists allow."""
    elements: list[str | None] = []
    pairs: dict[str, str] = {}
    twice = after_pair = False
    for part in _FORWARDED_PART.finditer(value):
        if part["bad"] is not None:
            return None
        if part["name"] is not None:
            if after_pair:
                return None  # two pairs with no separator between them
            name, raw = part["name"].lower(), part["value"]
            twice |= name in pairs
            pairs[name] = _ESCAPE.sub(r"\1", raw[1:-1]) if raw.startswith('"') else raw
            after_pair = True
        elif part["separator"] is not None:
            after_pair = False
            if part["separator"] == ",":
                _close_element(elements, pairs, twice)
                pairs, twice = {}, False
    _close_element(elements, pairs, twice)
    return elements


def _close_element(elements: list[str | None], pairs: dict[str, str], twice: bool) -> None:
    if pairs:
        elements.append(None if twice else pairs.get("for"))
