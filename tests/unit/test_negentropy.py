"""relay.protocol.negentropy: negentropy v1 (NIP-77) reconciliation without I/O.

The expected bytes are built here independently of the module: varints by hand, the
fingerprint with hashlib, and a small parser of the wire format written from the
specification. The published vectors (negentropy_vectors/ and the constants below) come from
the reference project's test suite: the Kotlin port's varint, timestamp, fingerprint,
initiate and two-round exchange tests, and the protocol-version test.
"""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path
from typing import NamedTuple

import pytest

from relay.protocol.negentropy import (
    INFINITY,
    MAX_TIMESTAMP,
    Bound,
    Negentropy,
    NegentropyError,
    Storage,
    UnsupportedVersionError,
    decode_varint,
    encode_varint,
    from_hex,
    to_hex,
)

VECTORS = Path(__file__).parent / "negentropy_vectors"
Item = tuple[int, bytes]


# --- independent helpers -------------------------------------------------------------------


def spec_fingerprint(ids: list[bytes]) -> bytes:
    """The specification's fingerprint, for fewer than 128 ids (a one-byte varint)."""
    assert len(ids) < 128
    total = sum(int.from_bytes(i, "little") for i in ids) % 2**256
    return hashlib.sha256(total.to_bytes(32, "little") + bytes([len(ids)])).digest()[:16]


def spec_fingerprint_any(ids: list[bytes]) -> bytes:
    total = sum(int.from_bytes(i, "little") for i in ids) % 2**256
    return hashlib.sha256(total.to_bytes(32, "little") + encode_varint(len(ids))).digest()[:16]


class Range(NamedTuple):
    timestamp: int
    prefix: bytes
    mode: int
    payload: bytes | list[bytes] | None


def parse(msg: bytes) -> list[Range]:
    """A message's ranges as the specification describes them."""

    def varint(pos: int) -> tuple[int, int]:
        value = 0
        while True:
            byte = msg[pos]
            pos += 1
            value = value * 128 + (byte & 0x7F)
            if byte < 0x80:
                return value, pos

    assert msg[0] == 0x61
    ranges, pos, last = [], 1, 0
    while pos < len(msg):
        encoded, pos = varint(pos)
        last = MAX_TIMESTAMP if encoded == 0 else last + encoded - 1
        length, pos = varint(pos)
        prefix, pos = msg[pos : pos + length], pos + length
        mode, pos = varint(pos)
        payload: bytes | list[bytes] | None = None
        if mode == 1:
            payload, pos = msg[pos : pos + 16], pos + 16
        elif mode == 2:
            count, pos = varint(pos)
            payload = [msg[p : p + 32] for p in range(pos, pos + 32 * count, 32)]
            pos += 32 * count
        ranges.append(Range(last, prefix, mode, payload))
    assert pos == len(msg)
    return ranges


def key(timestamp: int, prefix: bytes) -> tuple[int, bytes]:
    return timestamp, prefix.ljust(32, b"\0")


def random_sets(
    seed: int, n: int, only_client: float, only_server: float, span: int
) -> tuple[list[Item], list[Item]]:
    rng = random.Random(seed)
    client: list[Item] = []
    server: list[Item] = []
    for _ in range(n):
        item = (1_700_000_000 + rng.randrange(span), rng.randbytes(32))
        roll = rng.random()
        if roll < only_client:
            client.append(item)
        elif roll < only_client + only_server:
            server.append(item)
        else:
            client.append(item)
            server.append(item)
    return client, server


class Exchange(NamedTuple):
    have: list[bytes]
    need: list[bytes]
    round_trips: int
    client_messages: list[bytes]
    server_messages: list[bytes]


def sync(
    client_items: list[Item], server_items: list[Item], client_limit: int = 0, server_limit: int = 0
) -> Exchange:
    client = Negentropy(Storage.from_unsorted(client_items), client_limit)
    server = Negentropy(Storage.from_unsorted(server_items), server_limit)
    have: list[bytes] = []
    need: list[bytes] = []
    sent: list[bytes] = []
    answered: list[bytes] = []
    message: bytes | None = client.initiate()
    while message is not None:
        sent.append(message)
        reply = server.reconcile_server(message)
        answered.append(reply)
        message, new_have, new_need = client.reconcile_client(reply)
        have += new_have
        need += new_need
        assert len(answered) < 10_000, "the exchange does not end"
    return Exchange(have, need, len(answered), sent, answered)


def check_result(exchange: Exchange, client_items: list[Item], server_items: list[Item]) -> None:
    ours = {i for _, i in client_items}
    theirs = {i for _, i in server_items}
    assert len(exchange.have) == len(set(exchange.have)), "an id was reported twice"
    assert len(exchange.need) == len(set(exchange.need)), "an id was reported twice"
    assert set(exchange.have) == ours - theirs
    assert set(exchange.need) == theirs - ours


def load_items(name: str) -> list[Item]:
    lines = (VECTORS / name).read_text().split()
    return [(int(t), bytes.fromhex(h)) for t, h in (line.split(",") for line in lines)]


# --- varints -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (1, "01"),
        (2, "02"),
        (127, "7f"),
        (128, "8100"),
        (255, "817f"),
        (256, "8200"),
        (65535, "83ff7f"),
        (65536, "848000"),
        (65537, "848001"),
        (1678011278, "86a091d70e"),
        # 2**63 is 1 followed by nine base-128 zero digits.
        (2**63, "81" + "80" * 8 + "00"),
        (2**64 - 1, "81" + "ff" * 8 + "7f"),
    ],
)
def test_varint_vectors(value: int, encoded: str) -> None:
    assert encode_varint(value).hex() == encoded
    assert decode_varint(bytes.fromhex(encoded) + b"\xaa") == (value, len(encoded) // 2)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("", "ends inside a varint"),
        ("80", "ends inside a varint"),
        ("ffff", "ends inside a varint"),
        ("82" + "80" * 8 + "00", "exceeds 64 bits"),
    ],
)
def test_bad_varints(data: str, reason: str) -> None:
    with pytest.raises(NegentropyError, match=reason):
        decode_varint(bytes.fromhex(data))


# --- storage -------------------------------------------------------------------------------


def test_storage_fingerprints_and_search() -> None:
    rng = random.Random(1)
    items = sorted((rng.randrange(50), rng.randbytes(32)) for _ in range(300))
    storage = Storage(items)
    assert len(storage) == 300
    ids = [i for _, i in items]
    for begin, end in [(0, 0), (0, 300), (17, 18), (40, 299), (100, 227)]:
        assert storage.fingerprint(begin, end) == spec_fingerprint_any(ids[begin:end])
    assert storage.ids(5, 8) == ids[5:8]
    assert (storage.timestamp(7), storage.id(7)) == items[7]
    for timestamp, item_id in items[::7]:
        index = items.index((timestamp, item_id))
        assert storage.lower_bound(Bound(timestamp, item_id)) == index
        assert storage.lower_bound(Bound(timestamp)) == min(
            i for i, (t, _) in enumerate(items) if t == timestamp
        )
    assert storage.lower_bound(INFINITY) == 300
    assert storage.lower_bound(Bound(0)) == 0
    # Restricted to a window.
    assert storage.lower_bound(Bound(0), 10, 20) == 10
    assert storage.lower_bound(INFINITY, 10, 20) == 20


def test_fingerprint_vectors() -> None:
    storage = Storage(load_items("three_items.txt"))
    assert storage.fingerprint(0, 1).hex() == "6d74e1212fcafc8a81d090f0ffbde8b0"
    assert storage.fingerprint(0, 2).hex() == "96b26d110825d4b1805fc56988a3e65d"
    assert storage.fingerprint(0, 3).hex() == "c15ce60f185fd24ae341076caa93daa5"
    ids = storage.ids(0, 3)
    assert storage.fingerprint(0, 3) == spec_fingerprint(ids)


def test_fingerprint_sum_wraps_modulo_2_256() -> None:
    ids = [b"\xff" * 32, b"\x02" + b"\x00" * 31]  # sums to 1 mod 2**256
    storage = Storage.from_unsorted([(1, i) for i in ids])
    expected = hashlib.sha256((1).to_bytes(32, "little") + b"\x02").digest()[:16]
    assert storage.fingerprint(0, 2) == expected


@pytest.mark.parametrize(
    ("items", "reason"),
    [
        ([(2, b"\x01" * 32), (1, b"\x02" * 32)], "sorted"),
        ([(1, b"\x02" * 32), (1, b"\x01" * 32)], "sorted"),
        ([(1, b"\x01" * 32), (1, b"\x01" * 32)], "duplicates"),
        ([(1, b"\x01" * 31)], "32 bytes"),
        ([(1, b"\x01" * 33)], "32 bytes"),
        ([(-1, b"\x01" * 32)], "timestamp"),
        ([(MAX_TIMESTAMP, b"\x01" * 32)], "timestamp"),
    ],
)
def test_storage_refuses_bad_items(items: list[Item], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Storage(items)


def test_storage_from_unsorted() -> None:
    a, b = (5, b"\x02" * 32), (5, b"\x01" * 32)
    storage = Storage.from_unsorted([a, b, a, (1, b"\x09" * 32)])
    assert [storage.id(i) for i in range(len(storage))] == [b"\x09" * 32, b"\x01" * 32, a[1]]


def test_minimal_bounds() -> None:
    first = bytes([7, 7, 1]) + bytes(29)
    second = bytes([7, 7, 2]) + bytes(29)
    storage = Storage([(5, first), (5, second), (6, bytes(32))])
    assert storage.minimal_bound(1) == Bound(5, bytes([7, 7, 2]))
    assert storage.minimal_bound(2) == Bound(6)


# --- the protocol's vectors ----------------------------------------------------------------


def test_initiate_vector() -> None:
    client = Negentropy(Storage(load_items("three_items.txt")))
    assert client.initiate().hex() == (
        "6100000203"
        "eb6b05c2e3b008592ac666594d78ed83e7b9ab30f825b9b08878128f7500008c"
        "39b916432333e069a4386917609215cc688eb99f06fed01aadc29b1b4b92d6f0"
        "abc81d58ebe3b9a87100d47f58bf15e9b1cbf62d38623f11d0f0d17179f5f3ba"
    )


def test_two_round_vector() -> None:
    """The reference suite's exchange: 30 items each side, 24 shared; one round trip."""
    lines = (VECTORS / "two_rounds_messages.txt").read_text().splitlines()
    first, answer = (line for line in lines if line and not line.startswith("#"))
    client = Negentropy(Storage.from_unsorted(load_items("two_rounds_client.txt")))
    server = Negentropy(Storage.from_unsorted(load_items("two_rounds_server.txt")))
    message = client.initiate()
    assert message.hex() == first
    reply = server.reconcile(message)
    assert reply.hex() == answer
    following, have, need = client.reconcile(reply)
    assert following is None
    assert [i.hex()[:8] for i in have] == [
        "f8c2e717", "71feb8cd", "8406d984", "ed3784f3", "6f8d146c", "5144bfaa",
    ]  # fmt: skip
    assert [i.hex()[:8] for i in need] == [
        "ef3e606c", "3ada797b", "7d929283", "556ea7b8", "c820f4c1", "5650fc15",
    ]  # fmt: skip


@pytest.mark.parametrize("version", ["62aabbccddeeff", "60", "6f00000200"])
def test_server_answers_another_version_with_its_own(version: str) -> None:
    server = Negentropy(Storage(load_items("three_items.txt")))
    assert server.reconcile(bytes.fromhex(version)) == b"\x61"
    # The server stays usable: the client may retry in version 1.
    assert server.reconcile(bytes.fromhex("6100000200")) == bytes.fromhex("6100000203") + b"".join(
        server.storage.ids(0, 3)
    )


@pytest.mark.parametrize("first", ["00", "5f", "70", "ff"])
def test_a_version_byte_outside_the_range_is_an_error(first: str) -> None:
    server = Negentropy(Storage([]))
    with pytest.raises(NegentropyError, match="invalid negentropy protocol version byte"):
        server.reconcile(bytes.fromhex(first + "00000200"))


def test_client_refuses_an_answer_in_another_version() -> None:
    client = Negentropy(Storage([]))
    client.initiate()
    with pytest.raises(UnsupportedVersionError, match="0x62") as caught:
        client.reconcile(b"\x62")
    assert caught.value.version == 0x62
    assert isinstance(caught.value, NegentropyError)


def test_a_message_byte_by_byte() -> None:
    """32 items: the first message is 16 Fingerprint buckets of 2 items, each bound the
    shortest telling a bucket's first item from the previous one's last."""
    items = [(1000 + i // 4, bytes([7, 7, i % 4, i]) + bytes(28)) for i in range(32)]
    ids = [i for _, i in items]
    message = Negentropy(Storage(items)).initiate()
    expected = bytearray(b"\x61")
    for bucket in range(16):
        first = 2 * bucket + 2  # the next bucket's first item
        if bucket == 15:
            expected += b"\x00\x00"  # infinity, no prefix
        elif bucket == 0:
            # Timestamp 1000, delta-encoded from 0 as 1 + 1000 = 1001 = 7 * 128 + 105.
            assert items[first][0] == items[first - 1][0] == 1000
            expected += b"\x87\x69" + b"\x03" + bytes([7, 7, 2])
        elif first % 4 == 0:
            expected += b"\x02\x00"  # one more second; timestamps differ, so no prefix
        else:
            # Same timestamp as the previous bound and the previous item: the shared
            # prefix (7, 7) and one more byte.
            expected += b"\x01\x03" + bytes([7, 7, 2])
        expected += b"\x01" + spec_fingerprint(ids[2 * bucket : 2 * bucket + 2])
    assert message == bytes(expected)
    assert [(r.timestamp, r.prefix) for r in parse(message)][:3] == [
        (1000, bytes([7, 7, 2])),
        (1001, b""),
        (1001, bytes([7, 7, 2])),
    ]


def test_both_empty() -> None:
    client = Negentropy(Storage([]))
    server = Negentropy(Storage([]))
    first = client.initiate()
    assert first.hex() == "6100000200"  # infinity, no prefix, IdList, no ids
    reply = server.reconcile(first)
    assert reply.hex() == "6100000200"
    assert client.reconcile(reply) == (None, [], [])


def test_a_version_byte_alone_means_nothing_to_do() -> None:
    server = Negentropy(Storage(load_items("three_items.txt")))
    assert server.reconcile(b"\x61") == b"\x61"
    client = Negentropy(Storage(load_items("three_items.txt")))
    client.initiate()
    assert client.reconcile(b"\x61") == (None, [], [])


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    ("client_limit", "server_limit"), [(0, 0), (4096, 4096), (0, 4096), (4096, 0), (0, 60_000)]
)
def test_random_round_trips(seed: int, client_limit: int, server_limit: int) -> None:
    rng = random.Random(seed)
    n = rng.choice([50, 500, 3000])
    span = rng.choice([3, 200, 10 * n])  # few timestamps: many items share one
    client_items, server_items = random_sets(seed, n, rng.random() / 10, rng.random() / 10, span)
    exchange = sync(client_items, server_items, client_limit, server_limit)
    check_result(exchange, client_items, server_items)
    if client_limit:
        assert max(map(len, exchange.client_messages)) <= client_limit
    if server_limit:
        assert max(map(len, exchange.server_messages)) <= server_limit
    if not client_limit and not server_limit:
        # Each round trip descends two levels of 16 buckets.
        assert exchange.round_trips <= 1 + math.ceil(math.log(n, 16))


def test_frame_limits_hold_while_every_id_differs() -> None:
    client_items, server_items = random_sets(11, 8000, 0.5, 0.5, 1000)
    exchange = sync(client_items, server_items, 4096, 4096)
    check_result(exchange, client_items, server_items)
    assert max(map(len, exchange.client_messages + exchange.server_messages)) <= 4096
    # 8000 ids of 32 bytes cross in about 4 KB frames, one way or the other.
    assert exchange.round_trips <= 8000 * 32 // 3000


def test_client_empty() -> None:
    _, server_items = random_sets(2, 1000, 0, 0, 100)
    exchange = sync([], server_items)
    check_result(exchange, [], server_items)
    assert exchange.round_trips == 1


def test_server_empty() -> None:
    client_items, _ = random_sets(3, 1000, 0, 0, 100)
    exchange = sync(client_items, [])
    check_result(exchange, client_items, [])
    assert exchange.have and exchange.round_trips <= 2


def test_identical_large_sets_take_one_round_trip() -> None:
    items, _ = random_sets(4, 20_000, 0, 0, 5000)
    exchange = sync(items, list(items), 4096, 4096)
    assert exchange.round_trips == 1
    assert exchange.server_messages == [b"\x61"]
    assert exchange.have == exchange.need == []


def test_items_sharing_a_timestamp() -> None:
    """Every item at one timestamp, the ids sharing long prefixes: only the id prefixes of
    the bounds tell the ranges apart."""
    rng = random.Random(5)
    ids = {bytes(28) + rng.randbytes(1) + rng.randbytes(3) for _ in range(3000)}
    items = [(1_700_000_000, i) for i in ids]
    client_items = [x for x in items if rng.random() > 0.03]
    server_items = [x for x in items if rng.random() > 0.03]
    exchange = sync(client_items, server_items)
    check_result(exchange, client_items, server_items)
    bounds = [r for m in exchange.client_messages + exchange.server_messages for r in parse(m)]
    assert any(len(r.prefix) >= 30 for r in bounds)
    assert all(r.timestamp in (1_700_000_000, MAX_TIMESTAMP) for r in bounds)


def test_the_largest_timestamps() -> None:
    rng = random.Random(6)
    items = [(MAX_TIMESTAMP - 1 - rng.randrange(40), rng.randbytes(32)) for _ in range(2000)]
    client_items = items[:1900]
    server_items = items[100:]
    exchange = sync(client_items, server_items, 4096, 4096)
    check_result(exchange, client_items, server_items)
    # The largest timestamp an item may have, 2**64 - 2, delta-encoded from 0 as 2**64 - 1:
    # ten bytes, the most a varint may take.
    ids = [bytes([i]) * 32 for i in range(32)]
    storage = Storage([(5, ids[0]), (5, ids[1])] + [(MAX_TIMESTAMP - 1, i) for i in ids[2:]])
    first = Negentropy(storage).initiate()
    assert first[:29] == bytes.fromhex("61" + "81" + "ff" * 8 + "7f" + "00" + "01") + (
        spec_fingerprint(ids[:2])
    )
    assert parse(first)[0][:3] == (MAX_TIMESTAMP - 1, b"", 1)
    reply = Negentropy(Storage(list(zip([5, 5], ids[:2], strict=True)))).reconcile(first)
    assert parse(reply)[0].timestamp == MAX_TIMESTAMP - 1  # matched up to there, then split


def test_hundred_thousand_items_one_percent_apart() -> None:
    rng = random.Random(7)
    shared = [(1_700_000_000 + rng.randrange(10**6), rng.randbytes(32)) for _ in range(100_000)]
    client_items = shared + [(1_700_000_000 + rng.randrange(10**6), rng.randbytes(32))
                             for _ in range(1000)]  # fmt: skip
    server_items = shared + [(1_700_000_000 + rng.randrange(10**6), rng.randbytes(32))
                             for _ in range(1000)]  # fmt: skip
    exchange = sync(client_items, server_items, 60_000, 60_000)
    check_result(exchange, client_items, server_items)
    assert max(map(len, exchange.client_messages + exchange.server_messages)) <= 60_000
    # 2000 ids each way are 64 KB; listing whole buckets of ~25 ids to show them costs more.
    assert exchange.round_trips <= 40


# --- frame size limit: how the rest is deferred --------------------------------------------


def test_a_cut_id_list_ends_at_the_first_item_left_out() -> None:
    """An empty client against 2000 items under 4096 bytes: the server lists what fits,
    ends that range at the first item it left out, then one Fingerprint range to infinity
    over the rest."""
    _, server_items = random_sets(8, 2000, 0, 0, 10**6)
    storage = Storage.from_unsorted(server_items)
    server = Negentropy(storage, 4096)
    reply = server.reconcile(Negentropy(Storage([])).initiate())
    assert len(reply) <= 4096
    listed, rest = parse(reply)
    assert listed.mode == 2 and isinstance(listed.payload, list)
    count = len(listed.payload)
    assert 100 < count < 128
    assert listed.payload == storage.ids(0, count)
    assert (listed.timestamp, listed.prefix) == (storage.timestamp(count), storage.id(count))
    assert rest == Range(MAX_TIMESTAMP, b"", 1, spec_fingerprint_any(storage.ids(count, 2000)))


def true_fingerprints(message: bytes, storage: Storage) -> bool:
    """Whether every Fingerprint range of `message` is the sender's fingerprint of its items
    in that range (from the previous bound to this one)."""
    lower = 0
    for r in parse(message):
        upper = storage.lower_bound(Bound(r.timestamp, r.prefix))
        if r.mode == 1 and r.payload != storage.fingerprint(lower, upper):
            return False
        lower = upper
    return True


def test_deferred_ranges_carry_their_true_fingerprint() -> None:
    """When splitting would overflow, a message skips to where its written ranges end and
    fingerprints everything from there: like every fingerprint sent, it is the range's own,
    so the peer can trust a match."""
    client_items, server_items = random_sets(9, 30_000, 0.01, 0.01, 10**6)
    client_storage = Storage.from_unsorted(client_items)
    server_storage = Storage.from_unsorted(server_items)
    client = Negentropy(client_storage, 4096)
    server = Negentropy(server_storage, 4096)
    message: bytes | None = client.initiate()
    full = 0
    while message is not None:
        assert true_fingerprints(message, client_storage)
        reply = server.reconcile(message)
        assert true_fingerprints(reply, server_storage)
        last = parse(reply)[-1]
        if len(reply) > 4096 - 300 and last[:3] == (MAX_TIMESTAMP, b"", 1):
            full += 1
        message, _, _ = client.reconcile(reply)
    assert full > 0


# --- malformed input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("", "empty"),
        ("6180", "ends inside a varint"),
        ("6100", "ends inside a varint"),
        ("610000", "ends inside a varint"),
        ("6100000200ff", "ends inside a varint"),
        ("610021" + "00" * 33 + "00", "longer than 32"),
        ("610002aa", "ends inside a bound's id prefix"),
        ("61000003", "unknown mode 3"),
        ("61000004", "unknown mode 4"),
        ("61000001" + "00" * 15, "ends inside a fingerprint"),
        ("6100000202" + "00" * 40, "announces 2 ids but 40 bytes remain"),
        ("6100000282" + "80" * 8 + "00", "exceeds 64 bits"),
        # (5, 10...) then (5, 05...): the second bound is below the first.
        ("6106011000" + "0101" + "0500", "out of order"),
    ],
)
@pytest.mark.parametrize("role", ["server", "client"])
def test_malformed_messages(data: str, reason: str, role: str) -> None:
    side = Negentropy(Storage(load_items("three_items.txt")))
    if role == "client":
        side.initiate()
    with pytest.raises(NegentropyError, match=reason):
        side.reconcile(bytes.fromhex(data))


def test_fuzz_only_negentropy_errors() -> None:
    rng = random.Random(1234)
    client_items, server_items = random_sets(10, 400, 0.1, 0.1, 50)
    server = Negentropy(Storage.from_unsorted(server_items), 4096)
    client = Negentropy(Storage.from_unsorted(client_items), 4096)
    valid = [client.initiate()]
    valid.append(server.reconcile(valid[0]))
    seen_errors = seen_results = 0
    for round_ in range(3000):
        base = rng.choice(valid)
        kind = round_ % 4
        if kind == 0:
            data = base[: rng.randrange(len(base) + 1)]
        elif kind == 1:
            flipped = bytearray(base)
            for _ in range(rng.randrange(1, 4)):
                flipped[rng.randrange(len(flipped))] = rng.randrange(256)
            data = bytes(flipped)
        elif kind == 2:
            data = b"\x61" + rng.randbytes(rng.randrange(60))
        else:
            data = rng.randbytes(rng.randrange(40))
        for side in (server, client):
            try:
                result = side.reconcile(data)
            except NegentropyError:
                seen_errors += 1
                continue
            seen_results += 1
            if side is server:
                assert isinstance(result, bytes) and len(result) <= 4096
            else:
                following, have, need = result
                assert following is None or len(following) <= 4096
                assert all(len(i) == 32 for i in have + need)
    assert seen_errors > 100 and seen_results > 100


# --- roles and settings --------------------------------------------------------------------


def test_frame_size_limit_must_be_at_least_4096() -> None:
    with pytest.raises(ValueError, match="4096"):
        Negentropy(Storage([]), 1000)
    Negentropy(Storage([]), 4096)


def test_roles() -> None:
    client = Negentropy(Storage([]))
    with pytest.raises(RuntimeError):
        client.reconcile_client(b"\x61")
    client.initiate()
    assert client.is_initiator
    with pytest.raises(RuntimeError):
        client.initiate()
    with pytest.raises(RuntimeError):
        client.reconcile_server(b"\x61")


def test_ids_are_reported_once_per_exchange() -> None:
    """The per-call lists hold only what earlier calls had not reported."""
    client = Negentropy(Storage(load_items("three_items.txt")))
    client.initiate()
    other = bytes(range(32))
    answer = bytes.fromhex("6100000201") + other
    _, have, need = client.reconcile(answer)
    assert need == [other] and len(have) == 3
    assert client.reconcile(answer) == (None, [], [])


# --- hex framing ---------------------------------------------------------------------------


def test_hex_round_trip() -> None:
    message = bytes.fromhex("6100000200")
    assert to_hex(message) == "6100000200"
    assert from_hex("6100000200") == message
    assert from_hex("61AB") == b"\x61\xab"
    assert from_hex("") == b""


@pytest.mark.parametrize("text", ["6", "6g", "61 00", " 6100", "61\n", "0x61"])
def test_bad_hex(text: str) -> None:
    with pytest.raises(NegentropyError, match="hex"):
        from_hex(text)


def test_hex_must_be_text() -> None:
    with pytest.raises(NegentropyError, match="hex string"):
        from_hex(b"6100")  # type: ignore[arg-type]
