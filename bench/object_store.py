"""Object store micro-benchmark for git state (relay/git): PUT, verified GET, pointer CAS.

    python -m bench.object_store --backend moto|filesystem [--objects N] [--size BYTES] \
        [--writers K] [--cas-rounds R] [--timeout S] [--json]

Three phases, each on the same `GitObjects` layer the relay uses:

- PUT: N distinct random objects of BYTES each, written create-only under `packs/<sha256>`
  (`GitObjects.put_immutable`) by K concurrent writers; objects/s and MB/s (10^6 bytes).
- GET: the same N objects read back by K concurrent readers with `GitObjects.get_verified`
  (the body must hash to its key); objects/s and MB/s.
- CAS: R sequential `If-Match` replacements of one pointer (`GitObjects.cas_pointer`), each
  with the revision token returned by the previous win; p50/p99 latency.

Payloads and pointer bodies are prepared before the clock starts; one warm-up PUT and GET
(not counted) open the connections first.

Backends: `filesystem` is `FilesystemStore` in a fresh temporary directory (removed at the
end). `moto` starts its own moto S3 server exactly as the test fixture does
(`python -m tests.moto_serial PORT` on a free 127.0.0.1 port), creates a bucket, and stops
the server at the end. That moto serves one request at a time (so conditional writes are
atomic), which serialises the K writers: it is a test server, not a production S3, and its
numbers say nothing about S3 or MinIO.

Safety: counts and sizes are bounded (see the limits below), the only network traffic is to
the moto server this process started on loopback, and the whole run is bounded by
`--timeout`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import trio

from bench.common import bounded, free_port, positive_float
from bench.nostr_load import latency_summary_ms
from relay.git import model
from relay.git.fsstore import FilesystemStore
from relay.git.objectstore import GitObjects, ObjectStore, StoreError, Won
from relay.git.s3store import S3Config, S3Store

MAX_OBJECTS = 100_000
MAX_SIZE = 64 * 1024 * 1024
MAX_TOTAL_BYTES = 2 * 1024 * 1024 * 1024
MAX_WRITERS = 256
MAX_CAS_ROUNDS = 100_000
DEFAULT_TIMEOUT = 300.0
MOTO_START_TIMEOUT = 30.0
MOTO_KEY = "testing"  # moto accepts any credentials; requests are still signed
MOTO_NOTE = (
    "moto is a single-threaded test server (tests/moto_serial.py): it serialises all "
    "requests, so concurrency does not help; not a production S3"
)
FILESYSTEM_NOTE = "FilesystemStore: fsync of file and directory on every write"


class BenchError(Exception):
    """A problem reported to the user as a one-line error (exit status 2)."""


# --------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on a free loopback port, started like the `moto_endpoint` fixture."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.moto_serial", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + MOTO_START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("the moto server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass(frozen=True)
class StoreSpec:
    backend: str
    endpoint: str | None = None
    root: Path | None = None

    async def open(self) -> ObjectStore:
        if self.backend == "filesystem":
            assert self.root is not None
            return FilesystemStore(self.root)
        assert self.endpoint is not None
        store = S3Store(
            S3Config(
                endpoint=self.endpoint,
                bucket=f"bench-{secrets.token_hex(8)}",
                access_key=MOTO_KEY,
                secret_key=MOTO_KEY,
                timeout_seconds=30,
            )
        )
        await store.create_bucket()
        return store


@contextlib.contextmanager
def store_spec(name: str) -> Iterator[StoreSpec]:
    if name == "filesystem":
        with tempfile.TemporaryDirectory(prefix="bench-object-store-") as tmp:
            yield StoreSpec("filesystem", root=Path(tmp) / "objects")
    else:
        with moto_server() as endpoint:
            yield StoreSpec("moto", endpoint=endpoint)


# --------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------


@dataclass
class PhaseStats:
    done: int = 0
    nbytes: int = 0
    wall: float | None = None
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def run_concurrently(
    count: int, workers: int, op: Callable[[int], Awaitable[int]], stats: PhaseStats
) -> None:
    """Run `await op(i)` for i in range(count) on `workers` tasks sharing one iterator."""
    indexes = iter(range(count))

    async def worker() -> None:
        for i in indexes:  # shared: each index is taken by exactly one task
            started = time.perf_counter()
            try:
                nbytes = await op(i)
            except StoreError as exc:
                stats.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            stats.latencies.append(time.perf_counter() - started)
            stats.done += 1
            stats.nbytes += nbytes

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(min(workers, count)):
            nursery.start_soon(worker)
    stats.wall = time.perf_counter() - t0


@dataclass
class Results:
    put: PhaseStats = field(default_factory=PhaseStats)
    get: PhaseStats = field(default_factory=PhaseStats)
    cas: PhaseStats = field(default_factory=PhaseStats)
    cas_lost: int = 0
    timed_out: bool = False


async def benchmark(
    spec: StoreSpec, payloads: Sequence[bytes], workers: int, cas_rounds: int, timeout: float
) -> Results:
    results = Results()
    size = max((len(p) for p in payloads), default=0)
    owner = secrets.token_hex(32)
    pointer = model.pointer_key(1, owner, "bench")
    digests = [model.sha256_hex(f"bench manifest {i}".encode()) for i in range(cas_rounds + 1)]
    keys: list[str] = [""] * len(payloads)

    with trio.move_on_after(timeout) as scope:
        store = await spec.open()
        objects = GitObjects(store)
        try:
            # Warm-up (not counted): opens the connection(s), creates the prefix directory.
            warm = await objects.put_immutable(model.PACKS, os.urandom(64))
            await objects.get_verified(warm, 64)

            async def put(i: int) -> int:
                keys[i] = await objects.put_immutable(model.PACKS, payloads[i])
                return len(payloads[i])

            async def get(i: int) -> int:
                return len(await objects.get_verified(keys[i], size))

            await run_concurrently(len(payloads), workers, put, results.put)
            stored = [i for i, key in enumerate(keys) if key]
            await run_concurrently(len(stored), workers, lambda j: get(stored[j]), results.get)

            created = await objects.cas_pointer(pointer, digests[0], None)
            if not isinstance(created, Won):
                raise BenchError(f"could not create the pointer {pointer}: {created}")
            token = created.token
            t0 = time.perf_counter()
            for digest in digests[1:]:
                started = time.perf_counter()
                outcome = await objects.cas_pointer(pointer, digest, token)
                elapsed = time.perf_counter() - started
                if not isinstance(outcome, Won):
                    results.cas_lost += 1  # nobody else writes: a lost race is a store bug
                    break
                token = outcome.token
                results.cas.latencies.append(elapsed)
                results.cas.done += 1
            results.cas.wall = time.perf_counter() - t0
        finally:
            with trio.move_on_after(5) as closing:
                closing.shield = True
                await store.aclose()
    results.timed_out = scope.cancelled_caught
    return results


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _throughput(stats: PhaseStats, total: int) -> dict[str, Any]:
    wall = stats.wall
    return {
        "total": total,
        "done": stats.done,
        "errors": stats.errors[:5],
        "error_count": len(stats.errors),
        "wall_s": None if wall is None else round(wall, 4),
        "objects_per_s": round(stats.done / wall, 1) if wall else None,
        "mb_per_s": round(stats.nbytes / wall / 1e6, 2) if wall else None,
        "latency_ms": latency_summary_ms(stats.latencies),
    }


def make_report(args: argparse.Namespace, results: Results, prepare_s: float) -> dict[str, Any]:
    return {
        "backend": args.backend,
        "note": MOTO_NOTE if args.backend == "moto" else FILESYSTEM_NOTE,
        "objects": args.objects,
        "size": args.size,
        "writers": args.writers,
        "prepare_s": round(prepare_s, 3),
        "put": _throughput(results.put, args.objects),
        "get": _throughput(results.get, results.put.done),
        "cas": {
            "rounds": args.cas_rounds,
            "won": results.cas.done,
            "lost": results.cas_lost,
            "latency_ms": latency_summary_ms(results.cas.latencies),
        },
        "timed_out": results.timed_out,
    }


def _fmt(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:.1f} {unit}"


def report_line(report: dict[str, Any]) -> str:
    put, get, cas = report["put"], report["get"], report["cas"]
    line = (
        f"object_store {report['backend']}: {report['objects']} x {report['size']} B, "
        f"{report['writers']} writers; "
        f"PUT {put['done']}/{put['total']} {_fmt(put['objects_per_s'], 'objects/s')}, "
        f"{_fmt(put['mb_per_s'], 'MB/s')}; "
        f"GET {get['done']}/{get['total']} {_fmt(get['objects_per_s'], 'objects/s')}, "
        f"{_fmt(get['mb_per_s'], 'MB/s')}; "
        f"CAS {cas['won']}/{cas['rounds']} p50 {_fmt(cas['latency_ms']['p50'], 'ms')}, "
        f"p99 {_fmt(cas['latency_ms']['p99'], 'ms')}"
    )
    if put["error_count"] or get["error_count"]:
        line += f"; errors: {put['errors'][:1] + get['errors'][:1]}"
    if cas["lost"]:
        line += "; CAS LOST A RACE WITH NO OTHER WRITER"
    if report["timed_out"]:
        line += "; TIMED OUT"
    return line + f" [{report['note']}]"


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.object_store",
        description="Object store benchmark for git state: PUT, verified GET, pointer CAS.",
    )
    parser.add_argument("--backend", choices=("moto", "filesystem"), required=True)
    parser.add_argument(
        "--objects", type=bounded(1, MAX_OBJECTS), default=500, help="objects (default 500)"
    )
    parser.add_argument(
        "--size",
        type=bounded(1, MAX_SIZE),
        default=64 * 1024,
        help="bytes per object (default 65536)",
    )
    parser.add_argument(
        "--writers",
        type=bounded(1, MAX_WRITERS),
        default=16,
        help="concurrent writers, and readers (default 16)",
    )
    parser.add_argument(
        "--cas-rounds",
        type=bounded(1, MAX_CAS_ROUNDS),
        default=200,
        help="sequential If-Match pointer writes (default 200)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT,
        help=f"time limit of the measured phases in seconds (default {DEFAULT_TIMEOUT:.0f})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a JSON object on stdout (the summary line goes to stderr)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    if args.objects * args.size > MAX_TOTAL_BYTES:
        raise BenchError(f"--objects x --size must be at most {MAX_TOTAL_BYTES} bytes")
    t0 = time.perf_counter()
    payloads = [os.urandom(args.size) for _ in range(args.objects)]
    prepare_s = time.perf_counter() - t0
    with store_spec(args.backend) as spec:
        results = trio.run(benchmark, spec, payloads, args.writers, args.cas_rounds, args.timeout)
    report = make_report(args, results, prepare_s)
    line = report_line(report)
    if args.json:
        print(line, file=sys.stderr)
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(line)
    complete = (
        not results.timed_out
        and results.put.done == args.objects
        and results.get.done == args.objects
        and results.cas.done == args.cas_rounds
    )
    return 0 if complete else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (BenchError, StoreError, OSError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
