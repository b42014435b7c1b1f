"""RELAY_WORKERS: several worker processes behind one port, supervised by the parent.

`relay serve` with RELAY_WORKERS=N (N > 1; `auto` is the number of CPUs the process may
use) does once, in the parent, what is per relay: start the embedded PostgreSQL (when no
RELAY_DATABASE_URL is set), apply the migrations, add the communities, run the object
store conformance probe, and create the relay's key in the data directory. It then starts
the worker bus (relay.pubsub.workerbus) and N workers, each `relay serve` again with the
internal variables below, each a whole relay: its own listener, database pool, fan-out,
git slots and background jobs.

One port: each worker opens its own listening socket on it with SO_REUSEPORT, and the
kernel spreads new connections over them; the parent holds the port with a socket bound
but not listening, so it never takes a connection and the port stays reserved (RELAY_PORT=0
picks one for all). Where the platform has no SO_REUSEPORT, the parent opens one listening
socket and every worker accepts on it.

Supervision: a worker that exits while the relay runs is logged with its exit status and
started again (after 0.5 s, doubling up to 30 s while it keeps failing within a minute).
SIGTERM or SIGINT to the parent is passed to every worker, each of which shuts down as a
single relay does (RELAY_SHUTDOWN_GRACE); the parent then stops the embedded database.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import trio
import trio_asyncio

from relay.config import Settings
from relay.listening import (
    BUS_ENV,
    COUNT_ENV,
    INDEX_ENV,
    LISTEN_FD_ENV,
    has_reuse_port,
    listening_socket,
)

log = logging.getLogger(__name__)

RESTART_FIRST_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
# A worker that ran this long before it exited is restarted after RESTART_FIRST_SECONDS.
STABLE_SECONDS = 60.0
# After the workers' own grace: how long the parent waits before it kills them.
STOP_MARGIN_SECONDS = 15.0


@dataclass
class Supervisor:
    settings: Settings
    count: int
    environ: dict[str, str]  # each worker's environment, before its index
    pass_fds: tuple[int, ...] = ()
    stopping: bool = False
    processes: dict[int, trio.Process] = field(default_factory=dict)
    restarts: int = 0

    async def keep(self, index: int) -> None:
        """Run worker `index`, and again whenever it exits while the relay runs."""
        delay = RESTART_FIRST_SECONDS
        env = {**self.environ, INDEX_ENV: str(index)}
        command = [sys.executable, "-m", "relay.cli", "serve"]
        while not self.stopping:
            started = trio.current_time()
            process = await trio.lowlevel.open_process(
                command, env=env, pass_fds=self.pass_fds, start_new_session=False
            )
            self.processes[index] = process
            log.info("worker %d started (pid %d)", index, process.pid)
            try:
                status = await process.wait()
            finally:
                if process.returncode is None:  # the parent is leaving in a hurry
                    process.kill()
                    with trio.CancelScope(shield=True):
                        await process.wait()
            if self.stopping:
                log.info("worker %d stopped (%s)", index, _describe(status))
                return
            if trio.current_time() - started >= STABLE_SECONDS:
                delay = RESTART_FIRST_SECONDS
            self.restarts += 1
            log.error(
                "worker %d (pid %d) exited unexpectedly (%s); starting it again in %.1f s",
                index, process.pid, _describe(status), delay,
            )  # fmt: skip
            await trio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX_SECONDS)

    def signal_all(self, signum: int) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    async def stop(self, signum: int) -> None:
        """Pass `signum` on to every worker, wait for them, and kill what outlives its
        grace."""
        self.stopping = True
        self.signal_all(signum)
        with trio.move_on_after(self.settings.shutdown_grace + STOP_MARGIN_SECONDS):
            for process in list(self.processes.values()):
                await process.wait()
        for index, process in self.processes.items():
            if process.returncode is None:
                log.error("worker %d did not stop in time; killing it", index)
                process.kill()


def _describe(status: int) -> str:
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-status).name}"
    return f"exit status {status}"


async def prepare_once(settings: Settings, database_url: str) -> None:
    """What the parent does once for every worker: migrations, communities, the object
    store probe, the relay's key, git on PATH."""
    from relay.app import check_git, check_object_store
    from relay.git.stores import open_object_store
    from relay.keys import load_or_create_key
    from relay.store.communities import Communities
    from relay.store.db import Database
    from relay.store.migrations import migrate

    check_git()
    db = await Database.connect(database_url, max_size=2)
    try:
        applied = await migrate(db)
        if applied:
            log.info("applied migrations %s", applied)
        await Communities(db).ensure(list(settings.hosts))
    finally:
        await db.close()
    async with open_object_store(settings) as store:
        await check_object_store(store, settings)
    load_or_create_key(settings.secret_key, settings.data_path)


async def supervise(settings: Settings, shutdown: trio.Event) -> None:
    """Run the relay as settings.workers worker processes until `shutdown` is set."""
    from relay.app import database_url, prepare_data_dir
    from relay.pubsub.workerbus import Hub

    count = settings.workers
    prepare_data_dir(settings)
    async with trio_asyncio.open_loop(), database_url(settings) as url:
        await prepare_once(settings, url)
        reuse = has_reuse_port()
        reserved = listening_socket(
            settings.bind, settings.port, reuse_port=reuse, listen=not reuse
        )
        with reserved, tempfile.TemporaryDirectory(prefix="relay-bus-") as run_dir:
            port = reserved.getsockname()[1]
            bus_path = str(Path(run_dir) / "bus.sock")
            environ = {
                **os.environ,
                "RELAY_WORKERS": "1",
                "RELAY_PORT": str(port),
                "RELAY_DATABASE_URL": url,
                BUS_ENV: bus_path,
                COUNT_ENV: str(count),
            }
            fds: tuple[int, ...] = ()
            if not reuse:
                environ[LISTEN_FD_ENV] = str(reserved.fileno())
                fds = (reserved.fileno(),)
            supervisor = Supervisor(settings, count, environ, fds)
            hub = Hub(bus_path, settings.rate, carry_events=not settings.redis_url)
            async with trio.open_nursery() as nursery:
                await nursery.start(hub.serve)
                log.info(
                    "%d workers on %s:%d (%s), fan-out between them: %s", count, settings.bind,
                    port, "SO_REUSEPORT" if reuse else "one shared listening socket",
                    "Redis" if settings.redis_url else "the worker bus",
                )  # fmt: skip
                for index in range(count):
                    nursery.start_soon(supervisor.keep, index)
                await shutdown.wait()
                log.info("shutting down %d workers", count)
                await supervisor.stop(signal.SIGTERM)
                nursery.cancel_scope.cancel()
    log.info("all workers stopped")
