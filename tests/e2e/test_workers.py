"""RELAY_WORKERS: several worker processes behind one port, as an operator runs them
(`relay serve` as its own process, real Postgres, real sockets): events cross between
workers exactly once and in order, /metrics labels every worker, rate limits are one per
client across workers, a worker killed with SIGKILL is replaced, and SIGTERM loses no
acknowledged event."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from pathlib import Path

import pytest
import trio

from relay.events.model import Event
from tests.helpers import (
    NostrClient,
    connect,
    http_get,
    make_event,
    new_key,
    relay_process,
    stored_ids,
)
from tests.pods import pod_env
from tests.services import free_port

pytestmark = pytest.mark.slow
WORKERS = 2
CONNECTIONS = 8  # per role: spread by the kernel over the workers
EVENTS_EACH = 10


def worker_env(db_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return pod_env(db_url, tmp_path / "data", RELAY_WORKERS=str(WORKERS), **extra)


async def metric(port: int, name: str) -> dict[str, float]:
    """The samples of `name` on /metrics, by worker."""
    status, _, body = await http_get(port, "/metrics")
    assert status == 200
    found = re.findall(rf'^{name}{{worker="(\d+)"}} (\S+)$', body.decode(), re.MULTILINE)
    return {worker: float(value) for worker, value in found}


async def every_worker_ready(port: int) -> None:
    with trio.fail_after(60):
        while True:
            with contextlib.suppress(OSError):
                if len(await metric(port, "relay_worker_bus_up")) == WORKERS:
                    return
            await trio.sleep(0.1)


def children(pid: int) -> set[int]:
    """The live child processes of `pid` (of any of its threads: trio starts processes
    from a worker thread)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.update(int(p) for p in (task / "children").read_text().split())
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return found


async def test_events_cross_workers_exactly_once_and_in_order(
    db_url: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    port = free_port()
    async with relay_process(worker_env(db_url, tmp_path), port, tmp_path / "relay.log"):
        await every_worker_ready(port)
        received: dict[int, list[str]] = {}
        subscribed = trio.Semaphore(0)
        done = trio.Event()

        async def subscriber(n: int) -> None:
            async with connect(port) as client:
                await client.req("live", {"kinds": [1]}, live=True)
                subscribed.release()
                ids = received.setdefault(n, [])
                while len(ids) < CONNECTIONS * EVENTS_EACH:
                    frame = await client.recv()
                    assert frame[0] == "EVENT" and frame[1] == "live", frame
                    ids.append(frame[2]["id"])
                await client.expect_nothing(0.5)  # nothing twice
            if all(len(v) == CONNECTIONS * EVENTS_EACH for v in received.values()):
                done.set()

        for n in range(CONNECTIONS):
            nursery.start_soon(subscriber, n)
        for _ in range(CONNECTIONS):
            await subscribed.acquire()
        published: list[list[Event]] = []

        async def publisher() -> None:
            key = new_key()
            events = [make_event(key, kind=1, content=f"n{i}") for i in range(EVENTS_EACH)]
            published.append(events)
            async with connect(port) as client:
                for event in events:  # one at a time: the order is the acceptance order
                    assert (await client.publish(event))[2] is True

        async with trio.open_nursery() as publishers:
            for _ in range(CONNECTIONS):
                publishers.start_soon(publisher)
        with trio.fail_after(20):
            await done.wait()
        connections = await metric(port, "relay_connections")
        crossed = await metric(port, "relay_worker_bus_received_total")

    everything = {e.id for events in published for e in events}
    for ids in received.values():
        assert len(ids) == len(set(ids)) == len(everything)
        assert set(ids) == everything
        for events in published:  # each publisher's events in its order
            mine = [i for i in ids if i in {e.id for e in events}]
            assert mine == [e.id for e in events]
    # The kernel spread the connections over both workers, and events crossed the bus.
    assert len(connections) == WORKERS
    assert sum(crossed.values()) > 0, crossed


async def test_metrics_are_labelled_and_rate_limits_are_one_per_client(
    db_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = worker_env(
        db_url, tmp_path, RELAY_RATE_LIMITS="on", RELAY_RATE_LIMIT_LOOPBACK="on",
        RELAY_RATE_CONNECTIONS_PER_SECOND="0.01", RELAY_RATE_CONNECTIONS_BURST="6",
    )  # fmt: skip
    async with relay_process(env, port, tmp_path / "relay.log"):
        await every_worker_ready(port)
        _, _, body = await http_get(port, "/metrics")
        text = body.decode()
        for name in ("relay_connections", "relay_events_received_total", "relay_db_seconds_count"):
            for worker in range(WORKERS):
                sample = rf'^{name}{{(?:[^}}]*,)?worker="{worker}"}} '
                assert re.search(sample, text, re.MULTILINE), (name, worker)
        assert text.count("# TYPE relay_connections gauge") == 1  # one family, both workers
        statuses = []
        for _ in range(12):
            try:
                async with connect(port):
                    statuses.append(101)
            except Exception as exc:  # a refused upgrade: HTTP 429
                statuses.append(429 if "429" in repr(exc) else -1)
        # The burst is counted once for the client, over both workers.
        assert statuses == [101] * 6 + [429] * 6, statuses


async def publish_until_refused(client: NostrClient, acked: list[str]) -> None:
    """Publish one event after another until the relay stops taking them."""
    key = new_key()
    try:
        for i in range(100_000):
            event = make_event(key, kind=1, content=f"e{i}")
            answer = await client.publish(event)
            if answer[0] == "OK" and answer[2] is True:
                acked.append(event.id)
    except Exception:  # the connection closed: shut down
        return


async def test_a_killed_worker_is_replaced_and_sigterm_loses_nothing_acknowledged(
    db_url: str, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "relay.log"
    acked: list[str] = []
    async with relay_process(worker_env(db_url, tmp_path), port, log) as parent:
        await every_worker_ready(port)
        workers = children(parent.pid)
        assert len(workers) == WORKERS
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        with trio.fail_after(20):
            while len(now := children(parent.pid)) < WORKERS or victim in now:
                await trio.sleep(0.1)
        await every_worker_ready(port)
        # Clients reconnecting get service, whichever worker takes them.
        for _ in range(10):
            async with connect(port) as client:
                assert (await client.publish(make_event(new_key())))[2] is True
        assert "exited unexpectedly (signal SIGKILL)" in log.read_text()

        # Clients publishing while SIGTERM arrives: every acknowledged event is stored.
        async with trio.open_nursery() as clients:
            for _ in range(6):

                async def one() -> None:
                    async with connect(port) as client:
                        await publish_until_refused(client, acked)

                clients.start_soon(one)
            await trio.sleep(1.0)
            parent.send_signal(signal.SIGTERM)
            with trio.fail_after(40):
                await parent.wait()
    assert parent.returncode == 0, log.read_text()[-3000:]
    assert len(acked) > 50
    stored = set(await stored_ids(db_url))
    missing = [i for i in acked if i not in stored]
    assert not missing, f"{len(missing)} acknowledged events were lost"
    text = log.read_text()
    assert "all workers stopped" in text


async def test_without_so_reuseport_the_workers_share_the_parents_socket(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery
) -> None:
    """The supervisor runs in this process, told the platform has no SO_REUSEPORT; its
    workers (processes, configured by the environment as an operator's are) accept on the
    one socket it opened and passed them."""
    from relay.config import load_settings
    from relay.workers import supervise

    monkeypatch.setattr("relay.workers.has_reuse_port", lambda: False)
    port = free_port()
    for name, value in worker_env(db_url, tmp_path, RELAY_PORT=str(port)).items():
        monkeypatch.setenv(name, value)
    shutdown, stopped = trio.Event(), trio.Event()

    async def run() -> None:
        await supervise(load_settings(), shutdown)
        stopped.set()

    nursery.start_soon(run)
    await every_worker_ready(port)
    async with connect(port) as listener:
        await listener.req("live", {"kinds": [1]}, live=True)
        events = [make_event(new_key()) for _ in range(10)]
        for event in events:  # ten connections: the kernel hands them to either worker
            async with connect(port) as client:
                assert (await client.publish(event))[2] is True
        got = [(await listener.recv())[2]["id"] for _ in events]
        assert got == [e.id for e in events]
    assert len(await metric(port, "relay_connections")) == WORKERS
    shutdown.set()
    with trio.fail_after(40):
        await stopped.wait()


async def test_workers_leave_when_their_parent_is_killed(db_url: str, tmp_path: Path) -> None:
    """SIGKILL to the parent (no graceful stop): each worker loses the bus, drains and exits,
    so no orphan keeps the port."""
    port = free_port()
    log = tmp_path / "relay.log"
    async with relay_process(worker_env(db_url, tmp_path), port, log) as parent:
        await every_worker_ready(port)
        workers = children(parent.pid)
        parent.kill()
        await parent.wait()
        with trio.fail_after(30):
            while any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in workers):
                await trio.sleep(0.1)
    assert "lost its parent's bus: shutting down" in log.read_text()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_sigterm_to_the_whole_process_group_still_drains_gracefully(
    db_url: str, tmp_path: Path
) -> None:
    """Ctrl-C in a terminal, `kill -- -PGID`, or timeout(1) signal the parent and every
    worker at once, and the parent passes the signal on: a worker takes the second one as
    part of the same shutdown (not as "stop now"), so what was acknowledged is stored."""
    port = free_port()
    log = tmp_path / "relay.log"
    acked: list[str] = []
    async with relay_process(worker_env(db_url, tmp_path), port, log, own_group=True) as parent:
        await every_worker_ready(port)
        async with trio.open_nursery() as clients:
            for _ in range(4):

                async def one() -> None:
                    async with connect(port) as client:
                        await publish_until_refused(client, acked)

                clients.start_soon(one)
            await trio.sleep(1.0)
            os.killpg(parent.pid, signal.SIGTERM)
            with trio.fail_after(40):
                await parent.wait()
    text = log.read_text()
    assert parent.returncode == 0, text[-3000:]
    # (A worker logs "already shutting down" when the second signal reaches it as one of
    # its own: two pending signals of one kind may arrive as one, or after it has exited.)
    assert "stopping now" not in text
    assert len(acked) > 20
    stored = set(await stored_ids(db_url))
    assert not [i for i in acked if i not in stored]
