"""relay.server.clientaddr: whom a request comes from. The TCP peer, unless the peer is a
trusted proxy and its forwarding header (Forwarded, else X-Forwarded-For, else X-Real-IP)
names the client; a header from anyone else, or one that cannot be read, names nobody."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.config import ConfigError, load_settings
from relay.server.clientaddr import (
    ClientAddress,
    Network,
    forwarded_for,
    parse_node,
    resolve_client,
)

PROXIES: tuple[Network, ...] = (ip_network("10.0.0.0/8"), ip_network("fd00::/8"))
PROXY = "10.1.2.3"
CLIENT = "203.0.113.7"
OTHER = "198.51.100.9"


def resolve(peer: str, trusted: tuple[Network, ...] = PROXIES, **headers: str) -> ClientAddress:
    return resolve_client(peer, {k.replace("_", "-"): v for k, v in headers.items()}, trusted)


# -- the peer, when nothing else may speak ---------------------------------------------------


def test_without_headers_the_client_is_the_peer() -> None:
    assert resolve(CLIENT) == ClientAddress(ip=CLIENT)
    assert resolve(PROXY).ip == PROXY
    assert resolve("2001:db8::1").ip == "2001:db8::1"


def test_the_peer_is_normalised() -> None:
    # A dual-stack socket reports IPv4 clients as IPv4-mapped IPv6 addresses.
    assert resolve("::ffff:203.0.113.7").ip == CLIENT
    assert resolve("2001:DB8:0::1").ip == "2001:db8::1"
    assert resolve("::ffff:10.1.2.3", x_forwarded_for=CLIENT).ip == CLIENT  # trusted, mapped
    assert resolve("unknown").ip == "unknown"  # getpeername failed: no address, trusted never
    assert resolve("unknown", x_forwarded_for=CLIENT).ip == "unknown"


def test_an_untrusted_peer_cannot_name_another_client() -> None:
    for name in ("forwarded", "x-forwarded-for", "x-real-ip"):
        value = f"for={OTHER}" if name == "forwarded" else OTHER
        resolved = resolve_client(CLIENT, {name: value}, PROXIES)
        assert resolved.ip == CLIENT
        assert resolved.header is None
        assert resolved.ignored == name
        assert resolved.untrusted_proxy  # worth a warning: a proxy the relay was not told of


def test_with_no_trusted_proxies_every_header_is_ignored() -> None:
    resolved = resolve(PROXY, (), x_forwarded_for=CLIENT, x_real_ip=CLIENT)
    assert resolved.ip == PROXY and resolved.untrusted_proxy
    assert resolved.ignored == "x-forwarded-for"


def test_a_trusted_peer_without_headers_is_the_client() -> None:
    resolved = resolve(PROXY)
    assert resolved.ip == PROXY and resolved.ignored is None and not resolved.untrusted_proxy


# -- X-Forwarded-For ---------------------------------------------------------------------------


def test_x_forwarded_for_from_a_trusted_proxy() -> None:
    resolved = resolve(PROXY, x_forwarded_for=CLIENT)
    assert resolved == ClientAddress(ip=CLIENT, header="x-forwarded-for")


def test_the_right_most_untrusted_address_is_the_client() -> None:
    # client -> 10.9.9.9 (appends the client) -> 10.1.2.3 (appends 10.9.9.9) -> relay
    assert resolve(PROXY, x_forwarded_for=f"{CLIENT}, 10.9.9.9").ip == CLIENT
    assert resolve(PROXY, x_forwarded_for=f"{CLIENT},10.9.9.9 ,  10.0.0.1").ip == CLIENT


def test_entries_a_client_prepends_are_not_believed() -> None:
    # The client sends X-Forwarded-For itself; the proxy appends the address it saw.
    assert resolve(PROXY, x_forwarded_for=f"{OTHER}, {CLIENT}").ip == CLIENT
    # ... even when what it prepends is a trusted address, loopback or garbage.
    assert resolve(PROXY, x_forwarded_for=f"10.0.0.1, {CLIENT}").ip == CLIENT
    assert resolve(PROXY, x_forwarded_for=f"127.0.0.1, {CLIENT}").ip == CLIENT
    assert not resolve(PROXY, x_forwarded_for=f"127.0.0.1, {CLIENT}").loopback
    assert resolve(PROXY, x_forwarded_for=f"<script>, not an ip, {CLIENT}").ip == CLIENT


def test_every_entry_trusted_gives_the_left_most() -> None:
    # A request from a proxy's own network (a health check through the chain).
    assert resolve(PROXY, x_forwarded_for="10.0.0.5, 10.0.0.6").ip == "10.0.0.5"


def test_several_x_forwarded_for_lines_are_one_list() -> None:
    # relay.http joins repeated header lines with ", ", as RFC 9110 allows for lists.
    assert resolve(PROXY, x_forwarded_for=f"{OTHER}, {CLIENT}, 10.0.0.9").ip == CLIENT


def test_x_forwarded_for_with_ports_and_ipv6() -> None:
    assert resolve(PROXY, x_forwarded_for=f"{CLIENT}:4711").ip == CLIENT
    assert resolve(PROXY, x_forwarded_for="2001:db8::17").ip == "2001:db8::17"
    assert resolve(PROXY, x_forwarded_for="[2001:db8::17]:4711").ip == "2001:db8::17"
    assert resolve(PROXY, x_forwarded_for="[2001:db8::17]").ip == "2001:db8::17"
    assert resolve(PROXY, x_forwarded_for="::ffff:203.0.113.7").ip == CLIENT
    assert resolve(PROXY, x_forwarded_for="2001:db8::17, fd00::1").ip == "2001:db8::17"
    assert resolve("fd12::3", x_forwarded_for=CLIENT).ip == CLIENT  # an IPv6 proxy


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        " ",
        ",",
        "unknown",
        "not an address",
        "203.0.113",
        "203.0.113.256",
        "203.0.113.07",  # a leading zero (octal to some parsers)
        "203.0.113.7:",
        "203.0.113.7:port",
        "203.0.113.7:70000",
        "[203.0.113.7]",
        "[2001:db8::17",
        "[2001:db8::17]x",
        "2001:db8::17:4711:1:2:3:4",
        f"{CLIENT}\x00",
        "0x7f.1",
        "2130706433",  # 127.0.0.1 as a number
        f"{CLIENT} {OTHER}",
    ],
)
def test_a_malformed_right_most_entry_falls_back_to_the_peer(garbage: str) -> None:
    resolved = resolve(PROXY, x_forwarded_for=garbage)
    assert resolved.ip == PROXY
    assert resolved.header is None and resolved.ignored == "x-forwarded-for"
    assert not resolved.untrusted_proxy  # the peer is trusted: nothing to warn about
    resolved = resolve(PROXY, x_forwarded_for=f"{CLIENT}, {garbage}")
    assert resolved.ip == PROXY  # nothing left of an unreadable hop is believed


def test_garbage_behind_trusted_hops_falls_back_to_the_peer() -> None:
    assert resolve(PROXY, x_forwarded_for="garbage, 10.0.0.5").ip == PROXY


# -- Forwarded (RFC 7239) -----------------------------------------------------------------------


def test_forwarded_for() -> None:
    resolved = resolve(PROXY, forwarded=f"for={CLIENT}")
    assert resolved == ClientAddress(ip=CLIENT, header="forwarded")
    assert resolve(PROXY, forwarded=f"For={CLIENT};proto=https;by=10.1.2.3").ip == CLIENT
    assert resolve(PROXY, forwarded=f'proto=https; for="{CLIENT}:4711"').ip == CLIENT
    assert resolve(PROXY, forwarded=f'for="{CLIENT}"').ip == CLIENT


def test_forwarded_quoted_ipv6_with_brackets_and_port() -> None:
    assert resolve(PROXY, forwarded='for="[2001:db8:cafe::17]:4711"').ip == "2001:db8:cafe::17"
    assert resolve(PROXY, forwarded='for="[2001:db8:cafe::17]"').ip == "2001:db8:cafe::17"
    assert resolve(PROXY, forwarded='for="[2001:db8::17]:_port"').ip == "2001:db8::17"
    # Unquoted brackets break RFC 7239's grammar, but say one thing only.
    assert resolve(PROXY, forwarded="for=[2001:db8::17]").ip == "2001:db8::17"


def test_forwarded_chain_walked_from_the_right() -> None:
    value = f'for={OTHER}, for="{CLIENT}:1234";proto=https, for=10.9.9.9;by=10.1.2.3'
    assert resolve(PROXY, forwarded=value).ip == CLIENT
    assert resolve(PROXY, forwarded=f"for={CLIENT}, for=10.0.0.5, for=10.0.0.6").ip == CLIENT
    assert resolve(PROXY, forwarded="for=10.0.0.5, for=10.0.0.6").ip == "10.0.0.5"


def test_forwarded_quoted_strings_may_hold_delimiters() -> None:
    value = f'for={CLIENT};ext="a, b; c=\\"d\\""'
    assert forwarded_for(value) == [CLIENT]
    assert resolve(PROXY, forwarded=value).ip == CLIENT


def test_forwarded_empty_elements_are_skipped() -> None:
    assert forwarded_for(f" , for={CLIENT} ,, ") == [CLIENT]


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "for=",
        'for=""',
        "for=unknown",
        "for=_hidden",
        'for="_hidden:4711"',
        "proto=https",  # an element without for=
        f"for={CLIENT};for={OTHER}",  # for= twice in one element
        f'for="{CLIENT}',  # an unterminated quoted string
        f"for={CLIENT} x",
        f"=for={CLIENT}",
        f"for {CLIENT}",
        "for=2001:db8::17:4711:1:2:3:4",
        "for=[2001:db8::17",
        f"for={CLIENT}:99999",
    ],
)
def test_a_malformed_forwarded_falls_back_to_the_peer(garbage: str) -> None:
    resolved = resolve(PROXY, forwarded=garbage)
    assert resolved.ip == PROXY
    assert resolved.ignored == "forwarded" and not resolved.untrusted_proxy
    assert not resolved.loopback


def test_forwarded_wins_over_the_other_headers() -> None:
    resolved = resolve(PROXY, forwarded=f"for={CLIENT}", x_forwarded_for=OTHER, x_real_ip=OTHER)
    assert resolved.ip == CLIENT and resolved.header == "forwarded"


def test_the_first_header_present_decides_even_when_unreadable() -> None:
    """Falling through to the next header would let a client choose: a proxy that writes
    Forwarded with `for=unknown` often passes X-Forwarded-For through untouched."""
    resolved = resolve(PROXY, forwarded="for=unknown", x_forwarded_for=OTHER)
    assert resolved.ip == PROXY and resolved.ignored == "forwarded"
    resolved = resolve(PROXY, x_forwarded_for="garbage", x_real_ip=OTHER)
    assert resolved.ip == PROXY and resolved.ignored == "x-forwarded-for"


# -- X-Real-IP ----------------------------------------------------------------------------------


def test_x_real_ip_when_no_other_header() -> None:
    assert resolve(PROXY, x_real_ip=CLIENT) == ClientAddress(ip=CLIENT, header="x-real-ip")
    assert resolve(PROXY, x_real_ip=" 2001:db8::17 ").ip == "2001:db8::17"
    assert resolve(PROXY, x_forwarded_for=CLIENT, x_real_ip=OTHER).ip == CLIENT


def test_x_real_ip_names_one_address() -> None:
    # Two lines of it (joined by relay.http) or a list: which one would be the client?
    assert resolve(PROXY, x_real_ip=f"{OTHER}, {CLIENT}").ip == PROXY
    assert resolve(PROXY, x_real_ip="unknown").ip == PROXY
    # X-Real-IP is not a chain: a trusted address in it is the client all the same.
    assert resolve(PROXY, x_real_ip="10.0.0.5").ip == "10.0.0.5"


# -- loopback ------------------------------------------------------------------------------------


def test_a_loopback_peer_without_headers_is_loopback() -> None:
    assert resolve("127.0.0.1").loopback
    assert resolve("127.8.9.10").loopback
    assert resolve("::1").loopback
    assert resolve("::ffff:127.0.0.1").loopback
    assert not resolve(CLIENT).loopback
    assert not resolve("unknown").loopback


def test_a_loopback_client_named_by_a_trusted_proxy_is_loopback() -> None:
    assert resolve(PROXY, x_forwarded_for="127.0.0.1").loopback
    assert resolve(PROXY, forwarded='for="[::1]:5000"').loopback


def test_a_proxy_on_loopback_is_not_a_loopback_client() -> None:
    """A loopback peer that forwards (a proxy on the relay's host) speaks for others: its
    requests are not treated as the host's own, trusted or not."""
    local: tuple[Network, ...] = (ip_network("127.0.0.0/8"),)
    untrusted = resolve("127.0.0.1", PROXIES, x_forwarded_for=CLIENT)
    assert untrusted.ip == "127.0.0.1" and untrusted.untrusted_proxy and not untrusted.loopback
    trusted = resolve("127.0.0.1", local, x_forwarded_for=CLIENT)
    assert trusted.ip == CLIENT and not trusted.loopback
    unreadable = resolve("127.0.0.1", local, x_forwarded_for="garbage")
    assert unreadable.ip == "127.0.0.1" and not unreadable.loopback
    # A client on the proxy's host, named by the proxy: loopback.
    assert resolve("127.0.0.1", local, x_forwarded_for="127.0.0.1").loopback


# Printable text, and the characters the parsers split and unquote on, as proxies and clients
# might send them in a header (relay.http decodes header bytes as latin-1).
HEADER_TEXT = st.text(
    st.sampled_from(list(' \t,;="[]:_-.\\') + list("0123456789abcdefABCDEFforunknwx"))
    | st.characters(min_codepoint=0, max_codepoint=255),
    max_size=80,
)


@given(
    name=st.sampled_from(["forwarded", "x-forwarded-for", "x-real-ip"]),
    value=HEADER_TEXT,
    trusted_peer=st.booleans(),
)
def test_any_header_value_gives_the_peer_or_an_address(
    name: str, value: str, trusted_peer: bool
) -> None:
    peer = PROXY if trusted_peer else CLIENT
    resolved = resolve_client(peer, {name: value}, PROXIES)
    if resolved.header is None:
        assert resolved.ip == peer and resolved.ignored == name
    else:
        assert trusted_peer and resolved.header == name
        assert str(ip_address(resolved.ip)) == resolved.ip
    assert resolved.untrusted_proxy is not trusted_peer


# -- the pieces --------------------------------------------------------------------------------


def test_parse_node() -> None:
    assert str(parse_node("203.0.113.7")) == CLIENT
    assert str(parse_node("203.0.113.7:80")) == CLIENT
    assert str(parse_node("[2001:db8::1]:80")) == "2001:db8::1"
    assert str(parse_node("::ffff:203.0.113.7")) == CLIENT
    for bad in ("", "unknown", "_obf", "[1.2.3.4]", "1.2.3.4:", "[::1]:", "::1:80:x"):
        assert parse_node(bad) is None, bad


def test_forwarded_for_values() -> None:
    assert forwarded_for(f'for={CLIENT}, for="[::1]:80";by=x') == [CLIENT, "[::1]:80"]
    assert forwarded_for("proto=https") == [None]
    assert forwarded_for('for="open') is None
    assert forwarded_for("a=b=c") is None


# -- RELAY_TRUSTED_PROXIES -------------------------------------------------------------------


def test_trusted_proxies_setting() -> None:
    assert load_settings({}).trusted_proxies == ()
    settings = load_settings(
        {"RELAY_TRUSTED_PROXIES": " 10.0.0.0/8, 192.168.1.7 ,fd00::/8,,::1, 172.16.0.1/12"}
    )
    assert settings.trusted_proxies == (
        ip_network("10.0.0.0/8"),
        ip_network("192.168.1.7/32"),
        ip_network("fd00::/8"),
        ip_network("::1/128"),
        ip_network("172.16.0.0/12"),  # host bits set: the network they are in
    )
    for bad in ("10.0.0.0/33", "proxy.internal", "10.0.0.0/8;", "*"):
        with pytest.raises(ConfigError, match="RELAY_TRUSTED_PROXIES") as caught:
            load_settings({"RELAY_TRUSTED_PROXIES": bad})
        assert repr(bad.strip()) in str(caught.value)


def test_rate_limit_loopback_setting() -> None:
    assert load_settings({}).rate_limit_loopback is False
    assert load_settings({"RELAY_RATE_LIMIT_LOOPBACK": "on"}).rate_limit_loopback is True
    assert load_settings({"RELAY_RATE_LIMIT_LOOPBACK": "off"}).rate_limit_loopback is False
    with pytest.raises(ConfigError, match="RELAY_RATE_LIMIT_LOOPBACK"):
        load_settings({"RELAY_RATE_LIMIT_LOOPBACK": "sometimes"})


def test_a_pinned_header_is_the_only_one_read() -> None:
    """Behind a proxy that writes only X-Forwarded-For (and passes a client's Forwarded
    through), RELAY_CLIENT_ADDRESS_HEADER=x-forwarded-for keeps the client from naming
    itself with Forwarded."""
    headers = {"forwarded": "for=203.0.113.66", "x-forwarded-for": "198.51.100.7"}
    assert resolve_client(PROXY, headers, PROXIES).ip == "203.0.113.66"  # auto: the first
    pinned = resolve_client(PROXY, headers, PROXIES, "x-forwarded-for")
    assert (pinned.ip, pinned.header) == ("198.51.100.7", "x-forwarded-for")
    # Pinned to a header the request lacks: the peer, whatever else it carries.
    assert resolve_client(PROXY, headers, PROXIES, "x-real-ip").ip == PROXY
