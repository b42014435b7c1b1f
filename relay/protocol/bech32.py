"""NIP-19 bech32 for public keys: `npub1...` to and from 64-hex (BIP-173 checksum)."""

from __future__ import annotations

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: list[int]) -> int:
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            checksum ^= _GENERATOR[i] if (top >> i) & 1 else 0
    return checksum


def _expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert(data: list[int], from_bits: int, to_bits: int, pad: bool) -> list[int] | None:
    acc = bits = 0
    out = []
    maxv = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad and bits:
        out.append((acc << (to_bits - bits)) & maxv)
    elif not pad and (bits >= from_bits or (acc << (to_bits - bits)) & maxv):
        return None
    return out


def decode_key(expected_hrp: str, value: str) -> str | None:
    """The 64-hex key in a bech32 `npub`/`nsec` string, or None when it is not one."""
    text = value.lower()
    if text != value and value.upper() != value:
        return None
    hrp, sep, rest = text.rpartition("1")
    if hrp != expected_hrp or not sep or len(rest) < 7 or any(c not in CHARSET for c in rest):
        return None
    data = [CHARSET.index(c) for c in rest]
    if _polymod(_expand(hrp) + data) != 1:
        return None
    decoded = _convert(data[:-6], 5, 8, pad=False)
    if decoded is None or len(decoded) != 32:
        return None
    return bytes(decoded).hex()


def npub_to_hex(value: str) -> str | None:
    return decode_key("npub", value)


def encode_key(hrp: str, value: str) -> str:
    """The bech32 string of a 32-byte hex value under `hrp` (`npub`, `note`, ...)."""
    data = _convert(list(bytes.fromhex(value)), 8, 5, pad=True)
    assert data is not None
    values = _expand(hrp) + data
    polymod = _polymod([*values, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(CHARSET[d] for d in data + checksum)


def hex_to_npub(pubkey: str) -> str:
    return encode_key("npub", pubkey)


def hex_to_note(event_id: str) -> str:
    """NIP-19 `note1...` of an event id."""
    return encode_key("note", event_id)
