"""Pieces every benchmark runner shares: a throw-away PostgreSQL database, a free loopback
port, and bounded command-line numbers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import asyncpg

T = TypeVar("T")

ADMIN_URL = os.environ.get("RELAY_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


ROOT = Path(__file__).resolve().parents[1]


class SetupError(Exception):
    """The benchmark could not be set up (exit status 2)."""


def admin(sql: str, url: str = ADMIN_URL) -> None:
    """Run `sql` on the server's admin database (or the database `url` names)."""
    _on_admin(url, lambda conn: conn.execute(sql, timeout=60))


def admin_row(sql: str, *args: object, url: str = ADMIN_URL) -> asyncpg.Record | None:
    """The first row `sql` (with `args`) answers on the admin database (or `url`'s)."""
    return _on_admin(url, lambda conn: conn.fetchrow(sql, *args, timeout=60))


def _on_admin(url: str, call: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    async def run() -> T:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return await call(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


@contextlib.contextmanager
def fresh_database(prefix: str, error: type[Exception] = SetupError) -> Iterator[str]:
    """A new, empty database named `<prefix>_<random>`, dropped on the way out."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    try:
        admin(f"CREATE DATABASE {name}")
    except (OSError, asyncpg.PostgresError) as exc:
        raise error(f"cannot create a database on {ADMIN_URL}: {exc}") from exc
    try:
        base, _, _ = ADMIN_URL.rpartition("/")
        yield f"{base}/{name}"
    finally:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bounded(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


RELAY_START_TIMEOUT = 60.0


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def serve_command() -> list[str]:
    script = Path(sys.executable).with_name("relay")
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-m", "relay.cli", "serve"]


@contextlib.contextmanager
def spawned_relay(
    command: list[str],
    env: dict[str, str],
    port: int,
    log_path: Path,
    *,
    error: type[Exception] = SetupError,
    stop_timeout: float = 30.0,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a relay in its own process group (in `cwd`, default the repository root) until
    it listens on 127.0.0.1:`port`; on the way out SIGTERM (then SIGKILL) the group and
    report any error lines it logged."""
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=cwd or ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, signalled by its id only
        )
    try:
        deadline = time.monotonic() + RELAY_START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise error(
                        f"the relay did not start on 127.0.0.1:{port}:\n{log_tail(log_path)}"
                    ) from None
                time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        errors = [
            line
            for line in log_tail(log_path, 200).splitlines()
            if "ERROR" in line or "Traceback" in line
        ]
        if errors:
            print(
                f"the relay logged {len(errors)} error line(s), e.g. {errors[0][:200]}",
                file=sys.stderr,
            )


def listening_pid(port: int) -> int | None:
    """The process that listens on TCP `port` (loopback), found through /proc; None if none
    (or not Linux)."""
    sockets: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                listening = fields[3] == "0A"
                if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    sockets.add(f"socket:[{fields[9]}]")
    if not sockets:
        return None
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if any(os.readlink(fd) in sockets for fd in (proc / "fd").iterdir()):
                    return int(proc.name)
    return None


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User plus system CPU time of a process (all its threads), or of one of its threads."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread is not None else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
