"""The filesystem object store: the embedded default, under the data directory.

Same semantics as S3 conditional writes. Writes go to a temporary file that is fsynced,
then linked (create-only: an atomic link fails if the key exists) or renamed (replace,
under an exclusive lock file so compare-and-swap is safe across processes on one machine).
The revision token is the sha256 of the content.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
from pathlib import Path

import trio

from relay.git.objectstore import CasResult, Found, Listed, LostRace, TooLarge, Won

_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


def token_of(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class FilesystemStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not parts or any(p in ("", ".", "..") or not _SEGMENT.fullmatch(p) for p in parts):
            raise ValueError(f"unsafe object key {key!r}")
        return self.root.joinpath(*parts)

    async def get(self, key: str, max_bytes: int | None = None) -> Found | None:
        return await trio.to_thread.run_sync(self._get, self._path(key), max_bytes)

    async def put(self, key: str, body: bytes, if_match: str | None) -> CasResult:
        path = self._path(key)
        if if_match is None:
            return await trio.to_thread.run_sync(self._create, path, body)
        return await trio.to_thread.run_sync(self._replace, path, body, if_match)

    async def delete(self, key: str) -> None:
        path = self._path(key)
        await trio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))

    async def list(self, prefix: str) -> list[Listed]:
        return await trio.to_thread.run_sync(_listing, self.root, prefix)

    async def aclose(self) -> None:
        return None

    # -- blocking parts, run in a worker thread ---------------------------------------------

    @staticmethod
    def _get(path: Path, max_bytes: int | None) -> Found | None:
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if max_bytes is not None and size > max_bytes:
                    raise TooLarge(f"{path.name} is {size} bytes, more than {max_bytes}")
                body = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
        except FileNotFoundError:
            return None
        if max_bytes is not None and len(body) > max_bytes:
            raise TooLarge(f"{path.name} is larger than {max_bytes} bytes")
        return Found(body, token_of(body))

    @staticmethod
    def _write_temp(path: Path, body: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    @staticmethod
    def _sync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _create(self, path: Path, body: bytes) -> CasResult:
        tmp = self._write_temp(path, body)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return LostRace()
        finally:
            tmp.unlink(missing_ok=True)
        self._sync_dir(path.parent)
        return Won(token_of(body))

    def _replace(self, path: Path, body: bytes, if_match: str) -> CasResult:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = path.with_name(f".{path.name}.lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                try:
                    current = path.read_bytes()
                except FileNotFoundError:
                    return LostRace()
                if token_of(current) != if_match:
                    return LostRace()
                tmp = self._write_temp(path, body)
                os.replace(tmp, path)
                self._sync_dir(path.parent)
                return Won(token_of(body))
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _listing(root: Path, prefix: str) -> list[Listed]:
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.startswith("."):  # a write's temporary file, or a lock
                continue
            path = Path(dirpath, name)
            key = path.relative_to(root).as_posix()
            if key.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    stat = path.stat()
                    found.append(Listed(key, stat.st_mtime, stat.st_size))
    return found
