"""Negentropy protocol version 1 (byte 0x61), the set reconciliation behind NIP-77, without I/O.

Both sides hold a `Storage`: (timestamp, 32-byte id) items sorted by timestamp, then id.
The client (initiator) sends `Negentropy.initiate()`, the server answers each message with
`reconcile`, and the client feeds each answer to its own `reconcile` until that returns no
next message; by then the client has learnt every id it has that the server lacks ("have")
and every id the server has that it lacks ("need").

A message is the version byte and a list of ranges covering the (timestamp, id) space in
order. Each range is an exclusive upper bound (a timestamp delta-encoded against the
previous bound of the same message, 0 meaning infinity, and the shortest id prefix telling
the range's first item from the previous range's last) and a mode: Skip (nothing to do),
Fingerprint (16 bytes: sha256 of the ids summed mod 2**256 as 32 bytes little-endian,
followed by the count as a varint) or IdList (a count and the ids). A side whose fingerprint
differs splits the range in 16 buckets of its own items, or lists its ids when it has fewer
than 32 items there; a client that receives an id list has learnt that range's differences.

With a frame size limit, a side that would grow its message past the limit (less 200 bytes
of room) stops processing ranges, skips to where its last range ended and sends one
Fingerprint range from there to infinity: the fingerprint of its items in that range. The
other side finds it different (there is work left there) and splits it, so the exchange
goes on in further round trips. (The reference implementation sends the fingerprint of
only the items after the range it stopped at, a value that merely differs; this one sends
the range's true fingerprint, so that a match means nothing is left to do there.)

Hex helpers frame messages as NIP-77's NEG-OPEN and NEG-MSG carry them. Every fault in a
peer's input raises `NegentropyError` (a `ValueError`) naming it. A server that gets a
message of another protocol version (0x60 to 0x6f, other than 0x61) answers, as the
specification says, with a message of just its own version byte, b"\\x61": the relay sends
that as a NEG-MSG (not a NEG-ERR), so that the client may retry in version 1.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_left
from collections.abc import Iterable
from enum import IntEnum
from typing import Any, NamedTuple

PROTOCOL_VERSION = 0x61
ID_SIZE = 32
FINGERPRINT_SIZE = 16
MAX_TIMESTAMP = 2**64 - 1  # "infinity": no item may have it
MIN_FRAME_SIZE_LIMIT = 4096
BUCKETS = 16
# Room kept under the frame size limit for the closing ranges (a Skip bound and the
# Fingerprint to infinity) and for an id list's header.
_FRAME_SLACK = 200
_MASK = 2**256 - 1
_U64 = 2**64
_KEY_SIZE = 8 + ID_SIZE
_HEX = re.compile(r"[0-9a-fA-F]*")

# A client's result for one message: the next message (None when reconciliation is done),
# the ids it has that the server lacks, and the ids the server has that it lacks.
ClientStep = tuple[bytes | None, list[bytes], list[bytes]]


class NegentropyError(ValueError):
    """A negentropy message (or its hex) that cannot be read or is against the protocol."""


class UnsupportedVersionError(NegentropyError):
    """The server answered in a protocol version this side does not speak."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"the server speaks negentropy protocol version 0x{version:02x}, "
            f"not 0x{PROTOCOL_VERSION:02x}"
        )
        self.version = version


class Mode(IntEnum):
    SKIP = 0
    FINGERPRINT = 1
    ID_LIST = 2


class Bound(NamedTuple):
    """An exclusive range bound: a timestamp and an id prefix (the rest taken as zeros)."""

    timestamp: int
    id_prefix: bytes = b""

    @property
    def key(self) -> bytes:
        """The sort key items are compared with: 8 bytes of timestamp, then 32 of id."""
        return self.timestamp.to_bytes(8, "big") + self.id_prefix.ljust(ID_SIZE, b"\0")


INFINITY = Bound(MAX_TIMESTAMP)
_ZERO_BOUND = Bound(0)


# --- varints -------------------------------------------------------------------------------


def encode_varint(n: int) -> bytes:
    """Base-128 digits, most significant first, the high bit set on all but the last."""
    if n < 0:
        raise ValueError("a varint cannot be negative")
    digits = [n & 0x7F]
    n >>= 7
    while n:
        digits.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(digits))


def decode_varint(data: bytes, pos: int = 0) -> tuple[int, int]:
    """The varint at `pos` (at most 64 bits) and the position after it."""
    value = 0
    end = len(data)
    while True:
        if pos >= end:
            raise NegentropyError("message ends inside a varint")
        byte = data[pos]
        pos += 1
        value = (value << 7) | (byte & 0x7F)
        if value >= _U64:
            raise NegentropyError("varint exceeds 64 bits")
        if not byte & 0x80:
            return value, pos


# --- fingerprints --------------------------------------------------------------------------


def fingerprint(id_sum: int, count: int) -> bytes:
    """The fingerprint of `count` ids whose sum (as little-endian integers) is `id_sum`."""
    raw = (id_sum & _MASK).to_bytes(ID_SIZE, "little") + encode_varint(count)
    return hashlib.sha256(raw).digest()[:FINGERPRINT_SIZE]


# --- storage -------------------------------------------------------------------------------


class _Keys:
    """The items' sort keys (8 bytes of timestamp, big-endian, then the id) as a sequence
    over one contiguous blob, for bisect."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __len__(self) -> int:
        return len(self.blob) // _KEY_SIZE

    def __getitem__(self, index: int) -> bytes:
        start = index * _KEY_SIZE
        return self.blob[start : start + _KEY_SIZE]


class Storage:
    """Items (timestamp, 32-byte id) in (timestamp, id) order, kept in two contiguous blobs
    (72 bytes an item): the sort keys, to bisect, and the running sums of the ids mod 2**256,
    so that any range's fingerprint takes constant time."""

    __slots__ = ("_keys", "_sums")

    def __init__(self, items: Iterable[tuple[int, bytes]]) -> None:
        """`items` must come sorted by (timestamp, id), without duplicates (ValueError)."""
        keys = bytearray()
        sums = bytearray(ID_SIZE)  # the sum before the first item
        total = 0
        previous = b""
        for index, (timestamp, raw_id) in enumerate(items):
            if not isinstance(timestamp, int) or not 0 <= timestamp < MAX_TIMESTAMP:
                raise ValueError(f"item {index}: timestamp must be an int in [0, 2**64 - 1)")
            item_id = bytes(raw_id)
            if len(item_id) != ID_SIZE:
                raise ValueError(f"item {index}: id must be {ID_SIZE} bytes, not {len(item_id)}")
            key = timestamp.to_bytes(8, "big") + item_id
            if key <= previous:
                raise ValueError(
                    f"item {index}: items must be sorted by (timestamp, id) without duplicates"
                )
            previous = key
            keys += key
            total = (total + int.from_bytes(item_id, "little")) & _MASK
            sums += total.to_bytes(ID_SIZE, "little")
        self._keys = _Keys(bytes(keys))
        self._sums = bytes(sums)

    @classmethod
    def from_unsorted(cls, items: Iterable[tuple[int, bytes]]) -> Storage:
        """Sorts the items and drops exact duplicates first."""
        return cls(sorted({(t, bytes(i)) for t, i in items}))

    def __len__(self) -> int:
        return len(self._keys)

    def timestamp(self, index: int) -> int:
        start = index * _KEY_SIZE
        return int.from_bytes(self._keys.blob[start : start + 8], "big")

    def id(self, index: int) -> bytes:
        start = index * _KEY_SIZE + 8
        return self._keys.blob[start : start + ID_SIZE]

    def ids(self, begin: int, end: int) -> list[bytes]:
        """The ids of items [begin, end)."""
        blob = self._keys.blob
        return [
            blob[p : p + ID_SIZE] for p in range(begin * _KEY_SIZE + 8, end * _KEY_SIZE, _KEY_SIZE)
        ]

    def _sum(self, index: int) -> int:
        start = index * ID_SIZE
        return int.from_bytes(self._sums[start : start + ID_SIZE], "little")

    def fingerprint(self, begin: int, end: int) -> bytes:
        """The fingerprint of items [begin, end)."""
        return fingerprint(self._sum(end) - self._sum(begin), end - begin)

    def lower_bound(self, bound: Bound, begin: int = 0, end: int | None = None) -> int:
        """The index of the first item in [begin, end) not below `bound` (end if none)."""
        return bisect_left(self._keys, bound.key, begin, len(self) if end is None else end)

    def minimal_bound(self, index: int) -> Bound:
        """The shortest bound above item index - 1 and not above item index."""
        previous, current = self._keys[index - 1], self._keys[index]
        timestamp = int.from_bytes(current[:8], "big")
        if previous[:8] != current[:8]:
            return Bound(timestamp)
        differing = int.from_bytes(current, "big") ^ int.from_bytes(previous, "big")
        shared = ID_SIZE - (differing.bit_length() + 7) // 8
        return Bound(timestamp, current[8 : 8 + shared + 1])


# --- wire encoding -------------------------------------------------------------------------


class _Writer:
    """Ranges being written; timestamps are deltas against the previous bound written."""

    __slots__ = ("buf", "last_bound", "last_timestamp")

    def __init__(self, last_timestamp: int = 0, last_bound: Bound = _ZERO_BOUND) -> None:
        self.buf = bytearray()
        self.last_timestamp = last_timestamp
        self.last_bound = last_bound

    def fork(self) -> _Writer:
        """An empty writer carrying on from this one's state (see `merge`)."""
        return _Writer(self.last_timestamp, self.last_bound)

    def merge(self, other: _Writer) -> None:
        self.buf += other.buf
        self.last_timestamp = other.last_timestamp
        self.last_bound = other.last_bound

    def range(self, bound: Bound, mode: Mode) -> None:
        """A range's upper bound and mode; the payload, if any, follows."""
        if bound.timestamp == MAX_TIMESTAMP:
            self.buf.append(0)
            self.last_timestamp = MAX_TIMESTAMP
        else:
            self.buf += encode_varint(bound.timestamp - self.last_timestamp + 1)
            self.last_timestamp = bound.timestamp
        self.buf += encode_varint(len(bound.id_prefix))
        self.buf += bound.id_prefix
        self.buf += encode_varint(mode)
        self.last_bound = bound

    def id_list(self, bound: Bound, ids: list[bytes]) -> None:
        self.range(bound, Mode.ID_LIST)
        self.buf += encode_varint(len(ids))
        self.buf += b"".join(ids)

    def __len__(self) -> int:
        return len(self.buf)


class _Reader:
    __slots__ = ("data", "last_timestamp", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos
        self.last_timestamp = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def varint(self) -> int:
        value, self.pos = decode_varint(self.data, self.pos)
        return value

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise NegentropyError(f"message ends inside {what}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def bound(self) -> Bound:
        encoded = self.varint()
        if encoded == 0:
            timestamp = MAX_TIMESTAMP
        else:
            timestamp = min(self.last_timestamp + encoded - 1, MAX_TIMESTAMP)
        self.last_timestamp = timestamp
        length = self.varint()
        if length > ID_SIZE:
            raise NegentropyError(f"bound id prefix of {length} bytes is longer than {ID_SIZE}")
        return Bound(timestamp, self.take(length, "a bound's id prefix"))

    def ids(self) -> list[bytes]:
        count = self.varint()
        if count * ID_SIZE > len(self.data) - self.pos:
            raise NegentropyError(
                f"id list announces {count} ids but {len(self.data) - self.pos} bytes remain"
            )
        start = self.pos
        self.pos += count * ID_SIZE
        return [self.data[p : p + ID_SIZE] for p in range(start, self.pos, ID_SIZE)]


# --- the reconciler ------------------------------------------------------------------------


class Negentropy:
    """One side of a reconciliation over `storage`.

    As client: `initiate()` once, then `reconcile(reply)` with each server message, which
    returns (next message or None when done, have ids, need ids). The id lists hold the ids
    learnt from that one message, each id reported once over the whole exchange; the caller
    accumulates them. As server: `reconcile(message)` returns the answer to send.

    `frame_size_limit` (0: none, else at least 4096) bounds every message produced.
    """

    def __init__(self, storage: Storage, frame_size_limit: int = 0) -> None:
        if frame_size_limit != 0 and frame_size_limit < MIN_FRAME_SIZE_LIMIT:
            raise ValueError(f"frame_size_limit must be 0 or at least {MIN_FRAME_SIZE_LIMIT}")
        self.storage = storage
        self.frame_size_limit = frame_size_limit
        self.is_initiator = False
        self._reported_have: set[bytes] = set()
        self._reported_need: set[bytes] = set()

    def initiate(self) -> bytes:
        """The client's first message (makes this side the client)."""
        if self.is_initiator:
            raise RuntimeError("this negentropy client has already initiated")
        self.is_initiator = True
        out = _Writer()
        self._split(out, 0, len(self.storage), INFINITY)
        return bytes([PROTOCOL_VERSION]) + out.buf

    def reconcile(self, msg: bytes) -> Any:
        """The server's answer (bytes), or the client's `ClientStep`, as the role is: for
        typed code, `reconcile_server` and `reconcile_client` are the same, each typed."""
        if self.is_initiator:
            return self.reconcile_client(msg)
        return self.reconcile_server(msg)

    def reconcile_server(self, msg: bytes) -> bytes:
        """Answer a client message. A message in another protocol version (0x60 to 0x6f) is
        answered with b"\\x61" alone, the version this side speaks."""
        if self.is_initiator:
            raise RuntimeError("a negentropy client cannot answer as the server")
        version = _version(msg)
        if version != PROTOCOL_VERSION:
            return bytes([PROTOCOL_VERSION])
        return self._process(msg, [], [])

    def reconcile_client(self, msg: bytes) -> ClientStep:
        """Take a server message: (the next message, or None when done; the ids this side
        has and the server lacks; the ids the server has and this side lacks), the id lists
        holding what this message taught that earlier ones had not."""
        if not self.is_initiator:
            raise RuntimeError("call initiate() before reconciling as the client")
        version = _version(msg)
        if version != PROTOCOL_VERSION:
            raise UnsupportedVersionError(version)
        have: list[bytes] = []
        need: list[bytes] = []
        reply = self._process(msg, have, need)
        return (None if len(reply) == 1 else reply), have, need

    # -- internals --------------------------------------------------------------------------

    def _exceeds(self, size: int) -> bool:
        """Whether a message of `size` bytes (the version byte counted) is past the room."""
        return self.frame_size_limit != 0 and size > self.frame_size_limit - _FRAME_SLACK

    def _process(self, msg: bytes, have: list[bytes], need: list[bytes]) -> bytes:
        storage = self.storage
        size = len(storage)
        reader = _Reader(bytes(msg), 1)
        out = _Writer()
        prev_bound = _ZERO_BOUND
        prev_key = prev_bound.key
        prev_index = 0
        while not reader.at_end():
            bound = reader.bound()
            mode = reader.varint()
            key = bound.key
            if key < prev_key:
                raise NegentropyError("range bounds out of order")
            lower = prev_index
            upper = storage.lower_bound(bound, lower, size)
            part = out.fork()
            # Where the ranges written end, and the index of the first item past that.
            resume_bound, resume_index = prev_bound, lower
            if mode == Mode.SKIP:
                pass
            elif mode == Mode.FINGERPRINT:
                theirs = reader.take(FINGERPRINT_SIZE, "a fingerprint")
                if theirs != storage.fingerprint(lower, upper):
                    self._skip_to(part, prev_bound)
                    self._split(part, lower, upper, bound)
            elif mode == Mode.ID_LIST:
                their_ids = reader.ids()
                if self.is_initiator:
                    self._learn(storage.ids(lower, upper), their_ids, have, need)
                else:
                    self._skip_to(part, prev_bound)
                    used = 1 + len(out) + len(part)
                    upper, end_bound = self._list_ids(used, lower, upper, bound)
                    part.id_list(end_bound, storage.ids(lower, upper))
                    out.merge(part)
                    part = out.fork()
                    resume_bound, resume_index = end_bound, upper
            else:
                raise NegentropyError(f"unknown mode {mode}")
            if self._exceeds(1 + len(out) + len(part)):
                # Drop this range's output; one range from where the written ones end to
                # infinity, with its true fingerprint, tells the peer to carry on there.
                self._skip_to(out, resume_bound)
                out.range(INFINITY, Mode.FINGERPRINT)
                out.buf += storage.fingerprint(resume_index, size)
                break
            out.merge(part)
            prev_bound, prev_key, prev_index = bound, key, upper
        return bytes([PROTOCOL_VERSION]) + out.buf

    @staticmethod
    def _skip_to(out: _Writer, bound: Bound) -> None:
        """Cover (last bound written, `bound`) with a Skip range, unless empty."""
        if bound.key != out.last_bound.key:
            out.range(bound, Mode.SKIP)

    def _list_ids(self, used: int, lower: int, upper: int, bound: Bound) -> tuple[int, Bound]:
        """How many of the server's items [lower, upper) fit in the id list it answers an id
        list with, `used` bytes of the message being taken: (the index where the list
        stops, the bound it ends at). Cut short, the list ends at the first item left out
        (a full bound); else at the range's end, `bound`."""
        if self.frame_size_limit == 0:
            return upper, bound
        room = self.frame_size_limit - _FRAME_SLACK - used
        # As the reference does: one more id while the ids so far fit in the room.
        fits = 0 if room < 0 else room // ID_SIZE + 1
        if upper - lower <= fits:
            return upper, bound
        stop = lower + fits
        return stop, Bound(self.storage.timestamp(stop), self.storage.id(stop))

    def _split(self, out: _Writer, lower: int, upper: int, upper_bound: Bound) -> None:
        """Our items [lower, upper), up to `upper_bound`: listed when fewer than 32, else in
        16 Fingerprint buckets of (nearly) equal counts."""
        storage = self.storage
        count = upper - lower
        if count < 2 * BUCKETS:
            out.id_list(upper_bound, storage.ids(lower, upper))
            return
        per_bucket, extra = divmod(count, BUCKETS)
        current = lower
        for bucket in range(BUCKETS):
            start = current
            current += per_bucket + (1 if bucket < extra else 0)
            end_bound = upper_bound if current == upper else storage.minimal_bound(current)
            out.range(end_bound, Mode.FINGERPRINT)
            out.buf += storage.fingerprint(start, current)

    def _learn(
        self, ours: list[bytes], theirs: list[bytes], have: list[bytes], need: list[bytes]
    ) -> None:
        """A client's id-list range: ours that they lack, theirs that we lack (new ones)."""
        their_set = set(theirs)
        our_set = set(ours)
        for item_id in ours:
            if item_id not in their_set and item_id not in self._reported_have:
                self._reported_have.add(item_id)
                have.append(item_id)
        for item_id in theirs:
            if item_id not in our_set and item_id not in self._reported_need:
                self._reported_need.add(item_id)
                need.append(item_id)


def _version(msg: bytes) -> int:
    if not msg:
        raise NegentropyError("empty negentropy message")
    version = msg[0]
    if not 0x60 <= version <= 0x6F:
        raise NegentropyError(f"invalid negentropy protocol version byte 0x{version:02x}")
    return version


# --- hex framing (NIP-77) ------------------------------------------------------------------


def to_hex(msg: bytes) -> str:
    """A message as NEG-OPEN and NEG-MSG carry it."""
    return bytes(msg).hex()


def from_hex(text: str) -> bytes:
    """A NEG-OPEN or NEG-MSG message from its hex (either case; nothing else, even length)."""
    if not isinstance(text, str):
        raise NegentropyError("a negentropy message must be a hex string")
    if len(text) % 2 or not _HEX.fullmatch(text):
        raise NegentropyError("a negentropy message must be hex, an even number of digits")
    return bytes.fromhex(text)
