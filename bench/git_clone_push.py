"""Git over smart HTTP: push and clone through our relay versus `git http-backend`.

    python -m bench.git_clone_push [--commits 10000] [--runs 3] [--files 1000] \
        [--timeout 900] [--json]

1. Generates, in a temporary directory, a deterministic repository of `--commits` commits
   with `git fast-import` (one generated stream: the first commit adds `--files` small text
   files of ~2.3 kB, every later commit rewrites one line in each of 3 files), then repacks
   it once with `git repack -a -d -f` so it holds one delta-compressed pack, as a real
   repository would. Fixed seed, author and dates: the same arguments give the same commits.
   (The stream is written to a file first, so that fast-import runs under the timeout.)
2. Creates a fresh database `relay_bench_git_<random>` on the local PostgreSQL (admin URL
   `$RELAY_BENCH_POSTGRES`, default postgresql://postgres@127.0.0.1:5432/postgres) and starts
   our relay as a subprocess (`python -m relay.cli serve`) on a free 127.0.0.1 port, with the
   filesystem object store in a temporary `RELAY_DATA_DIR` and `RELAY_GIT_PROBE=off`.
3. Starts `git http-backend` behind a small CGI-to-HTTP bridge (`ThreadingHTTPServer` in this
   process, a free 127.0.0.1 port, one `git http-backend` process per request) whose project
   root is a temporary directory of bare repositories. Those repositories get the same git
   options the relay runs receive-pack and upload-pack with (`relay.git.workspace.
   SERVE_OPTIONS`, among them `receive.fsckObjects=true`, `uploadpack.allowFilter=true`
   and `lsrefs.unborn=advertise`) and `http.receivepack=true`.
4. Then, `--runs` times, for the relay and for http-backend in turn, each on a new empty
   repository (a new kind 30617 announcement on the relay, a new `git init --bare` for
   http-backend), these steps in this order:
   - push: `git push URL main:main` of the whole repository from the generated bare repo
     (to the relay with a NIP-98 token in `http.extraHeader`); pushes are protocol v0
     whatever `protocol.version` says (git has no v2 receive-pack);
   - clone: `git -c protocol.version=0 clone -q URL` into a new directory (with checkout;
     2 requests: info/refs, upload-pack); this v0 row is the one `bench.targets` compares;
   - clone_v2: the same with `-c protocol.version=2`, git 2.39's own default (3 requests:
     the capabilities, ls-refs, fetch);
   - clone_v2_blob_none: a partial clone, `-c protocol.version=2 clone -q
     --filter=blob:none URL`; its time is the whole `git clone`, which includes the fetch
     the checkout makes for the blobs of the head's tree (2 more requests, 5 in all);
   - second push: one new commit on top (one line of one file changed, fixed dates) made in
     the v0 clone and pushed to its origin (then checked with `git ls-remote`, untimed).
   Every clone's HEAD is checked against the generated head, and the partial clone must
   hold fewer objects than the repository (the server honoured the filter). In run 1, after
   the push, `git ls-remote` with `GIT_TRACE_PACKET` (untimed) checks that each server
   answers protocol v0 when asked for v0 and v2 when asked for v2.
   Each step is the wall time of the git client command, which includes the client's own
   work (pack-objects for push; index-pack and checkout for clone).

Reports the load average at the start and the end, the median of the runs for each step
and the ratios relay / http-backend (with `--json`, also min, max and every run).

The bridge hands http-backend the request's `Git-Protocol` header as `HTTP_GIT_PROTOCOL`
and as `GIT_PROTOCOL`, as a web server set up by git's documentation does; the clients
have no system or global config, so only the `-c` options above choose the protocol.

Safety: everything listens on and talks to 127.0.0.1 only; every git command has a timeout
(`--timeout`), every wait loop has a deadline, `--commits`, `--files` and `--runs` are
bounded; the relay subprocess, the bridge, the temporary directories and the database are
removed in `finally` blocks.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import io
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import unquote

import orjson
import trio
import trio_websocket
from coincurve import PrivateKey

from bench.common import bounded, free_port, fresh_database, log_tail, positive_float, spawned_relay
from relay.events import kinds
from relay.events.model import Event, sign_event
from relay.git.nip98 import make_token
from relay.git.workspace import SERVE_OPTIONS
from relay.keys import pubkey_hex

DEFAULT_COMMITS = 10_000
DEFAULT_FILES = 1000
DEFAULT_RUNS = 3
DEFAULT_TIMEOUT = 900.0
MAX_COMMITS = 200_000
MAX_FILES = 20_000
MAX_RUNS = 20
LINES_PER_FILE = 40
WORDS_PER_LINE = 9
EDITS_PER_COMMIT = 3
SEED = 20240611
BASE_TIME = 1_700_000_000
RELAY_STOP_TIMEOUT = 30.0
ANNOUNCE_TIMEOUT = 30.0
CGI_WRITE_CHUNK = 64 * 1024
IDENTITY = {
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}
PERSON = f"{IDENTITY['GIT_AUTHOR_NAME']} <{IDENTITY['GIT_AUTHOR_EMAIL']}>"
# The clones of each run, in this order: step name -> (protocol.version, extra options).
# "clone" (protocol v0) is the row bench.targets compares.
CLONES: dict[str, tuple[int, tuple[str, ...]]] = {
    "clone": (0, ()),
    "clone_v2": (2, ()),
    "clone_v2_blob_none": (2, ("--filter=blob:none",)),
}
STEPS = ("push", *CLONES, "push_one_commit")
STEP_LABELS = {
    "push": "push (whole repo)",
    "clone": "clone, v0",
    "clone_v2": "clone, v2",
    "clone_v2_blob_none": "clone, v2, blob:none",
    "push_one_commit": "push one commit",
}
TARGETS = ("relay", "http_backend")


class BenchError(Exception):
    """A problem reported to the user as an error (exit status 2)."""


# --------------------------------------------------------------------------
# The git client
# --------------------------------------------------------------------------


class GitClient:
    """Stock git with its own HOME, no system or global config, and a timeout per command."""

    def __init__(self, home: Path, timeout: float) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "LC_ALL": "C",
            **IDENTITY,
        }

    def run(
        self,
        *args: str,
        cwd: Path | None = None,
        auth: str | None = None,
        stdin: IO[bytes] | None = None,
        env: dict[str, str] | None = None,
        config: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[bytes]:
        options = ["-c", "init.defaultBranch=main"]
        if auth is not None:
            options += ["-c", f"http.extraHeader=Authorization: {auth}"]
        for setting in config:
            options += ["-c", setting]
        command = ["git", *options, *args]
        try:
            result = subprocess.run(
                command,
                cwd=cwd,
                env={**self.env, **(env or {})},
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            command_name = " ".join(args[:2])
            raise BenchError(f"git {command_name} took longer than {self.timeout} s") from None
        if result.returncode != 0:
            raise BenchError(
                f"git {' '.join(args[:2])} exited {result.returncode}:\n"
                + result.stderr.decode("utf-8", "replace").strip()
            )
        return result

    def timed(
        self,
        *args: str,
        cwd: Path | None = None,
        auth: str | None = None,
        config: Sequence[str] = (),
    ) -> float:
        start = time.perf_counter()
        self.run(*args, cwd=cwd, auth=auth, config=config)
        return time.perf_counter() - start

    def out(self, *args: str, cwd: Path | None = None) -> str:
        return self.run(*args, cwd=cwd).stdout.decode().strip()


# --------------------------------------------------------------------------
# The generated repository
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceRepo:
    path: Path
    head: str
    commits: int
    files: int
    objects: int
    pack_bytes: int
    tree_bytes: int
    stream_bytes: int
    import_s: float
    repack_s: float


def _vocabulary(rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(600)]


def fast_import_stream(commits: int, files: int) -> Iterator[bytes]:
    """The fast-import commands of the whole history, one commit at a time."""
    rng = random.Random(SEED)
    words = _vocabulary(rng)

    def line() -> str:
        return " ".join(rng.choice(words) for _ in range(WORDS_PER_LINE)) + "\n"

    paths = [f"src/pkg{i % 40:02d}/module_{i:05d}.txt" for i in range(files)]
    contents = [[line() for _ in range(LINES_PER_FILE)] for _ in range(files)]

    def data(payload: bytes) -> bytes:
        return b"data %d\n%s\n" % (len(payload), payload)

    for number in range(commits):
        if number == 0:
            changed = list(range(files))
            message = "initial import\n"
        else:
            changed = sorted({rng.randrange(files) for _ in range(EDITS_PER_COMMIT)})
            for index in changed:
                contents[index][rng.randrange(LINES_PER_FILE)] = line()
            message = f"change {number}: edit {len(changed)} files\n"
        when = f"{BASE_TIME + number * 60} +0000"
        parts = [
            b"commit refs/heads/main\n",
            f"author {PERSON} {when}\n".encode(),
            f"committer {PERSON} {when}\n".encode(),
            data(message.encode()),
        ]
        for index in changed:
            parts.append(f"M 100644 inline {paths[index]}\n".encode())
            parts.append(data("".join(contents[index]).encode()))
        parts.append(b"\n")
        yield b"".join(parts)


def generate_repo(git: GitClient, path: Path, commits: int, files: int) -> SourceRepo:
    """A bare repository made by fast-import from the generated stream, then repacked."""
    git.run("init", "-q", "--bare", str(path))
    start = time.perf_counter()
    stream_path = path.parent / "fast-import.stream"
    stream_bytes = 0
    with open(stream_path, "wb") as stream:
        for chunk in fast_import_stream(commits, files):
            stream.write(chunk)
            stream_bytes += len(chunk)
        stream.write(b"done\n")
    try:
        with open(stream_path, "rb") as stream:
            git.run("fast-import", "--quiet", "--done", cwd=path, stdin=stream)
    finally:
        stream_path.unlink()
    import_s = time.perf_counter() - start
    start = time.perf_counter()
    git.run("repack", "-a", "-d", "-f", "-q", "--window=10", "--depth=50", cwd=path)
    repack_s = time.perf_counter() - start
    counts = dict(
        line.split(": ", 1) for line in git.out("count-objects", "-v", cwd=path).splitlines()
    )
    tree_bytes = sum(
        int(line.split()[3])
        for line in git.out("ls-tree", "-r", "-l", "main", cwd=path).splitlines()
    )
    return SourceRepo(
        path=path,
        head=git.out("rev-parse", "main", cwd=path),
        commits=commits,
        files=files,
        objects=int(counts["in-pack"]),
        pack_bytes=sum(p.stat().st_size for p in (path / "objects" / "pack").glob("*.pack")),
        tree_bytes=tree_bytes,
        stream_bytes=stream_bytes,
        import_s=import_s,
        repack_s=repack_s,
    )


# --------------------------------------------------------------------------
# PostgreSQL and the relay subprocess
# --------------------------------------------------------------------------


@dataclass
class RelayProcess:
    port: int
    data_dir: Path
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)


@contextlib.contextmanager
def relay_process(
    database_url: str, work: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[RelayProcess]:
    """The relay on a free port, its data and scratch directories in `work` (a second relay
    on the same `work` and database serves what the first one stored); `extra_env` adds or
    overrides settings."""
    port = free_port()
    data_dir = work / "relay-data"
    scratch = work / "relay-scratch"
    scratch.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "RELAY_BIND": "127.0.0.1",
        "RELAY_PORT": str(port),
        "RELAY_PUBLIC_URL": f"ws://127.0.0.1:{port}",
        "RELAY_HOSTS": "127.0.0.1,localhost",
        "RELAY_DATABASE_URL": database_url,
        "RELAY_DATA_DIR": str(data_dir),
        "RELAY_GIT_PROBE": "off",
        "RELAY_GIT_SCRATCH_DIR": str(scratch),
        "RELAY_LOG_LEVEL": "warning",
        **(extra_env or {}),
    }
    relay = RelayProcess(port=port, data_dir=data_dir, log_path=work / "relay.log")
    with spawned_relay(
        [sys.executable, "-m", "relay.cli", "serve"], env, port, relay.log_path,
        error=BenchError, stop_timeout=RELAY_STOP_TIMEOUT,
    ):  # fmt: skip
        yield relay


def announcement(port: int, key: PrivateKey, repo: str) -> Event:
    """A signed kind 30617 of `repo` whose clone tag lists the relay's URL of the
    repository, so the relay hosts it (GRASP-01)."""
    clone = f"http://127.0.0.1:{port}/git/{pubkey_hex(key)}/{repo}.git"
    tags = [["d", repo], ["clone", clone]]
    return sign_event(key, kind=kinds.REPO_ANNOUNCEMENT, tags=tags, created_at=int(time.time()))


async def _announce(port: int, key: PrivateKey, repo: str) -> None:
    event = announcement(port, key, repo)
    with trio.fail_after(ANNOUNCE_TIMEOUT):
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
            await ws.send_message(orjson.dumps(["EVENT", event.to_dict()]).decode())
            while True:
                frame = orjson.loads(await ws.get_message())
                if frame[0] == "OK" and frame[1] == event.id:
                    if frame[2] is not True:
                        raise BenchError(f"the relay refused the announcement: {frame}")
                    return


def announce(port: int, key: PrivateKey, repo: str) -> None:
    """Publish a kind 30617 announcement of `repo` over a websocket and wait for its OK."""
    try:
        trio.run(_announce, port, key, repo)
    except trio.TooSlowError:
        raise BenchError(f"no OK for the announcement within {ANNOUNCE_TIMEOUT} s") from None
    except (OSError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed) as exc:
        raise BenchError(f"cannot announce {repo}: {type(exc).__name__}: {exc}") from None


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------
# git http-backend behind a CGI-to-HTTP bridge
# --------------------------------------------------------------------------


class BridgeServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, project_root: Path, error_log: IO[bytes], timeout: float) -> None:
        super().__init__(("127.0.0.1", 0), CgiBridgeHandler)
        self.project_root = project_root
        self.error_log = error_log
        self.git_timeout = timeout


def _copy_body(source: IO[bytes], sink: IO[bytes], length: int | None, chunked: bool) -> None:
    """Copy a request body (Content-Length, chunked or none) to the CGI's stdin, then close it."""
    try:
        if chunked:
            while True:
                size_line = source.readline(1024)
                if not size_line:
                    break
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while source.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                remaining = size
                while remaining:
                    data = source.read(min(remaining, CGI_WRITE_CHUNK))
                    if not data:
                        return
                    sink.write(data)
                    remaining -= len(data)
                source.readline(1024)  # CRLF after the chunk
        elif length:
            remaining = length
            while remaining:
                data = source.read(min(remaining, CGI_WRITE_CHUNK))
                if not data:
                    return
                sink.write(data)
                remaining -= len(data)
    except (BrokenPipeError, ValueError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.close()


class CgiBridgeHandler(http.server.BaseHTTPRequestHandler):
    """Runs `git http-backend` as a CGI for each request; one request per connection."""

    protocol_version = "HTTP/1.1"  # so that `Expect: 100-continue` is answered

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _cgi(self) -> None:
        server = cast(BridgeServer, self.server)
        self.close_connection = True
        path, _, query = self.path.partition("?")
        length_header = self.headers.get("Content-Length")
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(server.project_root),
            "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_PROJECT_ROOT": str(server.project_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_SOFTWARE": "bench-cgi-bridge",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": unquote(path),
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "REMOTE_USER": "bench",
            "REMOTE_ADDR": self.client_address[0],
        }
        if length_header is not None and not chunked:
            env["CONTENT_LENGTH"] = length_header
        for header, variable in (
            ("Content-Encoding", "HTTP_CONTENT_ENCODING"),
            ("Git-Protocol", "HTTP_GIT_PROTOCOL"),
        ):
            value = self.headers.get(header)
            if value:
                env[variable] = value
        if "HTTP_GIT_PROTOCOL" in env:
            # What git's docs ask of a web server (Apache: `SetEnvIf Git-Protocol ".*"
            # GIT_PROTOCOL=$0`); git >= 2.34 also reads HTTP_GIT_PROTOCOL itself.
            env["GIT_PROTOCOL"] = env["HTTP_GIT_PROTOCOL"]
        process = subprocess.Popen(
            ["git", "http-backend"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=server.error_log,
        )
        assert process.stdin is not None and process.stdout is not None
        feeder = threading.Thread(
            target=_copy_body,
            args=(
                self.rfile,
                process.stdin,
                int(length_header) if length_header and not chunked else None,
                chunked,
            ),
            daemon=True,
        )
        feeder.start()
        try:
            status, headers = 200, []
            while True:
                raw = process.stdout.readline(8192)
                if raw in (b"\r\n", b"\n", b""):
                    break
                name, _, value = raw.decode("latin-1").rstrip("\r\n").partition(":")
                if name.lower() == "status":
                    status = int(value.strip().split()[0])
                else:
                    headers.append((name, value.strip()))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Connection", "close")
            self.end_headers()
            output = cast(io.BufferedReader, process.stdout)
            while chunk := output.read1(CGI_WRITE_CHUNK):
                self.wfile.write(chunk)
            process.wait(timeout=server.git_timeout)
            feeder.join(timeout=server.git_timeout)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()


@contextlib.contextmanager
def http_backend(project_root: Path, error_log: Path, timeout: float) -> Iterator[int]:
    """The bridge on a free loopback port, served from a thread; yields the port."""
    with open(error_log, "wb") as log:
        server = BridgeServer(project_root, log, timeout)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
        thread.start()
        try:
            yield int(server.server_address[1])
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=RELAY_STOP_TIMEOUT)


def serve_options_config() -> list[tuple[str, str]]:
    """The relay's `-c key=value` git options, as (key, value) pairs."""
    pairs = []
    for option in SERVE_OPTIONS[1::2]:
        key, _, value = option.partition("=")
        pairs.append((key, value))
    return pairs


# --------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------


@dataclass
class Results:
    times: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {t: {s: [] for s in STEPS} for t in TARGETS}
    )
    relay_stored_bytes: int | None = None
    backend_repo_bytes: int | None = None
    partial_clone_objects: dict[str, int] = field(default_factory=dict)


def one_commit_on_top(git: GitClient, clone: Path) -> None:
    """The same new commit in every clone: one line appended to one file, fixed dates."""
    target = clone / "src" / "pkg00" / "module_00000.txt"
    with open(target, "a") as handle:
        handle.write("one more line for the second push\n")
    when = f"{BASE_TIME + 10**8} +0000"
    git.run(
        "commit", "-q", "-a", "-m", "second push",
        cwd=clone, env={"GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when},
    )  # fmt: skip


def negotiated_protocol(git: GitClient, url: str, version: int) -> int:
    """The protocol version a server answers `ls-remote` with when asked for `version`."""
    result = git.run(
        "ls-remote", url, "HEAD",
        config=[f"protocol.version={version}"], env={"GIT_TRACE_PACKET": "1"},
    )  # fmt: skip
    trace = result.stderr.decode("utf-8", "replace").splitlines()
    return 2 if any(line.endswith("< version 2") for line in trace) else 0


def object_count(git: GitClient, repo: Path) -> int:
    counts = dict(
        line.split(": ", 1) for line in git.out("count-objects", "-v", cwd=repo).splitlines()
    )
    return int(counts["count"]) + int(counts["in-pack"])


def measure_run(
    run: int,
    git: GitClient,
    source: SourceRepo,
    work: Path,
    relay: RelayProcess,
    key: PrivateKey,
    backend_port: int,
    backend_root: Path,
    results: Results,
    log: Callable[[str], None],
) -> None:
    owner = key.public_key_xonly.format().hex()
    for target in TARGETS:
        if target == "relay":
            name = f"bench-{run}"
            announce(relay.port, key, name)
            url = f"http://127.0.0.1:{relay.port}/git/{owner}/{name}.git"
        else:
            name = f"bench-{run}"
            bare = backend_root / f"{name}.git"
            git.run("init", "-q", "--bare", str(bare))
            for option, value in [*serve_options_config(), ("http.receivepack", "true")]:
                git.run("config", option, value, cwd=bare)
            url = f"http://127.0.0.1:{backend_port}/{name}.git"

        def auth(url: str = url, target: str = target) -> str | None:
            return make_token(key, url) if target == "relay" else None

        times = results.times[target]
        push_s = git.timed("push", "-q", url, "main:main", cwd=source.path, auth=auth())
        times["push"].append(push_s)
        if run == 0:
            # Untimed: the server answers each protocol version in that version.
            for version in (0, 2):
                answered = negotiated_protocol(git, url, version)
                if answered != version:
                    raise BenchError(f"{target} answered protocol v{answered} to v{version}")
        clones: dict[str, Path] = {}
        for step, (version, extra) in CLONES.items():
            clone = work / f"{step}-{target}-{run}"
            clone_s = git.timed(
                "clone", "-q", *extra, url, str(clone), config=[f"protocol.version={version}"]
            )
            times[step].append(clone_s)
            clones[step] = clone
            head = git.out("rev-parse", "HEAD", cwd=clone)
            if head != source.head:
                raise BenchError(
                    f"{target} {step}: the clone's HEAD is {head}, expected {source.head}"
                )
        # The partial clone holds less than everything (the server honoured the filter).
        partial = object_count(git, clones["clone_v2_blob_none"])
        if partial >= source.objects:
            raise BenchError(f"{target}: the blob:none clone holds all {partial} objects")
        if run == 0:
            results.partial_clone_objects[target] = partial
        clone = clones["clone"]
        one_commit_on_top(git, clone)
        again_s = git.timed("push", "-q", "origin", "main", cwd=clone, auth=auth())
        times["push_one_commit"].append(again_s)
        pushed = git.out("rev-parse", "HEAD", cwd=clone)
        served = git.out("ls-remote", "origin", "refs/heads/main", cwd=clone).split("\t")[0]
        if served != pushed:
            raise BenchError(f"{target}: main is {served} after the second push, not {pushed}")
        if run == 0 and target == "relay":
            results.relay_stored_bytes = directory_bytes(relay.data_dir / "objects")
        if run == 0 and target == "http_backend":
            results.backend_repo_bytes = directory_bytes(backend_root / f"{name}.git" / "objects")
        for path in clones.values():
            shutil.rmtree(path, ignore_errors=True)
        log(
            f"run {run + 1} {target}: "
            + "; ".join(f"{STEP_LABELS[step]} {times[step][-1]:.2f} s" for step in STEPS)
        )


def summarize(values: Sequence[float]) -> dict[str, float]:
    return {
        "median_s": round(statistics.median(values), 3),
        "min_s": round(min(values), 3),
        "max_s": round(max(values), 3),
    }


def make_report(
    args: argparse.Namespace,
    source: SourceRepo,
    results: Results,
    git_version: str,
    load: dict[str, list[float]],
) -> dict[str, Any]:
    steps: dict[str, Any] = {}
    for step in STEPS:
        relay = results.times["relay"][step]
        backend = results.times["http_backend"][step]
        entry: dict[str, Any] = {
            "label": STEP_LABELS[step],
            "relay": summarize(relay) | {"runs_s": [round(v, 3) for v in relay]},
            "http_backend": summarize(backend) | {"runs_s": [round(v, 3) for v in backend]},
        }
        entry["ratio_relay_over_http_backend"] = round(
            statistics.median(relay) / statistics.median(backend), 2
        )
        steps[step] = entry
    return {
        "benchmark": "git_clone_push",
        "git": git_version,
        "runs": args.runs,
        "load_average": load,
        "repository": {
            "commits": source.commits,
            "files": source.files,
            "objects": source.objects,
            "pack_bytes": source.pack_bytes,
            "worktree_bytes": source.tree_bytes,
            "fast_import_stream_bytes": source.stream_bytes,
            "head": source.head,
            "fast_import_s": round(source.import_s, 2),
            "repack_s": round(source.repack_s, 2),
        },
        "relay_object_store_bytes_after_run_1": results.relay_stored_bytes,
        "http_backend_objects_bytes_after_run_1": results.backend_repo_bytes,
        "blob_none_clone_objects_run_1": results.partial_clone_objects,
        "steps": steps,
    }


def report_lines(report: dict[str, Any]) -> list[str]:
    repo = report["repository"]
    lines = [
        f"repository: {repo['commits']} commits, {repo['files']} files, {repo['objects']} "
        f"objects, pack {repo['pack_bytes'] / 1e6:.1f} MB, worktree "
        f"{repo['worktree_bytes'] / 1e6:.1f} MB (fast-import {repo['fast_import_s']} s, "
        f"repack {repo['repack_s']} s)",
        f"load average (1, 5, 15 min) at the start {report['load_average']['start']}, "
        f"at the end {report['load_average']['end']}",
        f"medians of {report['runs']} runs ({report['git']}):",
    ]
    for entry in report["steps"].values():
        lines.append(
            f"  {entry['label']:21s} relay {entry['relay']['median_s']:7.2f} s   "
            f"http-backend {entry['http_backend']['median_s']:7.2f} s   "
            f"ratio {entry['ratio_relay_over_http_backend']:.2f}x"
        )
    return lines


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.git_clone_push",
        description="Push and clone a generated repository through the relay and through "
        "git http-backend (loopback only).",
    )
    add_repository_options(parser)
    parser.add_argument(
        "--runs", type=bounded(1, MAX_RUNS), default=DEFAULT_RUNS,
        help=f"measured runs; medians are reported (default {DEFAULT_RUNS})",
    )  # fmt: skip
    parser.add_argument(
        "--json", action="store_true",
        help="print a JSON object on stdout (progress and the summary go to stderr)",
    )  # fmt: skip
    return parser


def add_repository_options(parser: argparse.ArgumentParser) -> None:
    """--commits and --files of the generated repository, and --timeout of git commands."""
    parser.add_argument(
        "--commits", type=bounded(2, MAX_COMMITS), default=DEFAULT_COMMITS,
        help=f"commits in the generated repository (default {DEFAULT_COMMITS})",
    )  # fmt: skip
    parser.add_argument(
        "--files", type=bounded(EDITS_PER_COMMIT, MAX_FILES), default=DEFAULT_FILES,
        help=f"files in the generated repository (default {DEFAULT_FILES})",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=positive_float, default=DEFAULT_TIMEOUT,
        help=f"time limit of each git command in seconds (default {DEFAULT_TIMEOUT:.0f})",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    def log(message: str) -> None:
        print(message, file=sys.stderr if args.json else sys.stdout, flush=True)

    load = {"start": [round(v, 2) for v in os.getloadavg()]}
    work = Path(tempfile.mkdtemp(prefix="bench-git-"))
    try:
        log(f"load average (1, 5, 15 min): {load['start']}")
        git = GitClient(work / "home", args.timeout)
        git_version = git.out("--version")
        log(f"generating {args.commits} commits over {args.files} files in {work} ...")
        source = generate_repo(git, work / "source.git", args.commits, args.files)
        log(
            f"source: {source.objects} objects, pack {source.pack_bytes / 1e6:.1f} MB "
            f"(fast-import {source.import_s:.1f} s, repack {source.repack_s:.1f} s)"
        )
        backend_root = work / "backend"
        backend_root.mkdir()
        results = Results()
        key = PrivateKey()
        with (
            fresh_database("relay_bench_git", BenchError) as database_url,
            relay_process(database_url, work) as relay,
            http_backend(backend_root, work / "http-backend.log", args.timeout) as port,
        ):
            log(f"relay on 127.0.0.1:{relay.port}, http-backend bridge on 127.0.0.1:{port}")
            try:
                for number in range(args.runs):
                    measure_run(
                        number, git, source, work, relay, key, port, backend_root, results, log
                    )
            except BenchError as exc:
                tail = relay.log_tail()
                raise BenchError(f"{exc}\nrelay log (last lines):\n{tail}") from exc
        backend_errors = (work / "http-backend.log").read_text(errors="replace").strip()
        if backend_errors:
            log("git http-backend wrote to stderr:\n" + backend_errors[-2000:])
        load["end"] = [round(v, 2) for v in os.getloadavg()]
        report = make_report(args, source, results, git_version, load)
        lines = report_lines(report)
        for line in lines:
            log(line)
        if args.json:
            print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
