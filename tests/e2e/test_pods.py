"""Several relay processes acting as one relay: one Postgres, one bucket, one Redis.

Pods are real: relay A runs in this process (`start_relay`), relay B and the relays that get
SIGTERM run as `python -m relay.cli serve` subprocesses configured only through RELAY_*
variables. Redis is a private `redis-server` per test (tests/redis_server.py), on a free
loopback port, so a test can kill it and bring it back on the same port. Everything is
observed from outside: frames on websockets, /readyz, /metrics, rows in Postgres, pointers
in the bucket, and fresh git clones. Every wait is bounded; every socket is on loopback.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import coincurve
import orjson
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionClosed

from relay.events import kinds
from relay.git import model
from relay.git.objectstore import GitObjects
from relay.keys import pubkey_hex
from relay.server.ratelimit import WINDOW_SECONDS
from tests.git.gitclient import Git, announce
from tests.helpers import (
    clean_environ,
    community_of,
    connect,
    http_get,
    make_event,
    new_key,
    relay_process,
    sql,
    stored_ids,
)
from tests.pods import (
    BRIDGE_TIMEOUT,
    expect_event,
    new_secret,
    pod_env,
    unique_prefix,
    until_bridged,
)
from tests.redis_server import RedisServer
from tests.services import free_port, moto_bucket, start_relay

HOST = "127.0.0.1"

BIG_BYTES = 16 * 1024 * 1024  # incompressible: the push takes a moment


# -- fixtures and helpers --------------------------------------------------------------------


async def readiness(port: int) -> tuple[int, dict[str, Any]]:
    status, _, body = await http_get(port, "/readyz")
    return status, orjson.loads(body)


async def readiness_until(
    port: int, redis_state: str, timeout: float = 20.0
) -> tuple[int, dict[str, Any]]:
    """Poll /readyz until its redis check reads `redis_state`."""
    with trio.fail_after(timeout):
        while True:
            status, doc = await readiness(port)
            if doc["checks"].get("redis") == redis_state:
                return status, doc
            await trio.sleep(0.1)


def git_url(port: int, owner: str, repo: str) -> str:
    return f"http://{HOST}:{port}/git/{owner}/{repo}.git"


def refs_of(state: dict[str, Any]) -> dict[str, str]:
    return {t[0]: t[1] for t in state["tags"] if t[0].startswith("refs/")}


# -- 1. events cross pods, exactly once ----------------------------------------------------------


async def test_events_and_ref_states_reach_subscribers_on_the_other_pod_exactly_once(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, moto_endpoint: str, redis: RedisServer
) -> None:
    secret = new_secret()
    relay_pubkey = pubkey_hex(coincurve.PrivateKey(bytes.fromhex(secret)))
    prefix = unique_prefix()
    async with moto_bucket(moto_endpoint) as (s3, _store):
        a = await start_relay(
            nursery, db_url, tmp_path / "a", secret_key=secret, redis_url=redis.url,
            redis_prefix=prefix, **s3,
        )  # fmt: skip
        b_port = free_port()
        env = pod_env(
            db_url, tmp_path / "b", secret=secret, s3=s3, redis_url=redis.url, prefix=prefix
        )
        async with relay_process(env, b_port, tmp_path / "relay-b.log"):
            await readiness_until(a.port, "ok")
            await readiness_until(b_port, "ok")
            await until_bridged(a.port, b_port)
            await until_bridged(b_port, a.port)

            key = new_key()
            author = {"authors": [pubkey_hex(key)]}
            async with connect(b_port) as on_b, connect(a.port) as on_a:
                assert await on_b.req("b", author, live=True) == []
                assert await on_a.req("a", author, live=True) == []
                async with connect(a.port) as publisher:
                    note = make_event(key)
                    assert (await publisher.publish(note))[2:] == [True, ""]
                    await expect_event(on_b, "b", note.id)
                    await expect_event(on_a, "a", note.id)

                    ephemeral = make_event(key, kind=20001, content="typing")
                    assert (await publisher.publish(ephemeral))[2:] == [True, ""]
                    await expect_event(on_b, "b", ephemeral.id)
                    await expect_event(on_a, "a", ephemeral.id)

                # The other way round: published on B, seen once on A and on B.
                async with connect(b_port) as publisher_b:
                    reply = make_event(key, content="from b")
                    assert (await publisher_b.publish(reply))[2:] == [True, ""]
                await expect_event(on_a, "a", reply.id)
                await expect_event(on_b, "b", reply.id)

                # No duplicates: neither the Redis echo of a pod's own event nor a replay.
                await on_b.expect_nothing(1.5)
                await on_a.expect_nothing(0.2)

            # Stored events are found through either pod; the ephemeral one nowhere.
            async with connect(b_port) as reader:
                found = {e["id"] for e in await reader.req("s", author)}
            assert found == {note.id, reply.id}

            # A push through A: B's subscriber sees the relay-signed 30618s, once each.
            git = Git(tmp_path / "home")
            repo = "bridged"
            owner_key = new_key()
            owner = pubkey_hex(owner_key)
            states = {"kinds": [kinds.REPO_STATE], "authors": [relay_pubkey], "#d": [repo]}
            async with connect(b_port) as watch:
                assert await watch.req("w", states, live=True) == []
                await announce(a.port, owner_key, repo)
                frame = await watch.recv(timeout=10)
                assert frame[0] == "EVENT" and frame[1] == "w", frame
                initial = frame[2]
                assert initial["pubkey"] == relay_pubkey and refs_of(initial) == {}

                url = git_url(a.port, owner, repo)
                work = tmp_path / "work"
                await git.run("clone", "-q", url, str(work))
                commit = await git.commit(work, "README", "across pods\n", "first")
                await git.run("push", "-q", "origin", "main", cwd=work, key=owner_key, url=url)
                frame = await watch.recv(timeout=10)
                assert frame[0] == "EVENT" and frame[1] == "w", frame
                pushed = frame[2]
                assert pushed["kind"] == kinds.REPO_STATE
                assert pushed["pubkey"] == relay_pubkey
                assert refs_of(pushed) == {"refs/heads/main": commit}
                assert ["p", owner] in pushed["tags"]
                await watch.expect_nothing(1.0)

            # B serves the pushed repository from the shared bucket.
            clone_b = tmp_path / "clone-b"
            await git.run("clone", "-q", git_url(b_port, owner, repo), str(clone_b))
            head = await git.run("rev-parse", "HEAD", cwd=clone_b)
            assert head.stdout.decode().strip() == commit


# -- 2. a Redis outage degrades, then heals ------------------------------------------------------


async def test_a_redis_outage_keeps_local_delivery_and_storage_then_heals(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, redis: RedisServer
) -> None:
    secret = new_secret()
    prefix = unique_prefix()
    common = {"secret_key": secret, "redis_url": redis.url, "redis_prefix": prefix}
    a = await start_relay(nursery, db_url, tmp_path / "a", **common)
    b = await start_relay(nursery, db_url, tmp_path / "b", **common)
    await readiness_until(a.port, "ok")
    await readiness_until(b.port, "ok")
    await until_bridged(a.port, b.port)

    key = new_key()
    author = {"authors": [pubkey_hex(key)]}
    async with connect(a.port) as local, connect(a.port) as publisher:
        assert await local.req("live", author, live=True) == []

        await trio.to_thread.run_sync(redis.stop)
        down: list[str] = []
        for i in range(3):
            event = make_event(key, content=f"while redis is down {i}")
            assert (await publisher.publish(event))[2:] == [True, ""]
            await expect_event(local, "live", event.id)
            down.append(event.id)

        status, doc = await readiness_until(a.port, "degraded")
        assert status == 200 and doc["ready"] is True, doc
        assert doc["checks"]["postgres"] == "ok" and doc["checks"]["object_store"] == "ok"

        # Accepted means stored: the other pod finds every one of them.
        async with connect(b.port) as reader:
            found = {e["id"] for e in await reader.req("s", author)}
        assert set(down) <= found

        # Still degraded, still serving: one more event, delivered locally.
        late = make_event(key, content="still down")
        assert (await publisher.publish(late))[2:] == [True, ""]
        await expect_event(local, "live", late.id)
        await local.expect_nothing(0.3)

    await trio.to_thread.run_sync(redis.start)
    started = trio.current_time()
    await until_bridged(a.port, b.port, timeout=BRIDGE_TIMEOUT)
    await until_bridged(b.port, a.port, timeout=BRIDGE_TIMEOUT)
    assert trio.current_time() - started < BRIDGE_TIMEOUT
    for port in (a.port, b.port):
        status, doc = await readiness_until(port, "ok")
        assert status == 200 and doc["ready"] is True, doc


# -- 3. SIGTERM ----------------------------------------------------------------------------------


async def test_sigterm_during_a_burst_loses_no_acknowledged_event(
    db_url: str, tmp_path: Path
) -> None:
    grace = 10.0
    port = free_port()
    env = pod_env(db_url, tmp_path / "d", RELAY_SHUTDOWN_GRACE=str(grace))
    clients = 4
    in_flight = 8  # events sent and not yet answered, per connection
    acknowledged: list[str] = []
    refused: list[list[Any]] = []
    close_codes: list[int | None] = []
    enough = trio.Event()

    async def burst() -> None:
        key = new_key()
        window = trio.Semaphore(in_flight)
        async with connect(port) as client:

            async def send() -> None:
                # The reader below records how the connection ended.
                with contextlib.suppress(ConnectionClosed):
                    for _ in range(5000):
                        await window.acquire()
                        await client.send(["EVENT", make_event(key).to_dict()])

            async with trio.open_nursery() as inner:
                inner.start_soon(send)
                try:
                    while True:
                        frame = orjson.loads(await client.ws.get_message())
                        if frame[0] != "OK":
                            continue
                        window.release()
                        if frame[2] is True:
                            acknowledged.append(frame[1])
                            if len(acknowledged) >= 100:
                                enough.set()
                        else:
                            refused.append(frame)
                except ConnectionClosed as exc:
                    close_codes.append(exc.reason.code if exc.reason else None)
                inner.cancel_scope.cancel()

    async with relay_process(env, port, tmp_path / "relay.log") as proc:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for _ in range(clients):
                    nursery.start_soon(burst)
                await enough.wait()
                proc.send_signal(signal.SIGTERM)
                signalled = trio.current_time()
        with trio.fail_after(grace):
            await proc.wait()
        took = trio.current_time() - signalled
        assert proc.returncode == 0, (tmp_path / "relay.log").read_text()
    assert took < grace
    assert close_codes == [1001] * clients, close_codes
    assert refused == []
    assert len(acknowledged) >= 100
    missing = set(acknowledged) - set(await stored_ids(db_url))
    assert not missing, f"{len(missing)} acknowledged events are not stored"
    assert "shutdown complete" in (tmp_path / "relay.log").read_text()


@pytest.mark.parametrize("grace", [20.0, 0.5], ids=["push-finishes", "grace-runs-out"])
async def test_sigterm_during_a_push_leaves_a_consistent_repository(
    grace: float, nursery: trio.Nursery, db_url: str, tmp_path: Path, moto_endpoint: str
) -> None:
    """SIGTERM lands while the receive-pack POST is being spooled. With a long grace the
    push may finish; with a short one it is cut off. Either way what git reported is what
    a new relay on the same database and bucket serves, and the relay exits 0."""
    secret = new_secret()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    git = Git(tmp_path / "home")
    repo = "bigpush"
    key = new_key()
    owner = pubkey_hex(key)
    async with moto_bucket(moto_endpoint) as (s3, store):
        objects = GitObjects(store)
        port = free_port()
        env = pod_env(
            db_url, tmp_path / "p", secret=secret, s3=s3,
            RELAY_SHUTDOWN_GRACE=str(grace), RELAY_GIT_SCRATCH_DIR=str(scratch),
        )  # fmt: skip
        log_path = tmp_path / "relay.log"
        async with relay_process(env, port, log_path) as proc:
            await announce(port, key, repo)
            pointer_key = model.pointer_key(await community_of(db_url), owner, repo)
            before = await objects.read_pointer(pointer_key)
            assert before is not None

            url = git_url(port, owner, repo)
            work = tmp_path / "work"
            await git.run("clone", "-q", url, str(work))
            (work / "blob.bin").write_bytes(os.urandom(BIG_BYTES))
            await git.run("add", "blob.bin", cwd=work)
            commit = await git.commit(work, "README", "big\n", "a big commit")

            result: list[subprocess.CompletedProcess[bytes]] = []

            async def push() -> None:
                # One POST with a Content-Length (no probe request first).
                result.append(await git.run(
                    "-c", "http.postBuffer=134217728", "push", "-q", "origin", "main",
                    cwd=work, key=key, url=url, check=False,
                ))  # fmt: skip

            with trio.fail_after(120):
                async with trio.open_nursery() as pushing:
                    pushing.start_soon(push)
                    # The receive-pack POST has started once its body is being spooled.
                    while not any(scratch.glob("*/push.body")):
                        assert not result, "the push ended before its POST was seen"
                        await trio.sleep(0.002)
                    proc.send_signal(signal.SIGTERM)
                    signalled = trio.current_time()
                with trio.fail_after(grace + 5):
                    await proc.wait()
            assert trio.current_time() - signalled < grace + 5
            assert proc.returncode == 0, log_path.read_text()

        [pushed] = result
        after = await objects.read_pointer(pointer_key)
        # A new relay on the same database and bucket serves whatever the pointer says, and
        # its start-up reconciler brings the 30618 in line if the shutdown cut its emission.
        fresh = await start_relay(nursery, db_url, tmp_path / "fresh", secret_key=secret, **s3)
        expected = {"refs/heads/main": commit} if pushed.returncode == 0 else {}
        with trio.fail_after(15):
            while True:
                rows = await sql(
                    db_url,
                    "SELECT raw FROM events WHERE kind = $1 AND coordinate_d = $2"
                    " ORDER BY created_at DESC",
                    kinds.REPO_STATE,
                    repo,
                )
                latest = orjson.loads(rows[0]["raw"])
                if refs_of(latest) == expected:
                    break
                await trio.sleep(0.1)
        clone = tmp_path / "clone"
        await git.run("clone", "-q", git_url(fresh.port, owner, repo), str(clone))
        heads = await git.run("for-each-ref", "--format=%(objectname)", "refs/heads", cwd=clone)
        if pushed.returncode == 0:
            assert after is not None and after != before
            manifest = await objects.get_manifest(after[1])
            assert manifest.refs == {"refs/heads/main": commit}
            assert refs_of(latest) == {"refs/heads/main": commit}
            assert heads.stdout.decode().split() == [commit]
            assert (clone / "blob.bin").stat().st_size == BIG_BYTES
            await git.run("fsck", "--full", cwd=clone)
        else:
            assert after == before, pushed.stderr.decode(errors="replace")
            assert refs_of(latest) == {}
            assert heads.stdout.decode().split() == []


# -- 4. rate limits ------------------------------------------------------------------------------


RATES = {
    "rate_limits": True,
    "rate_limit_loopback": True,  # the test's clients are on loopback
    "rate_events_per_second": 1,
    "rate_events_burst": 3,
    "rate_reqs_per_second": 1,
    "rate_reqs_burst": 2,
    "rate_connections_per_second": 1,
    "rate_connections_burst": 5,
}


async def upgrade(port: int, host: str = HOST) -> tuple[int, bytes]:
    """A raw websocket upgrade request: the status and body of the answer."""
    key = base64.b64encode(os.urandom(16)).decode()
    head = (
        f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    stream = await trio.open_tcp_stream(HOST, port)
    data = b""
    async with stream:
        await stream.send_all(head.encode())
        with trio.fail_after(10):
            while b"\r\n\r\n" not in data or not data.startswith(b"HTTP/1.1 101"):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), body


async def test_rate_limits_refuse_bursts_and_recover(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, db_url, tmp_path, **RATES)

    status, _, body = await http_get(relay.port, "/", Accept="application/nostr+json")
    assert status == 200
    assert orjson.loads(body)["rate_limits"] == {
        "events_per_second": 1,
        "events_burst": 3,
        "reqs_per_second": 1,
        "reqs_burst": 2,
        "connections_per_second": 1,
        "connections_burst": 5,
    }

    async with AsyncExitStack() as stack:
        # Five new connections in a burst are fine; the sixth is refused before the upgrade.
        clients = [await stack.enter_async_context(connect(relay.port)) for _ in range(5)]
        status, body = await upgrade(relay.port)
        assert status == 429
        assert body.startswith(b"rate-limited:"), body

        # EVENT: a burst of three, the fourth refused, then accepted again a second later.
        events_client, reqs_client = clients[0], clients[1]
        key = new_key()
        burst = [make_event(key) for _ in range(4)]
        for event in burst:
            await events_client.send(["EVENT", event.to_dict()])
        answers = {}
        for _ in burst:
            frame = await events_client.recv()
            assert frame[0] == "OK", frame
            answers[frame[1]] = frame
        assert set(answers) == {e.id for e in burst}
        accepted = {i for i, a in answers.items() if a[2] is True}
        refused = [a for a in answers.values() if a[2] is False]
        assert len(accepted) == 3 and len(refused) == 1, answers
        assert refused[0][3].startswith("rate-limited:"), refused
        refused_at = trio.current_time()
        with trio.fail_after(4):
            while True:
                await trio.sleep(0.25)
                answer = await events_client.publish(make_event(key))
                if answer[2] is True:
                    break
                assert answer[3].startswith("rate-limited:"), answer
        assert trio.current_time() - refused_at >= 0.5
        stored = set(await stored_ids(db_url))
        assert accepted <= stored and refused[0][1] not in stored

        # REQ and COUNT share a budget of two: the third and fourth get CLOSED.
        nobody = {"authors": [pubkey_hex(new_key())]}
        await reqs_client.send(["REQ", "r1", nobody])
        await reqs_client.send(["REQ", "r2", nobody])
        await reqs_client.send(["REQ", "r3", nobody])
        await reqs_client.send(["COUNT", "c4", nobody])
        frames = [await reqs_client.recv() for _ in range(4)]
        assert frames[0] == ["EOSE", "r1"] and frames[1] == ["EOSE", "r2"], frames
        assert frames[2][:2] == ["CLOSED", "r3"] and frames[2][2].startswith("rate-limited:")
        assert frames[3][:2] == ["CLOSED", "c4"] and frames[3][2].startswith("rate-limited:")


async def test_rate_limits_are_shared_through_redis(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, redis: RedisServer
) -> None:
    common = {
        "secret_key": new_secret(),
        "redis_url": redis.url,
        "redis_prefix": unique_prefix(),
        "rate_limits": True,
        "rate_limit_loopback": True,
        "rate_events_per_second": 1,
        "rate_events_burst": 3,
    }
    a = await start_relay(nursery, db_url, tmp_path / "a", **common)
    b = await start_relay(nursery, db_url, tmp_path / "b", **common)
    budget = 3 + 1 * WINDOW_SECONDS
    async with connect(a.port) as on_a, connect(b.port) as on_b:
        # Counters are fixed windows: start well inside one so the whole check fits in it.
        into_window = time.time() % WINDOW_SECONDS
        if into_window > WINDOW_SECONDS - 3:
            await trio.sleep(WINDOW_SECONDS - into_window + 0.05)
        window = int(time.time()) // WINDOW_SECONDS
        key = new_key()
        answers = [await on_a.publish(make_event(key)) for _ in range(budget + 1)]
        on_b_answer = await on_b.publish(make_event(key))
        assert int(time.time()) // WINDOW_SECONDS == window, "the window turned mid-test"
    assert [a[2] for a in answers] == [True] * budget + [False], answers
    assert answers[-1][3].startswith("rate-limited:")
    # B never saw this client before: only the shared counter can refuse it.
    assert on_b_answer[2] is False and on_b_answer[3].startswith("rate-limited:"), on_b_answer


# -- 5. metrics ----------------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_are_prometheus_text(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, redis: RedisServer
) -> None:
    relay = await start_relay(
        nursery, db_url, tmp_path / "data", secret_key=new_secret(), redis_url=redis.url,
        redis_prefix=unique_prefix(),
    )  # fmt: skip
    await readiness_until(relay.port, "ok")
    git = Git(tmp_path / "home")
    key = new_key()
    owner = pubkey_hex(key)
    await announce(relay.port, key, "metered")
    await git.run("clone", "-q", git_url(relay.port, owner, "metered"), str(tmp_path / "c"))

    async with connect(relay.port) as client:
        assert await client.req("live", {"kinds": [9999]}, live=True) == []
        assert (await client.publish(make_event()))[2] is True
        bad = make_event().to_dict()
        bad["content"] = "tampered"
        await client.send(["EVENT", bad])
        refused = await client.recv()
        assert refused[0] == "OK" and refused[2] is False and refused[3].startswith("invalid:")

        status, headers, body = await http_get(relay.port, "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain")
        text = body.decode()
        got = samples(text)
        assert got[("relay_connections", ())] == 1
        assert got[("relay_subscriptions", ())] == 1
        assert got[("relay_events_received_total", ())] >= 3
        assert got[("relay_events_refused_total", (("reason", "invalid"),))] == 1
        assert any(n == "relay_db_seconds_bucket" for n, _ in got)
        assert any(n == "relay_object_store_seconds_bucket" for n, _ in got)
        clones = {labels: v for (n, labels), v in got.items() if n == "relay_git_operations_total"}
        assert clones.get((("outcome", "ok"), ("service", "git-upload-pack")), 0) >= 1, clones
        assert got[("relay_redis_up", ())] == 1


# -- 6. configuration ----------------------------------------------------------------------------


def test_redis_without_a_secret_key_is_a_configuration_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay.cli", "serve"],
        env={
            **clean_environ(),
            "RELAY_DATA_DIR": str(tmp_path / "d"),
            "RELAY_REDIS_URL": "redis://127.0.0.1:1/0",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "RELAY_SECRET_KEY" in lines[0], result.stderr
