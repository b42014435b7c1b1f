"""Capacity of our relay: memory per idle connection, and fan-out of one event.

    python -m bench.capacity idle --connections 10000 [--batch 200] [--settle 5] \
        [--tracemalloc] [--json]
    python -m bench.capacity fanout --subscribers 10000 [--connections 100] [--rounds 5] \
        [--no-one-per-connection] [--profile FILE [--native]] [--json]

Each configuration gets a fresh PostgreSQL database (``$RELAY_BENCH_POSTGRES``, default
postgresql://postgres@127.0.0.1:5432/postgres, database ``relay_bench_cap_<random>``) and
our relay as a subprocess (``relay serve`` on a free 127.0.0.1 port, a temporary
``RELAY_DATA_DIR``, ``RELAY_RATE_LIMITS=off``, ``RELAY_GIT_PROBE=off``,
``RELAY_LOG_LEVEL=warning``, otherwise the defaults).  Before anything is spawned the
soft ``RLIMIT_NOFILE`` of this process is raised to its hard limit, so the relay inherits
it; both processes hold one descriptor per connection, and a size that does not fit in
the hard limit minus ``FD_RESERVE`` is reduced to what fits (and said so).

``idle``: one warm-up connection is opened and closed, then the relay's VmRSS (from
/proc/<pid>/status) is read; ``--connections`` websockets are opened ``--batch`` at a
time (each connects, completes the handshake and reads the relay's AUTH challenge, then
stays idle); after ``--settle`` seconds VmRSS is read again.  KiB per connection =
(after - before) / connections opened.  The connections are then closed and VmRSS read
once more (how much the relay gives back).  ``--tracemalloc`` runs the relay under
``python -X tracemalloc=25`` (a small bootstrap that calls ``relay.cli.main(["serve"])``
and writes a snapshot on SIGUSR1) and reports, per connection, the traced bytes by the
relay code line that caused them and by allocating line, and the GC-tracked objects by
type; its RSS figures are inflated by tracemalloc's own bookkeeping.

``fanout``: C connections (``--connections``) are opened ``--batch`` at a time, each
with its share of ``--subscribers`` subscriptions (``["REQ", "cap<c>.<j>",
{"kinds":[1]}]``, distinct ids, EOSE awaited for each).  A separate connection then
publishes one fresh kind-1 event per round; a round's latency is from just before the
EVENT frame is written until the last subscriber connection has received all of its
copies (one EVENT frame per subscription), both taken with ``time.perf_counter`` in this
process.  One warm-up round (reported apart), then ``--rounds`` measured rounds, median
and max.  Unless ``--no-one-per-connection`` is given the whole thing is repeated on a
fresh relay with one subscription per connection (C = subscribers), if the descriptor
limit allows.  ``--profile FILE`` records the relay with ``py-spy record -f raw`` over
the measured rounds (FILE, then FILE.<C> for the second configuration); ``--native``
adds C frames, which is what shows the relay's cyclic garbage collector.

The subscribers run in this process (trio-websocket, one reader task per connection) and
share the machine's cores with the relay: the fan-out latency includes the time this
process takes to read every copy.  Each round also reports the CPU seconds the relay and
this process used during it.  This process's own cyclic GC is disabled during the rounds
(after a full collection), so that its pauses over the subscriber connections' objects do
not count against the relay; the relay runs unchanged.

Safety: the relay binds to 127.0.0.1, the URL goes through nostr_load's loopback-only
check, every phase is bounded by a count and a time limit, and the relay is stopped and
the database dropped in ``finally`` blocks.  Exit status 0 if everything completed, 1 if
some connection failed or a round was incomplete (the report is still printed), 2 on a
setup error.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import trio
import trio_websocket

from bench import nostr_load as nl
from bench.common import bounded, free_port, fresh_database, serve_command, spawned_relay
from bench.wsraw import RawWebSocket, WebSocketError

ROOT = Path(__file__).resolve().parent.parent
FD_RESERVE = 100  # descriptors kept free for the database pool, logs, listeners, py-spy
MAX_CONNECTIONS = 60_000  # below the loopback ephemeral port range
RELAY_STOP_TIMEOUT = 60.0
RELAY_SHUTDOWN_GRACE = "5"
CONNECT_TIMEOUT = 60.0  # one connection: TCP, handshake, AUTH, its REQs and EOSEs
OPEN_TIMEOUT = 900.0  # all connections of a run
CLOSE_TIMEOUT = 300.0
ROUND_TIMEOUT = 60.0
ROUND_PAUSE = 1.0
METRICS_TIMEOUT = 10.0
TARGET_IDLE_KIB = 30.0
TARGET_FANOUT_MS = 1000.0
TARGET_FANOUT_SUBSCRIBERS = 10_000
MAX_ERRORS_KEPT = 10


class CapacityError(Exception):
    """A setup problem (exit status 2)."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Process facts: descriptor limit, RSS, CPU, machine
# --------------------------------------------------------------------------


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (inherited by the relay)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def fd_budget(soft: int) -> int:
    return max(0, soft - FD_RESERVE)


def proc_status_kib(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/<pid>/status (VmRSS, VmHWM, RssAnon, ...)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise CapacityError(f"no {key} in /proc/{pid}/status")


def rss_kib(pid: int) -> int:
    return proc_status_kib(pid, "VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def machine() -> dict[str, Any]:
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "cpus": os.cpu_count(),
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "trio": trio.__version__,
        "trio_websocket": trio_websocket.__version__,
        "loadavg_start": loadavg(),
    }


# --------------------------------------------------------------------------
# Our relay: a fresh database and a subprocess
# --------------------------------------------------------------------------


# ``--tracemalloc``: the relay runs under tracemalloc and, on SIGUSR1, writes a snapshot
# and the count of GC-tracked objects by type into the directory given as its argument.
TRACEMALLOC_FRAMES = 25
TRACEMALLOC_BOOTSTRAP = """
import collections, gc, json, pathlib, signal, sys, tracemalloc
out = pathlib.Path(sys.argv[1])
taken = [0]
def snapshot(signum, frame):
    taken[0] += 1
    gc.collect()
    stem = out / f"snap{taken[0]}"
    tracemalloc.take_snapshot().dump(str(stem) + ".tracemalloc")
    types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    stem.with_suffix(".json").write_text(json.dumps(types))
    stem.with_suffix(".done").touch()
signal.signal(signal.SIGUSR1, snapshot)
from relay.cli import main
sys.exit(main(["serve"]))
"""


def relay_command(snapshot_dir: Path | None = None) -> list[str]:
    if snapshot_dir is not None:
        return [
            sys.executable,
            "-X",
            f"tracemalloc={TRACEMALLOC_FRAMES}",
            "-c",
            TRACEMALLOC_BOOTSTRAP,
            str(snapshot_dir),
        ]
    return serve_command()


@dataclass(frozen=True)
class RelayProcess:
    pid: int
    port: int
    url: str
    log_path: Path
    snapshot_dir: Path | None = None


@contextlib.contextmanager
def our_relay(
    extra_env: dict[str, str] | None = None, tracemalloc: bool = False
) -> Iterator[RelayProcess]:
    """A fresh database and ``relay serve`` on it; both gone when the block ends."""
    with (
        fresh_database("relay_bench_cap", CapacityError) as database_url,
        tempfile.TemporaryDirectory(prefix="relay-capacity-") as tmp,
    ):
        work = Path(tmp)
        port = free_port()
        env = {
            **os.environ,
            "RELAY_BIND": "127.0.0.1",
            "RELAY_PORT": str(port),
            "RELAY_DATABASE_URL": database_url,
            "RELAY_DATA_DIR": str(work / "relay-data"),
            "RELAY_LOG_LEVEL": "warning",
            "RELAY_RATE_LIMITS": "off",
            "RELAY_GIT_PROBE": "off",
            "RELAY_SHUTDOWN_GRACE": RELAY_SHUTDOWN_GRACE,
            **(extra_env or {}),
        }
        log_path = work / "relay.log"
        snapshot_dir = work / "snapshots" if tracemalloc else None
        if snapshot_dir is not None:
            snapshot_dir.mkdir()
        with spawned_relay(
            relay_command(snapshot_dir), env, port, log_path,
            error=CapacityError, stop_timeout=RELAY_STOP_TIMEOUT,
        ) as process:  # fmt: skip
            yield RelayProcess(process.pid, port, f"ws://127.0.0.1:{port}/", log_path, snapshot_dir)


async def relay_gauges(
    port: int, wanted: tuple[str, ...] = ("relay_connections", "relay_subscriptions")
) -> dict[str, float]:
    """The samples of the `wanted` metrics (default relay_connections and
    relay_subscriptions) from the relay's /metrics (loopback), by name with their labels
    if any (`relay_connections{worker="0"}` with RELAY_WORKERS)."""
    chunks: list[bytes] = []
    with trio.move_on_after(METRICS_TIMEOUT):
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(
                    b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                )
                while chunk := await stream.receive_some(65536):
                    chunks.append(chunk)
        except (OSError, trio.BrokenResourceError):
            return {}
    gauges: dict[str, float] = {}
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        name, _, value = line.partition(" ")
        if name.partition("{")[0] in wanted:
            with contextlib.suppress(ValueError):
                gauges[name] = float(value)
    return gauges


@contextlib.contextmanager
def py_spy(pid: int, path: str | None, native: bool = False) -> Iterator[None]:
    """``py-spy record -f raw`` of ``pid`` for the duration of the block (if ``path``)."""
    if path is None:
        yield
        return
    exe = Path(sys.executable).with_name("py-spy")
    command = [str(exe), "record", "-f", "raw", "-r", "100", "-o", path, "--pid", str(pid)]
    command += ["-d", str(int(OPEN_TIMEOUT))] + (["--native"] if native else [])
    spy = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    time.sleep(1.0)  # let it attach before the clock starts
    try:
        yield
    finally:
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if spy.returncode not in (0, -signal.SIGINT):
            log(f"py-spy exited with {spy.returncode}: {err.decode(errors='replace')[-300:]}")
        else:
            log(f"py-spy profile written to {path}")


# --------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------


@dataclass
class OpenStats:
    opened: int = 0
    failed: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    open_s: float = 0.0

    def fail(self, reason: str) -> None:
        self.failed += 1
        nl.bump(self.errors, reason)


CONNECT_ERRORS = (
    OSError,
    ValueError,  # orjson.JSONDecodeError
    trio.BrokenResourceError,
    trio.TooSlowError,
    trio_websocket.HandshakeError,
    trio_websocket.ConnectionClosed,
    WebSocketError,
)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, trio_websocket.ConnectionClosed):
        return f"connection closed: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


async def read_auth(ws: trio_websocket.WebSocketConnection | RawWebSocket) -> None:
    """The relay greets every connection with ``["AUTH", <challenge>]`` (NIP-42)."""
    msg = orjson.loads(await ws.get_message())
    if not (isinstance(msg, list) and msg and msg[0] == "AUTH"):
        raise trio_websocket.HandshakeError(f"expected an AUTH challenge, got {msg!r:.80}")


async def in_batches(count: int, batch: int, open_one: Any, stats: OpenStats) -> None:
    """Call ``open_one(i)`` for ``i`` in range(count), ``batch`` at a time.

    Stops after a batch in which some connection failed (e.g. descriptors exhausted)."""
    t0 = time.perf_counter()
    step = max(batch, count // 10)
    next_log = step
    for start in range(0, count, batch):
        async with trio.open_nursery() as group:
            for i in range(start, min(start + batch, count)):
                group.start_soon(open_one, i)
        if stats.failed:
            log(f"  stopping after {stats.opened} connections: {dict(stats.errors)}")
            break
        done = min(start + batch, count)
        if done >= next_log or done == count:
            log(f"  {done}/{count} open ({time.perf_counter() - t0:.1f} s)")
            next_log = done + step
    stats.open_s = time.perf_counter() - t0


async def close_all(
    sockets: Sequence[trio_websocket.WebSocketConnection | RawWebSocket], batch: int
) -> None:
    with trio.move_on_after(CLOSE_TIMEOUT):
        for start in range(0, len(sockets), batch):
            async with trio.open_nursery() as group:
                for ws in sockets[start : start + batch]:
                    group.start_soon(nl.close_quietly, ws)


# --------------------------------------------------------------------------
# idle
# --------------------------------------------------------------------------

SNAPSHOT_TIMEOUT = 300.0
SNAPSHOT_TOP = 15


async def take_snapshot(relay: RelayProcess, number: int) -> Path:
    """Ask a ``--tracemalloc`` relay for snapshot ``number``; returns its path stem."""
    assert relay.snapshot_dir is not None
    stem = relay.snapshot_dir / f"snap{number}"
    os.kill(relay.pid, signal.SIGUSR1)
    with trio.fail_after(SNAPSHOT_TIMEOUT):
        while not stem.with_suffix(".done").exists():
            await trio.sleep(0.2)
    return stem


def snapshot_report(before: Path, after: Path, connections: int) -> dict[str, Any]:
    """Where the memory of ``connections`` connections went: allocation sites and the
    GC-tracked objects by type, per connection."""
    import tracemalloc

    old = tracemalloc.Snapshot.load(str(before) + ".tracemalloc")
    new = tracemalloc.Snapshot.load(str(after) + ".tracemalloc")
    n = max(connections, 1)

    def short(frame: tracemalloc.Frame) -> str:
        return str(frame).replace(str(ROOT) + "/", "").split("site-packages/")[-1]

    def owner(traceback: tracemalloc.Traceback) -> str:
        """The most recent frame in the relay's code; else in trio-websocket or wsproto;
        else the allocating line."""
        frames = list(traceback)[::-1]  # iteration is oldest first
        for frame in frames:
            if frame.filename.startswith(str(ROOT / "relay") + "/"):
                return short(frame)
        for frame in frames:
            if "trio_websocket" in frame.filename or "wsproto" in frame.filename:
                return short(frame)
        return short(frames[0])

    def top(sizes: dict[str, int], counts: dict[str, int]) -> list[dict[str, Any]]:
        ranked = sorted(sizes, key=lambda k: sizes[k], reverse=True)[:SNAPSHOT_TOP]
        return [
            {
                "where": where,
                "kib_per_connection": round(sizes[where] / 1024 / n, 2),
                "blocks_per_connection": round(counts[where] / n, 2),
            }
            for where in ranked
        ]

    def group(key: str, name: Any) -> list[dict[str, Any]]:
        sizes: collections.Counter[str] = collections.Counter()
        counts: collections.Counter[str] = collections.Counter()
        for d in new.compare_to(old, key):
            where = name(d.traceback)
            sizes[where] += d.size_diff
            counts[where] += d.count_diff
        return top(sizes, counts)

    by_caller = group("traceback", owner)
    by_line = group("lineno", lambda tb: short(tb[0]))
    total = sum(d.size_diff for d in new.compare_to(old, "filename"))
    types_old = collections.Counter(orjson.loads(before.with_suffix(".json").read_bytes()))
    types_new = collections.Counter(orjson.loads(after.with_suffix(".json").read_bytes()))
    types_new.subtract(types_old)
    return {
        "traced_kib_per_connection": round(total / 1024 / n, 2),
        "by_relay_caller": by_caller,
        "by_line": by_line,
        "gc_objects_per_connection": round(sum(types_new.values()) / n, 1),
        "gc_objects_by_type": {
            name: round(count / n, 2) for name, count in types_new.most_common(SNAPSHOT_TOP)
        },
    }


async def sample_rss(pid: int, seconds: float) -> list[int]:
    samples = []
    for _ in range(max(1, round(seconds))):
        await trio.sleep(1.0)
        samples.append(rss_kib(pid))
    return samples


async def idle_run(
    relay: RelayProcess, connections: int, batch: int, settle: float
) -> dict[str, Any]:
    tracing = relay.snapshot_dir is not None
    target = nl.resolve_target(relay.url)
    pid = relay.pid
    stats = OpenStats()
    sockets: list[trio_websocket.WebSocketConnection] = []
    async with trio.open_nursery() as readers:
        # Warm-up: the first connection imports and allocates what every later one reuses.
        with trio.fail_after(CONNECT_TIMEOUT):
            ws = await nl.open_connection(readers, target)
            await read_auth(ws)
        await nl.close_quietly(ws)
        rss_start = rss_kib(pid)
        before_samples = await sample_rss(pid, 3)
        rss_before = before_samples[-1]
        if tracing:
            snap_before = await take_snapshot(relay, 1)
        log(f"relay pid {pid}: VmRSS {rss_before} KiB before; opening {connections} connections")

        async def open_one(_: int) -> None:
            try:
                with trio.fail_after(CONNECT_TIMEOUT):
                    ws = await nl.open_connection(readers, target)
                    sockets.append(ws)
                    await read_auth(ws)
                stats.opened += 1
            except CONNECT_ERRORS as exc:
                stats.fail(_reason(exc))

        timed_out = False
        with trio.move_on_after(OPEN_TIMEOUT) as scope:
            await in_batches(connections, batch, open_one, stats)
        timed_out = scope.cancelled_caught
        gauges = await relay_gauges(relay.port)
        log(
            f"  {stats.opened} open in {stats.open_s:.1f} s "
            f"(relay reports {gauges.get('relay_connections', 'n/a')}); settling {settle:.0f} s"
        )
        after_samples = await sample_rss(pid, settle)
        rss_after = after_samples[-1]
        hwm_after = proc_status_kib(pid, "VmHWM")
        relay_fds = len(os.listdir(f"/proc/{pid}/fd"))
        log(f"  VmRSS {rss_after} KiB after")
        memory: dict[str, Any] | None = None
        if tracing:
            snap_after = await take_snapshot(relay, 2)
            memory = snapshot_report(snap_before, snap_after, stats.opened)
            log(
                f"  tracemalloc: {memory['traced_kib_per_connection']} KiB and "
                f"{memory['gc_objects_per_connection']} GC-tracked objects per connection"
            )
        log("  closing")
        t_close = time.perf_counter()
        await close_all(sockets, batch)
        close_s = time.perf_counter() - t_close
        closed_samples = await sample_rss(pid, 3)
        readers.cancel_scope.cancel()
    per_conn = (rss_after - rss_before) / stats.opened if stats.opened else None
    return {
        "mode": "idle",
        "url": relay.url,
        "relay_pid": pid,
        "connections_requested": connections,
        "batch": batch,
        "opened": stats.opened,
        "failed": stats.failed,
        "errors": dict(stats.errors),
        "timed_out": timed_out,
        "open_s": round(stats.open_s, 2),
        "close_s": round(close_s, 2),
        "relay_reported_connections": gauges.get("relay_connections"),
        "relay_fds_while_open": relay_fds,
        "settle_s": settle,
        "rss_kib": {
            "start": rss_start,
            "before": rss_before,
            "before_samples": before_samples,
            "after": rss_after,
            "after_samples": after_samples,
            "hwm_after": hwm_after,
            "after_close": closed_samples[-1],
        },
        "kib_per_connection": None if per_conn is None else round(per_conn, 2),
        "target_kib_per_connection": TARGET_IDLE_KIB,
        "target_met": per_conn is not None and per_conn < TARGET_IDLE_KIB,
        "tracemalloc": memory,
    }


def idle_line(r: dict[str, Any]) -> str:
    rss = r["rss_kib"]
    per = r["kib_per_connection"]
    line = (
        f"idle {r['url']}: {r['opened']}/{r['connections_requested']} connections open "
        f"in {r['open_s']:.1f} s (relay reports {r['relay_reported_connections']}); "
        f"relay VmRSS {rss['before']} -> {rss['after']} KiB "
        f"(after closing {rss['after_close']} KiB); "
        f"{'n/a' if per is None else f'{per:.1f}'} KiB per connection "
        f"(target < {TARGET_IDLE_KIB:.0f}: {'met' if r['target_met'] else 'MISSED'})"
    )
    if r["tracemalloc"] is not None:
        line += " [under tracemalloc: RSS inflated by its bookkeeping]"
    if r["errors"]:
        line += f"; errors: {r['errors']}"
    if r["timed_out"]:
        line += "; TIMED OUT"
    return line


# --------------------------------------------------------------------------
# fanout
# --------------------------------------------------------------------------


@dataclass
class Round:
    number: int
    event_id: str
    waiting: int  # subscriber connections that have not received all their copies
    sent_at: float = 0.0
    first_at: float | None = None
    last_at: float | None = None
    ok_at: float | None = None
    done: trio.Event = field(default_factory=trio.Event)
    ok: trio.Event = field(default_factory=trio.Event)
    finished: list[float] = field(default_factory=list)  # per connection
    copies: int = 0
    duplicates: int = 0
    stray: int = 0


@dataclass
class Fan:
    current: Round | None = None
    live: int = 0  # connections subscribed and reading
    lost: int = 0  # connections that closed after subscribing
    closing: bool = False  # the run is over: closes are ours
    closed_subs: collections.Counter[str] = field(default_factory=collections.Counter)
    notices: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: list[str] = field(default_factory=list)


async def subscriber(
    index: int,
    sub_ids: Sequence[str],
    target: nl.Target,
    readers: trio.Nursery,
    fan: Fan,
    sockets: list[RawWebSocket],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Open, subscribe (all EOSEs), report started, then count live copies until closed.

    Subscribers use the harness's own client (bench/wsraw.py), which reads each copy with
    a fraction of a general client's CPU, so the relay keeps more of the shared cores."""
    with trio.fail_after(CONNECT_TIMEOUT):
        ws = await nl.open_raw(target)
        sockets.append(ws)
        await read_auth(ws)
        for sub_id in sub_ids:
            await ws.send_message(orjson.dumps(["REQ", sub_id, {"kinds": [1]}]).decode())
        pending = set(sub_ids)
        while pending:
            msg = orjson.loads(await ws.get_message())
            if not isinstance(msg, list) or len(msg) < 2:
                continue
            if msg[0] == "EOSE":
                pending.discard(msg[1])
            elif msg[0] == "CLOSED":
                nl.bump(fan.closed_subs, str(msg[2]) if len(msg) > 2 else "")
                raise trio_websocket.HandshakeError(f"subscription refused: {msg!r:.120}")
            elif msg[0] == "NOTICE":
                nl.bump(fan.notices, str(msg[1]))
    fan.live += 1
    task_status.started()
    mine = set(sub_ids)
    expected = len(sub_ids)
    seen: set[str] = set()
    round_no = -1
    try:
        while True:
            raw = await ws.get_message()
            now = time.perf_counter()
            try:
                msg = orjson.loads(raw)
            except orjson.JSONDecodeError:
                nl.bump(fan.notices, "(unparseable message)")
                continue
            if not isinstance(msg, list) or len(msg) < 3 or msg[0] != "EVENT":
                if isinstance(msg, list) and msg and msg[0] == "NOTICE":
                    nl.bump(fan.notices, str(msg[1:2]))
                continue
            rnd = fan.current
            event = msg[2]
            if (
                rnd is None
                or not isinstance(event, dict)
                or event.get("id") != rnd.event_id
                or msg[1] not in mine
            ):
                if rnd is not None:
                    rnd.stray += 1
                continue
            if rnd.number != round_no:
                round_no, seen = rnd.number, set()
            if msg[1] in seen:
                rnd.duplicates += 1
                continue
            seen.add(msg[1])
            rnd.copies += 1
            if rnd.first_at is None:
                rnd.first_at = now
            if len(seen) == expected:
                rnd.finished.append(now)
                rnd.waiting -= 1
                if rnd.waiting == 0:
                    rnd.last_at = now
                    rnd.done.set()
    except (WebSocketError, trio.BrokenResourceError) as exc:
        fan.live -= 1
        if fan.closing:
            return
        fan.lost += 1
        if len(fan.errors) < MAX_ERRORS_KEPT:
            fan.errors.append(f"subscriber {index} closed: {exc}")


async def publisher_reader(ws: trio_websocket.WebSocketConnection, fan: Fan) -> None:
    with contextlib.suppress(trio_websocket.ConnectionClosed):
        while True:
            raw = await ws.get_message()
            now = time.perf_counter()
            try:
                msg = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            rnd = fan.current
            if (
                isinstance(msg, list)
                and len(msg) >= 3
                and msg[0] == "OK"
                and rnd is not None
                and msg[1] == rnd.event_id
            ):
                rnd.ok_at = now
                if msg[2] is not True:
                    fan.errors.append(f"publish refused: {msg!r:.200}")
                rnd.ok.set()


def split_subscriptions(subscribers: int, connections: int) -> list[list[str]]:
    base, extra = divmod(subscribers, connections)
    return [
        [f"cap{c}.{j}" for j in range(base + (1 if c < extra else 0))] for c in range(connections)
    ]


def round_report(
    rnd: Round, expected_connections: int, relay_cpu: float, bench_cpu: float
) -> dict[str, Any]:
    def ms(t: float | None) -> float | None:
        return None if t is None else round((t - rnd.sent_at) * 1000.0, 2)

    finished = sorted(rnd.finished)
    return {
        "round": rnd.number,
        "complete": rnd.last_at is not None,
        "latency_ms": ms(rnd.last_at),
        "first_copy_ms": ms(rnd.first_at),
        "median_connection_ms": ms(finished[len(finished) // 2]) if finished else None,
        "ok_ms": ms(rnd.ok_at),
        "connections_complete": len(finished),
        "connections_expected": expected_connections,
        "copies": rnd.copies,
        "duplicates": rnd.duplicates,
        "stray": rnd.stray,
        "relay_cpu_s": round(relay_cpu, 2),
        "bench_cpu_s": round(bench_cpu, 2),
    }


async def fanout_run(
    relay: RelayProcess,
    subscribers: int,
    connections: int,
    batch: int,
    rounds: int,
    events: Sequence[nl.PreparedEvent],
    profile: str | None,
    native: bool,
) -> dict[str, Any]:
    target = nl.resolve_target(relay.url)
    pid = relay.pid
    fan = Fan()
    stats = OpenStats()
    shares = split_subscriptions(subscribers, connections)
    sockets: list[RawWebSocket] = []
    results: list[dict[str, Any]] = []
    rss_before = rss_kib(pid)
    async with trio.open_nursery() as readers:

        async def open_one(i: int) -> None:
            try:
                await readers.start(subscriber, i, shares[i], target, readers, fan, sockets)
                stats.opened += 1
            except CONNECT_ERRORS as exc:
                stats.fail(_reason(exc))

        log(
            f"relay pid {pid}: opening {connections} connections x "
            f"{len(shares[0])} subscriptions ({subscribers} in all)"
        )
        with trio.move_on_after(OPEN_TIMEOUT) as scope:
            await in_batches(connections, batch, open_one, stats)
        setup_timed_out = scope.cancelled_caught
        gauges = await relay_gauges(relay.port)
        rss_subscribed = rss_kib(pid)
        log(
            f"  {stats.opened} subscribed in {stats.open_s:.1f} s; relay reports "
            f"{gauges.get('relay_connections', 'n/a')} connections, "
            f"{gauges.get('relay_subscriptions', 'n/a')} subscriptions"
        )
        with trio.fail_after(CONNECT_TIMEOUT):
            pub = await nl.open_connection(readers, target)
            await read_auth(pub)
        readers.start_soon(publisher_reader, pub, fan)
        if stats.opened and not setup_timed_out:
            # This process's cyclic GC would otherwise rescan the objects of every
            # subscriber connection during the rounds and add its pauses (up to a quarter
            # of a second each with 10,000 connections) to the measured latency; the
            # rounds are few and short, so it is simply off until they are over.
            gc.collect()
            gc.disable()
            try:
                with py_spy(pid, profile, native):
                    for number, event in enumerate(events[: rounds + 1]):
                        rnd = Round(number=number, event_id=event.id, waiting=fan.live)
                        fan.current = rnd
                        cpu_relay, cpu_bench = cpu_seconds(pid), time.process_time()
                        rnd.sent_at = time.perf_counter()
                        await pub.send_message(event.message)
                        with trio.move_on_after(ROUND_TIMEOUT):
                            await rnd.done.wait()
                        with trio.move_on_after(ROUND_TIMEOUT):
                            await rnd.ok.wait()
                        report = round_report(
                            rnd,
                            rnd.waiting + len(rnd.finished),
                            cpu_seconds(pid) - cpu_relay,
                            time.process_time() - cpu_bench,
                        )
                        report["warmup"] = number == 0
                        results.append(report)
                        log(
                            f"  round {number}{' (warm-up)' if number == 0 else ''}: "
                            f"last copy {report['latency_ms']} ms, first {report['first_copy_ms']} "
                            f"ms, OK {report['ok_ms']} ms; {report['connections_complete']}/"
                            f"{report['connections_expected']} connections complete; CPU relay "
                            f"{report['relay_cpu_s']} s, bench {report['bench_cpu_s']} s"
                        )
                        await trio.sleep(ROUND_PAUSE)
            finally:
                gc.enable()
        fan.current = None
        fan.closing = True
        rss_after = rss_kib(pid)
        await close_all([*sockets, pub], batch)
        readers.cancel_scope.cancel()
    measured = [r for r in results if not r["warmup"]]
    latencies = [r["latency_ms"] for r in measured if r["complete"]]
    complete = (
        len(latencies) == rounds
        and stats.failed == 0
        and not setup_timed_out
        and fan.lost == 0
        and not fan.errors
    )
    median = statistics.median(latencies) if latencies else None
    worst = max(latencies) if latencies else None
    return {
        "mode": "fanout",
        "url": relay.url,
        "relay_pid": pid,
        "subscribers": subscribers,
        "connections": connections,
        "subscriptions_per_connection": sorted({len(s) for s in shares}),
        "opened": stats.opened,
        "failed": stats.failed,
        "errors": dict(stats.errors),
        "errors_after_setup": fan.errors,
        "closed_subscriptions": dict(fan.closed_subs),
        "notices": dict(fan.notices),
        "lost_connections": fan.lost,
        "setup_timed_out": setup_timed_out,
        "setup_s": round(stats.open_s, 2),
        "relay_reported": gauges,
        "relay_rss_kib": {"before": rss_before, "subscribed": rss_subscribed, "after": rss_after},
        "rounds": results,
        "latency_ms": {"median": median, "max": worst, "runs": latencies},
        "complete": complete,
        "target_ms": TARGET_FANOUT_MS,
        "target_met": (
            complete
            and subscribers >= TARGET_FANOUT_SUBSCRIBERS
            and worst is not None
            and worst < TARGET_FANOUT_MS
        ),
        "loadavg_end": loadavg(),
    }


def fanout_line(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    per = r["subscriptions_per_connection"]
    fmt = "n/a" if lat["median"] is None else f"{lat['median']:.1f} ms"
    worst = "n/a" if lat["max"] is None else f"{lat['max']:.1f} ms"
    cpu = [x["relay_cpu_s"] for x in r["rounds"] if not x["warmup"]]
    bench_cpu = [x["bench_cpu_s"] for x in r["rounds"] if not x["warmup"]]
    line = (
        f"fanout {r['url']}: {r['subscribers']} subscriptions on {r['opened']}/"
        f"{r['connections']} connections ({'/'.join(map(str, per))} each, set up in "
        f"{r['setup_s']:.1f} s); send -> last copy over {len(lat['runs'])} rounds: "
        f"median {fmt}, max {worst}"
    )
    if cpu:
        line += (
            f"; CPU per round: relay {statistics.median(cpu):.2f} s, "
            f"bench {statistics.median(bench_cpu):.2f} s (medians)"
        )
    if r["subscribers"] >= TARGET_FANOUT_SUBSCRIBERS:
        line += f" (target < {TARGET_FANOUT_MS:.0f} ms: {'met' if r['target_met'] else 'MISSED'})"
    if r["errors"] or r["errors_after_setup"]:
        line += f"; errors: {r['errors']} {r['errors_after_setup'][:3]}"
    if not r["complete"]:
        line += "; INCOMPLETE"
    return line


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def fit(requested: int, budget: int, what: str, notes: list[str]) -> int:
    if requested <= budget:
        return requested
    notes.append(
        f"{what}: {requested} requested but the descriptor limit allows {budget} "
        f"(hard limit minus {FD_RESERVE}); using {budget}"
    )
    log(f"note: {notes[-1]}")
    return budget


def run_idle(args: argparse.Namespace, limits: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    connections = fit(args.connections, limits["budget"], "connections", notes)
    if connections < 1:
        raise CapacityError(f"the descriptor limit ({limits['soft']}) leaves no room")
    with our_relay(tracemalloc=args.tracemalloc) as relay:
        return trio.run(idle_run, relay, connections, args.batch, args.settle)


def run_fanout(
    args: argparse.Namespace, limits: dict[str, Any], notes: list[str]
) -> list[dict[str, Any]]:
    budget = limits["budget"] - 1  # the publisher's connection
    subscribers = args.subscribers
    plans = [min(args.connections, subscribers)]
    if args.one_per_connection and subscribers not in plans:
        if subscribers <= budget:
            plans.append(subscribers)
        else:
            notes.append(
                f"one subscription per connection skipped: {subscribers} connections do not "
                f"fit in the descriptor limit ({limits['soft']}); the largest that fits is "
                f"{budget}"
            )
            log(f"note: {notes[-1]}")
    plans[0] = fit(plans[0], budget, "connections", notes)
    reports = []
    for index, connections in enumerate(plans):
        per_connection = -(-subscribers // connections)
        extra_env = {}
        if per_connection > 200:  # the relay's default RELAY_MAX_SUBSCRIPTIONS
            extra_env["RELAY_MAX_SUBSCRIPTIONS"] = str(per_connection)
            notes.append(f"RELAY_MAX_SUBSCRIPTIONS={per_connection} for {connections} connections")
        events = nl.build_ingest_events(args.rounds + 1, 1)
        profile = args.profile
        if profile is not None and index > 0:
            profile = f"{profile}.{connections}"
        with our_relay(extra_env) as relay:
            report = trio.run(
                fanout_run,
                relay,
                subscribers,
                connections,
                args.batch,
                args.rounds,
                events,
                profile,
                args.native,
            )
        if extra_env:
            report["relay_env"] = extra_env
        reports.append(report)
    return reports


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 600, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.capacity",
        description="Idle-connection memory and fan-out latency of our relay (loopback only).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--batch",
            type=bounded(1, 10_000),
            default=200,
            help="connections opened (and closed) at once (default 200)",
        )
        p.add_argument(
            "--json",
            action="store_true",
            help="print a JSON object on stdout (the summary lines go to stderr)",
        )

    p_idle = sub.add_parser("idle", help="relay RSS per idle websocket connection")
    p_idle.add_argument(
        "--connections",
        type=bounded(1, MAX_CONNECTIONS),
        default=10_000,
        help="idle connections (10000)",
    )
    p_idle.add_argument(
        "--settle",
        type=_seconds,
        default=5.0,
        help="seconds to wait with all connections open before reading RSS (default 5)",
    )
    p_idle.add_argument(
        "--tracemalloc",
        action="store_true",
        help="run the relay under tracemalloc and report where the memory of the "
        "connections went (allocation sites, GC-tracked objects by type); RSS is then "
        "inflated by tracemalloc's own bookkeeping",
    )
    common(p_idle)

    p_fan = sub.add_parser("fanout", help="time from publishing one event to its last copy")
    p_fan.add_argument(
        "--subscribers",
        type=bounded(1, MAX_CONNECTIONS),
        default=10_000,
        help="live subscriptions in all (default 10000)",
    )
    p_fan.add_argument(
        "--connections",
        type=bounded(1, MAX_CONNECTIONS),
        default=100,
        help="connections the subscriptions are spread over (default 100)",
    )
    p_fan.add_argument(
        "--rounds", type=bounded(1, 1000), default=5, help="measured rounds, after one warm-up (5)"
    )
    p_fan.add_argument(
        "--no-one-per-connection",
        dest="one_per_connection",
        action="store_false",
        help="skip the second run with one subscription per connection",
    )
    p_fan.add_argument(
        "--profile",
        default=None,
        metavar="FILE",
        help="record the relay with py-spy (-f raw) over the measured rounds into FILE",
    )
    p_fan.add_argument(
        "--native",
        action="store_true",
        help="with --profile: py-spy --native (shows time in C, e.g. the cyclic GC)",
    )
    common(p_fan)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    soft, hard = raise_fd_limit()
    limits = {"soft": soft, "hard": hard, "budget": fd_budget(soft)}
    info = machine()
    log(
        f"RLIMIT_NOFILE soft {soft}, hard {hard} (connections per process up to "
        f"{limits['budget']}); {info['cpus']} CPUs, {info['mem_gib']} GiB, "
        f"load average {info['loadavg_start']}"
    )
    notes: list[str] = []
    try:
        if args.command == "idle":
            report = run_idle(args, limits, notes)
            lines = [idle_line(report)]
            ok = report["failed"] == 0 and not report["timed_out"]
            output: dict[str, Any] = {**report}
        else:
            reports = run_fanout(args, limits, notes)
            lines = [fanout_line(r) for r in reports]
            ok = all(r["complete"] for r in reports)
            output = {"mode": "fanout", "runs": reports}
    except CapacityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, trio_websocket.HandshakeError, BaseExceptionGroup) as exc:
        print(f"error: {nl._describe(exc)}", file=sys.stderr)
        return 2
    info["loadavg_end"] = loadavg()
    output.update({"rlimit_nofile": limits, "machine": info, "notes": notes})
    for line in lines:
        print(line, file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(orjson.dumps(output, option=orjson.OPT_INDENT_2).decode())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
