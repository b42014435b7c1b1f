"""Web pages: how long the relay takes to answer a repository's page and the relay page.

    python -m bench.web_pages [--commits 10000] [--files 1000] [--runs 20] [--repos 1000] \
        [--timeout 900] [--json]

1. Generates the repository of `bench.git_clone_push` (same generator, same defaults:
   10,000 commits over 1,000 files, about 90,300 objects in one delta-compressed pack),
   then commits a README.md (~6 kB of Markdown, fixed dates) on top, so the page renders
   a README like a real one (one more `git cat-file` and the Markdown renderer).
2. Creates a fresh database `relay_bench_web_<random>` and starts relay A (as
   `git_clone_push` starts it, on a free 127.0.0.1 port) with the pack cache off
   (`RELAY_GIT_PACK_CACHE_BYTES=0`). Announces the repository and an empty one (the
   warm-up repository), and pushes the repository with stock git (NIP-98 token).
3. On relay A, with `Accept: text/html` and the Host `127.0.0.1:<port>` (a host the relay
   serves): one warm-up request each of `/` and the empty repository's page (compiles the
   templates), then `--runs` views of the repository's page `/<npub>/<repo>.git`. Every
   view hydrates the repository from the object store (every pack read and
   sha256-checked): the row `repo page, pack cache off`.
4. Stops relay A and starts relay B on the same database and object store with the
   default pack cache (1 GiB). Its cache is empty (relay A had none), so after the same
   warm-up:
   - `repo page, cold`: the first view downloads the packs from the object store into the
     cache (the bench checks that the cache directory holds packs afterwards);
   - `repo page, warm`: `--runs` more views, each a pack cache hit (packs hard-linked);
   - `repo page, 304`: `--runs` views with `If-None-Match` set to the last ETag. The relay
     still hydrates, runs git and renders (the ETag is the hash of the page), then
     answers 304 without the body: this saves bytes on the wire, not relay work;
   - `relay page, 2 repos`: `--runs` views of `/` (the repository and the empty one);
   - then announces `--repos` more repositories over one websocket (each its own key:
     the relay allows 100 per key; no push) and `relay page, N repos`: `--runs` views of
     `/` (its first page of 50, and the count), and of its last page.
5. Reports, for each row, p50 / p90 / max milliseconds (client wall time of one GET,
   keep-alive connection, body read), the body size, and the relay's CPU per request:
   the relay process (`/proc/<pid>/stat` utime+stime) and the git processes it ran
   (cutime+cstime, counted when the relay reaps them). Also, for where the time goes:
   the same five git commands a page runs (`for-each-ref` twice, `log -n 20`,
   `ls-tree HEAD`, `cat-file` of the README), run `--runs` times by the bench on the
   generated repository itself (their median sum): the git part of a page, without
   hydration, Postgres, rendering or HTTP.

Reading it: the warm row is what a visitor sees on a pod that has served the repository
before (the usual case); the cache-off row is a pod without the cache, and the cold row
a pod's first view after a restart or an eviction. The difference between warm and
git-only is hydration, the Postgres reads (the repository and its NIP-34 threads) and
rendering.

Safety: loopback only; every git command, HTTP request and websocket wait has a timeout;
the numbers are bounded; the relays, the temporary directory and the database are removed
in `finally` blocks. Exit status 0, or 2 with the error.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio
import trio_websocket
from coincurve import PrivateKey

from bench.common import (
    admin,
    bounded,
    cpu_seconds,
    fresh_database,
    listening_pid,
)
from bench.git_clone_push import (
    BASE_TIME,
    BenchError,
    GitClient,
    RelayProcess,
    SourceRepo,
    add_repository_options,
    announce,
    announcement,
    generate_repo,
    object_count,
    relay_process,
)
from relay.git.nip98 import make_token
from relay.protocol.bech32 import hex_to_npub

DEFAULT_RUNS = 20
MAX_RUNS = 1000
DEFAULT_REPOS = 1000
MAX_REPOS = 10_000
REQUEST_TIMEOUT = 120.0
ANNOUNCE_ALL_TIMEOUT = 600.0
REPO = "web-bench"
EMPTY_REPO = "web-bench-empty"
PACK_CACHE_DIR = "relay-pack-cache"  # relay.app.PACK_CACHE_DIR, under the scratch dir
REPOS_PER_PAGE = 50  # relay.web.pages.REPOS_PER_PAGE


# --------------------------------------------------------------------------
# The repository: git_clone_push's, with a README on top
# --------------------------------------------------------------------------


def readme_text() -> str:
    """About 6 kB of Markdown: headings, paragraphs, lists, code, a table, links."""
    parts = ["# web-bench\n\nA generated repository for `bench.web_pages`.\n"]
    for section in range(12):
        parts.append(f"\n## Section {section}\n\n")
        parts.append(
            f"Paragraph {section} with *emphasis*, **strong text**, `inline code` and a "
            f"[link](https://example.invalid/{section}). " * 2 + "\n\n"
        )
        parts.append("".join(f"- item {section}.{i}: `src/pkg{i:02d}`\n" for i in range(4)))
        parts.append(f"\n```python\ndef section_{section}():\n    return {section}\n```\n")
    parts.append("\n| column | value |\n| --- | ---: |\n")
    parts.append("".join(f"| row {i} | {i * i} |\n" for i in range(10)))
    return "".join(parts)


def add_readme(git: GitClient, source: SourceRepo) -> SourceRepo:
    """Commit README.md at the top of `main` (plumbing only, fixed dates)."""
    repo = source.path
    index = repo / "readme.index"
    env = {"GIT_INDEX_FILE": str(index)}
    readme = repo / "README.md.tmp"
    readme.write_text(readme_text())
    try:
        blob = git.out("hash-object", "-w", str(readme), cwd=repo)
        git.run("read-tree", "main", cwd=repo, env=env)
        git.run("update-index", "--add", "--cacheinfo", f"100644,{blob},README.md",
                cwd=repo, env=env)  # fmt: skip
        tree = git.run("write-tree", cwd=repo, env=env).stdout.decode().strip()
    finally:
        readme.unlink()
        index.unlink(missing_ok=True)
    when = f"{BASE_TIME + source.commits * 60} +0000"
    commit = git.run(
        "commit-tree", tree, "-p", "main", "-m", "add a README",
        cwd=repo, env={"GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when},
    ).stdout.decode().strip()  # fmt: skip
    git.run("update-ref", "refs/heads/main", commit, cwd=repo)
    return dataclasses.replace(
        source, head=commit, commits=source.commits + 1, objects=object_count(git, repo)
    )


def page_git_seconds(git: GitClient, repo: Path, runs: int) -> float:
    """Median wall time of the git commands a repository page runs (gitview.read_view),
    run by the bench on `repo` itself."""
    ref_format = "--format=%(refname)%00%(objectname)%00%(creatordate:unix)%00%(subject)"
    readme = git.out("rev-parse", "HEAD:README.md", cwd=repo)
    commands = [
        ["for-each-ref", "--sort=-creatordate", "--count=50", ref_format, "refs/heads/"],
        ["for-each-ref", "--sort=-creatordate", "--count=50", ref_format, "refs/tags/"],
        ["log", "--max-count=20", "--format=%H%x00%an%x00%at%x00%s", "HEAD", "--"],
        ["ls-tree", "-z", "--long", "HEAD"],
        ["cat-file", "blob", readme],
    ]
    totals = []
    for _ in range(runs):
        start = time.perf_counter()
        for command in commands:
            git.run(*command, cwd=repo)
        totals.append(time.perf_counter() - start)
    return statistics.median(totals)


# --------------------------------------------------------------------------
# Requests and measurements
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetch:
    status: int
    seconds: float
    body_bytes: int
    etag: str
    body: str


@dataclass
class Row:
    label: str
    fetches: list[Fetch]
    relay_cpu_s: float  # the relay process, over the row
    git_cpu_s: float  # the git processes it reaped, over the row

    def summary(self) -> dict[str, Any]:
        ms = sorted(f.seconds * 1000 for f in self.fetches)
        count = len(ms)
        return {
            "label": self.label,
            "requests": count,
            "p50_ms": round(statistics.median(ms), 1),
            "p90_ms": round(ms[math.ceil(0.9 * count) - 1], 1),  # nearest rank
            "max_ms": round(ms[-1], 1),
            "status": sorted({f.status for f in self.fetches}),
            "body_bytes": self.fetches[-1].body_bytes,
            "relay_cpu_ms_per_request": round(self.relay_cpu_s * 1000 / count, 1),
            "git_cpu_ms_per_request": round(self.git_cpu_s * 1000 / count, 1),
        }


def relay_cpu(pid: int) -> tuple[float, float]:
    """(the process's own CPU seconds, its reaped children's) from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    children = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    return cpu_seconds(pid), children


class Browser:
    """Sync httpx on one keep-alive connection to the relay, asking for HTML."""

    def __init__(self, relay: RelayProcess) -> None:
        self.client = httpx.Client(
            base_url=f"http://127.0.0.1:{relay.port}",
            headers={"Accept": "text/html"},
            timeout=REQUEST_TIMEOUT,
        )
        pid = listening_pid(relay.port)
        if pid is None:
            raise BenchError(f"no process listens on 127.0.0.1:{relay.port}")
        self.pid = pid

    def close(self) -> None:
        self.client.close()

    def get(self, path: str, etag: str | None = None) -> Fetch:
        headers = {"If-None-Match": etag} if etag else {}
        start = time.perf_counter()
        try:
            response = self.client.get(path, headers=headers)
        except httpx.HTTPError as exc:
            raise BenchError(f"GET {path}: {type(exc).__name__}: {exc}") from None
        seconds = time.perf_counter() - start
        return Fetch(
            response.status_code,
            seconds,
            len(response.content),
            response.headers.get("etag", ""),
            response.text,
        )

    def row(
        self,
        label: str,
        path: str,
        runs: int,
        expect: int = 200,
        etag: Callable[[], str | None] = lambda: None,
    ) -> Row:
        before = relay_cpu(self.pid)
        fetches = []
        for _ in range(runs):
            fetch = self.get(path, etag())
            if fetch.status != expect:
                raise BenchError(f"{label}: GET {path} answered {fetch.status}, not {expect}")
            fetches.append(fetch)
        after = relay_cpu(self.pid)
        return Row(label, fetches, after[0] - before[0], after[1] - before[1])


async def _announce_many(port: int, count: int) -> None:
    events = [announcement(port, PrivateKey(), f"listed-{i:05d}") for i in range(count)]
    waiting = {event.id for event in events}
    with trio.fail_after(ANNOUNCE_ALL_TIMEOUT):
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
            for event in events:
                await ws.send_message(orjson.dumps(["EVENT", event.to_dict()]).decode())
            while waiting:
                frame = orjson.loads(await ws.get_message())
                if frame[0] == "OK" and frame[1] in waiting:
                    if frame[2] is not True:
                        raise BenchError(f"the relay refused an announcement: {frame}")
                    waiting.discard(frame[1])


def announce_many(port: int, count: int) -> float:
    """Announce `count` repositories (a new key each) over one websocket; the seconds."""
    start = time.perf_counter()
    try:
        trio.run(_announce_many, port, count)
    except trio.TooSlowError:
        raise BenchError(f"{count} announcements took over {ANNOUNCE_ALL_TIMEOUT} s") from None
    except (OSError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed) as exc:
        raise BenchError(f"cannot announce: {type(exc).__name__}: {exc}") from None
    return time.perf_counter() - start


def warm_up(browser: Browser, empty_path: str) -> None:
    """Compile the relay page's and the repository page's templates (the empty repository
    has no packs: its page touches no pack cache)."""
    for path in ("/", empty_path):
        fetch = browser.get(path)
        if fetch.status != 200:
            raise BenchError(f"warm-up: GET {path} answered {fetch.status}")


def cached_packs(work: Path) -> int:
    return len(list((work / "relay-scratch" / PACK_CACHE_DIR).glob("*.pack")))


def measure(
    args: argparse.Namespace,
    git: GitClient,
    source: SourceRepo,
    work: Path,
    log: Callable[[str], None],
) -> tuple[list[Row], dict[str, Any]]:
    key = PrivateKey()
    npub = hex_to_npub(key.public_key_xonly.format().hex())
    path, empty_path = f"/{npub}/{REPO}.git", f"/{npub}/{EMPTY_REPO}.git"
    rows: list[Row] = []
    extra: dict[str, Any] = {}

    def check_page(row: Row) -> None:
        if source.head[:12] not in row.fetches[-1].body:
            raise BenchError(f"{row.label}: the page does not show the head {source.head[:12]}")

    with fresh_database("relay_bench_web", BenchError) as database_url:
        with relay_process(database_url, work, {"RELAY_GIT_PACK_CACHE_BYTES": "0"}) as relay:
            log(f"relay A (pack cache off) on 127.0.0.1:{relay.port}")
            for name in (REPO, EMPTY_REPO):
                announce(relay.port, key, name)
            url = f"http://127.0.0.1:{relay.port}{path}"
            push_s = git.timed(
                "push", "-q", url, "main:main", cwd=source.path, auth=make_token(key, url)
            )
            extra["push_s"] = round(push_s, 2)
            log(f"pushed in {push_s:.2f} s")
            browser = Browser(relay)
            try:
                warm_up(browser, empty_path)
                rows.append(browser.row("repo page, pack cache off", path, args.runs))
                check_page(rows[-1])
            finally:
                browser.close()
        if cached_packs(work):
            raise BenchError("relay A, with the pack cache off, cached packs")
        with relay_process(database_url, work) as relay:
            log(f"relay B (pack cache on, empty) on 127.0.0.1:{relay.port}")
            browser = Browser(relay)
            try:
                warm_up(browser, empty_path)
                rows.append(browser.row("repo page, cold (cache miss)", path, 1))
                check_page(rows[-1])
                if not cached_packs(work):
                    raise BenchError("the first view on relay B left no pack in the cache")
                rows.append(browser.row("repo page, warm (cache hit)", path, args.runs))
                check_page(rows[-1])
                last = rows[-1].fetches[-1].etag
                rows.append(browser.row("repo page, 304", path, args.runs, 304, lambda: last))
                rows.append(browser.row("relay page, 2 repos", "/", args.runs))
                if args.repos:
                    announce_s = announce_many(relay.port, args.repos)
                    extra["announce_s"] = round(announce_s, 2)
                    log(f"announced {args.repos} repositories in {announce_s:.1f} s")
                    # What autovacuum does within a minute of a bulk load: without table
                    # statistics the planner takes 2,000 rows for one, and the listing's
                    # join reads every 30618 of the relay's key for each repository.
                    admin("ANALYZE", database_url)
                    total = args.repos + 2
                    label = f"relay page, {total:,} repos"
                    rows.append(browser.row(label, "/", args.runs))
                    if f">{total}<" not in rows[-1].fetches[-1].body:
                        raise BenchError(f"{label}: the page does not count {total} repos")
                    pages = -(-total // REPOS_PER_PAGE)
                    rows.append(browser.row(f"{label}, page {pages}", f"/?page={pages}", args.runs))
            finally:
                browser.close()
    return rows, extra


# --------------------------------------------------------------------------
# Report and command line
# --------------------------------------------------------------------------


def report_lines(report: dict[str, Any]) -> list[str]:
    repo = report["repository"]
    lines = [
        f"repository: {repo['commits']} commits, {repo['objects']} objects, pack "
        f"{repo['pack_bytes'] / 1e6:.1f} MB, relay object store {repo['stored_bytes'] / 1e6:.1f}"
        f" MB (push {report['push_s']} s)",
        f"load average (1, 5, 15 min) at the start {report['load_average']['start']}, "
        f"at the end {report['load_average']['end']}",
        f"{'':34s} {'p50 ms':>8s} {'p90 ms':>8s} {'max ms':>8s} {'n':>4s} {'bytes':>8s}"
        f" {'relay CPU':>10s} {'git CPU':>8s}",
    ]
    for row in report["rows"]:
        lines.append(
            f"{row['label']:34s} {row['p50_ms']:8.1f} {row['p90_ms']:8.1f} {row['max_ms']:8.1f}"
            f" {row['requests']:4d} {row['body_bytes']:8d} {row['relay_cpu_ms_per_request']:8.1f}"
            f"ms {row['git_cpu_ms_per_request']:6.1f}ms"
        )
    lines.append(
        f"the page's git commands run by the bench on the repository itself: "
        f"{report['page_git_ms']:.1f} ms (median of {report['runs']})"
    )
    if "announce_s" in report:
        count, seconds = report["repos"], report["announce_s"]
        lines.append(f"{count} announcements over one websocket: {seconds} s")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.web_pages",
        description="Latency of the repository page and the relay page (loopback only).",
    )
    add_repository_options(parser)
    parser.add_argument(
        "--runs", type=bounded(1, MAX_RUNS), default=DEFAULT_RUNS,
        help=f"views per row (default {DEFAULT_RUNS})",
    )  # fmt: skip
    parser.add_argument(
        "--repos", type=bounded(0, MAX_REPOS), default=DEFAULT_REPOS,
        help=f"repositories announced for the second relay page row (default {DEFAULT_REPOS})",
    )  # fmt: skip
    parser.add_argument(
        "--json", action="store_true",
        help="print a JSON object on stdout (progress and the table go to stderr)",
    )  # fmt: skip
    return parser


def run(args: argparse.Namespace) -> int:
    def log(message: str) -> None:
        print(message, file=sys.stderr if args.json else sys.stdout, flush=True)

    load = {"start": [round(v, 2) for v in os.getloadavg()]}
    work = Path(tempfile.mkdtemp(prefix="bench-web-"))
    try:
        log(f"load average (1, 5, 15 min): {load['start']}")
        git = GitClient(work / "home", args.timeout)
        log(f"generating {args.commits} commits over {args.files} files in {work} ...")
        source = add_readme(git, generate_repo(git, work / "source.git", args.commits, args.files))
        log(f"source: {source.objects} objects, pack {source.pack_bytes / 1e6:.1f} MB")
        try:
            rows, extra = measure(args, git, source, work, log)
        except BenchError as exc:
            tail = (work / "relay.log").read_text(errors="replace").splitlines()[-20:]
            raise BenchError(f"{exc}\nrelay log (last lines):\n" + "\n".join(tail)) from exc
        stored = sum(p.stat().st_size for p in (work / "relay-data").rglob("*") if p.is_file())
        load["end"] = [round(v, 2) for v in os.getloadavg()]
        report = {
            "benchmark": "web_pages",
            "git": git.out("--version"),
            "runs": args.runs,
            "repos": args.repos,
            "load_average": load,
            "repository": {
                "commits": source.commits,
                "files": source.files,
                "objects": source.objects,
                "pack_bytes": source.pack_bytes,
                "stored_bytes": stored,
                "head": source.head,
            },
            "page_git_ms": round(page_git_seconds(git, source.path, args.runs) * 1000, 1),
            "rows": [row.summary() for row in rows],
            **extra,
        }
        for line in report_lines(report):
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
