"""Ephemeral bare repositories hydrated from the object store, and the git subprocesses.

No git state lives on the pod beyond a request: each request reads the pointer once,
fetches and verifies the manifest, downloads every pack (by digest) with its idx (or
rebuilds it with `git index-pack`), and only then writes refs and HEAD, so a failed
hydration never advertises refs whose objects are missing. The directory is removed when
the request ends, however it ends.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from relay.git import model
from relay.git.objectstore import GitObjects
from relay.git.packcache import PackCache

log = logging.getLogger(__name__)

# Options for every git command we run: nothing from the user's or the system's config.
SERVE_OPTIONS = (
    "-c", "uploadpack.allowTipSHA1InWant=true",
    "-c", "uploadpack.allowReachableSHA1InWant=true",
    # Partial clone (`--filter=blob:none`, `tree:0`, ...), and the branch HEAD names in an
    # empty repository told to protocol v2 clients (so their clone checks it out).
    "-c", "uploadpack.allowFilter=true",
    "-c", "lsrefs.unborn=advertise",
    "-c", "receive.fsckObjects=true",
    "-c", "core.logAllRefUpdates=false",
    "-c", "gc.auto=0",
)  # fmt: skip


class RepoNotFound(Exception):
    """The repo has no pointer: it was never announced or has been deleted."""


class ResourceLimit(Exception):
    """A size limit was exceeded (HTTP 413)."""


class GitFailed(Exception):
    """A git subprocess failed or timed out."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


@dataclass(frozen=True, slots=True)
class GitLimits:
    max_pack_bytes: int = 256 * 1024 * 1024
    max_repo_bytes: int = 1024 * 1024 * 1024
    timeout_seconds: float = 300.0


def git_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A cleared environment: no user or system git configuration reaches git."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
    }
    env.update(extra or {})
    return env


def _subcommand(args: Sequence[str]) -> str:
    """The git command's name, past `-c NAME=VALUE` and `--git-dir DIR`."""
    rest = iter(args)
    for arg in rest:
        if arg in ("-c", "--git-dir"):
            next(rest, None)
        elif not arg.startswith("-"):
            return arg
    return "?"


async def run_git(
    args: Sequence[str],
    *,
    home: Path,
    timeout: float,
    stdin: bytes | None = None,
    stdin_path: Path | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run git with a cleared environment and a timeout; the output is captured."""
    command = ["git", *SERVE_OPTIONS, *args]
    name = _subcommand(args)
    try:
        with trio.fail_after(timeout):
            if stdin_path is not None:
                with open(stdin_path, "rb") as handle:
                    result = await trio.run_process(
                        command, stdin=handle, capture_stdout=True, capture_stderr=True,
                        check=False, env=git_env(home, env), cwd=home,
                    )  # fmt: skip
            else:
                result = await trio.run_process(
                    command, stdin=stdin or b"", capture_stdout=True, capture_stderr=True,
                    check=False, env=git_env(home, env), cwd=home,
                )  # fmt: skip
    except trio.TooSlowError:
        raise GitFailed(f"git {name} took longer than {timeout} s", timed_out=True) from None
    if check and result.returncode != 0:
        stderr = result.stderr.decode("utf-8", "replace").strip()[-500:]
        raise GitFailed(f"git {name} exited {result.returncode}: {stderr}")
    return result


def _idx_matches(pack: bytes, idx: bytes) -> bool:
    """The idx's trailer names this pack and its own checksum is right (SHA-1 or SHA-256)."""
    for size, algorithm in ((20, "sha1"), (32, "sha256")):
        if len(idx) > 2 * size and len(pack) > size:
            if idx[-2 * size : -size] != pack[-size:]:
                continue
            if hashlib.new(algorithm, idx[:-size]).digest() == idx[-size:]:
                return True
    return False


@dataclass
class Workspace:
    path: Path
    manifest: model.Manifest
    # The pointer's revision token and manifest digest, as read once at hydrate time.
    token: str
    digest: str
    hydrated_bytes: int
    # The pack file names hydration put in objects/pack.
    installed: frozenset[str]

    @property
    def oid_width(self) -> int:
        widths = {len(oid) for oid in self.manifest.refs.values()}
        return widths.pop() if len(widths) == 1 else 40


async def _remove(path: Path) -> None:
    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(shutil.rmtree, path, True)


@asynccontextmanager
async def scratch_dir(root: Path) -> AsyncIterator[Path]:
    root.mkdir(parents=True, exist_ok=True)
    path = Path(await trio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="repo-", dir=root)))
    try:
        yield path
    finally:
        await _remove(path)


BARE_CONFIG = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n"


def init_bare(repo: Path) -> None:
    """What `git init --bare` makes that git needs (no templates, no sample hooks): the
    same repository, without starting a process."""
    for sub in ("objects/pack", "objects/info", "refs/heads", "refs/tags", "hooks"):
        (repo / sub).mkdir(parents=True, exist_ok=True)
    (repo / "config").write_text(BARE_CONFIG)
    (repo / "HEAD").write_text(f"ref: {model.DEFAULT_HEAD}\n")


async def _install_pack(
    objects: GitObjects, repo: Path, pack_key: str, limits: GitLimits, cache: PackCache | None
) -> int:
    digest = model.digest_of_key(pack_key)
    pack_path = repo / "objects" / "pack" / f"{model.pack_file_stem(pack_key)}.pack"
    if cache is not None:
        cached = await cache.link_into(digest, pack_path)
        if cached is not None:
            return cached
    data = await objects.get_verified(pack_key, limits.max_pack_bytes)
    await trio.to_thread.run_sync(pack_path.write_bytes, data)
    idx = await objects.get_idx(digest, limits.max_pack_bytes)
    if idx is not None and _idx_matches(data, idx):
        await trio.to_thread.run_sync(pack_path.with_suffix(".idx").write_bytes, idx)
    else:
        await run_git(["index-pack", str(pack_path)], home=repo, timeout=limits.timeout_seconds)
    if cache is not None:
        await cache.add(digest, pack_path)
    return len(data)


async def hydrate_into(
    repo: Path,
    objects: GitObjects,
    pointer_key: str,
    limits: GitLimits,
    cache: PackCache | None = None,
) -> Workspace:
    """Materialize the repo named by the pointer into the empty directory `repo`."""
    pointer = await objects.read_pointer(pointer_key)
    if pointer is None:
        raise RepoNotFound(pointer_key)
    token, digest = pointer
    manifest = await objects.get_manifest(digest)
    await trio.to_thread.run_sync(init_bare, repo)
    total = 0
    for pack_key in sorted(set(manifest.packs)):
        total += await _install_pack(objects, repo, pack_key, limits, cache)
        if total > limits.max_repo_bytes:
            raise ResourceLimit(f"the repository is larger than {limits.max_repo_bytes} bytes")
    # Only now that every object is in place do refs appear.
    for name, oid in manifest.refs.items():
        ref_path = repo.joinpath(*name.split("/"))
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        ref_path.write_text(oid + "\n")
    (repo / "HEAD").write_text(f"ref: {manifest.head}\n")
    installed = frozenset(f"{model.pack_file_stem(k)}.pack" for k in manifest.packs)
    return Workspace(repo, manifest, token, digest, total, installed)
