"""The relay's own signing key: from RELAY_SECRET_KEY, or generated once in the data dir."""

from __future__ import annotations

import os
from pathlib import Path

from coincurve import PrivateKey

KEY_FILE = "relay.key"


def load_or_create_key(secret_hex: str | None, data_dir: Path) -> PrivateKey:
    if secret_hex:
        return PrivateKey(bytes.fromhex(secret_hex))
    path = data_dir / KEY_FILE
    if path.exists():
        return PrivateKey(bytes.fromhex(path.read_text().strip()))
    key = PrivateKey()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.secret.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return key


def load_relay_key(secret_hex: str | None, data_dir: Path) -> PrivateKey | None:
    """The relay's key as a command run beside it finds it (RELAY_SECRET_KEY, else the
    data directory's file), never a new one; None when there is none."""
    if secret_hex or (data_dir / KEY_FILE).exists():
        return load_or_create_key(secret_hex, data_dir)
    return None


def pubkey_hex(key: PrivateKey) -> str:
    return str(key.public_key_xonly.format().hex())
