"""Git hosting helpers: a relay serving git (on the filesystem store or a moto bucket) seen
from outside, raw HTTP to its git routes, clones, and the relay-signed kind 30618 of a repo
read back until it agrees with the pointer."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import trio
from coincurve import PrivateKey

from relay.events import kinds
from relay.events.model import Event, parse_event
from relay.git import model
from relay.git.fsstore import FilesystemStore
from relay.git.objectstore import GitObjects
from relay.git.refstate import states_agree
from tests.git.gitclient import Git, announce
from tests.helpers import RelayUnderTest, community_of, connect, http_get
from tests.services import moto_bucket, start_relay

HOST = "127.0.0.1"
EMPTY = model.EMPTY_MANIFEST.digest
HTTP_TIMEOUT = 15.0
CONVERGE_TIMEOUT = 15.0
# A git_reconcile_seconds short enough for a test to wait out.
RECONCILE_SECONDS = 0.3
_dirs = itertools.count()


@dataclass
class Hosted:
    """A relay, the object store its git state lives in, its community and its pubkey."""

    relay: RelayUnderTest
    objects: GitObjects
    community_id: int
    relay_pubkey: str

    @property
    def port(self) -> int:
        return self.relay.port

    @property
    def db_url(self) -> str:
        return self.relay.db_url

    def url(self, owner: str, repo: str, host: str = HOST) -> str:
        return f"http://{host}:{self.port}/git/{owner}/{repo}.git"

    def path(self, owner: str, repo: str) -> str:
        return f"/git/{owner}/{repo}.git"

    async def pointer(self, owner: str, repo: str) -> tuple[str, str] | None:
        return await self.objects.read_pointer(model.pointer_key(self.community_id, owner, repo))

    async def manifest(self, owner: str, repo: str) -> model.Manifest:
        pointer = await self.pointer(owner, repo)
        assert pointer is not None
        return await self.objects.get_manifest(pointer[1])


@asynccontextmanager
async def hosted_relay(
    backend: str,
    nursery: trio.Nursery,
    db_url: str,
    data_dir: Path,
    moto_endpoint: str | None = None,
    **overrides: Any,
) -> AsyncIterator[Hosted]:
    """A relay on the filesystem store (its data dir) or on a fresh moto bucket."""
    if backend == "s3":
        assert moto_endpoint is not None
        async with moto_bucket(moto_endpoint) as (s3, store):
            relay = await start_relay(nursery, db_url, data_dir, **s3, **overrides)
            yield await _hosted(relay, GitObjects(store))
    else:
        relay = await start_relay(nursery, db_url, data_dir, **overrides)
        yield await _hosted(relay, GitObjects(FilesystemStore(data_dir / "objects")))


async def _hosted(relay: RelayUnderTest, objects: GitObjects) -> Hosted:
    return Hosted(relay, objects, await community_of(relay.db_url), await self_pubkey(relay.port))


async def self_pubkey(port: int) -> str:
    """The relay's own pubkey, as its NIP-11 document gives it."""
    status, _, body = await http_get(port, "/", Accept="application/nostr+json")
    assert status == 200
    return str(orjson.loads(body)["self"])


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


async def raw_request(
    port: int,
    method: str,
    target: str,
    *,
    host: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Response:
    """One raw HTTP/1.1 request over loopback; the whole response, read to EOF."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host or f'{HOST}:{port}'}"]
    lines.append("Connection: close")
    lines += [f"{k}: {v}" for k, v in headers or []]
    if method == "POST" or body:
        lines.append(f"Content-Length: {len(body)}")
    stream = await trio.open_tcp_stream(HOST, port)
    data = b""
    async with stream:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        with trio.fail_after(HTTP_TIMEOUT):
            while chunk := await stream.receive_some(65536):
                data += chunk
    assert data, f"{method} {target}: the relay closed the connection without a response"
    head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    if parsed.get("transfer-encoding", "").lower() == "chunked":
        payload = _dechunk(payload)
    return Response(int(status_line.split()[1]), parsed, payload)


def fresh_dir(tmp_path: Path, name: str) -> Path:
    return tmp_path / f"{name}-{next(_dirs)}"


async def rev(git: Git, repo: Path, what: str = "HEAD") -> str:
    return (await git.run("rev-parse", what, cwd=repo)).stdout.decode().strip()


def stderr_of(result: Any) -> str:
    return str(result.stderr.decode("utf-8", "replace"))


async def clone_refs(
    git: Git, url: str, dest: Path, key: PrivateKey | None = None
) -> tuple[dict[str, str], str | None]:
    """Clone into dest; the refs the clone got (remote branches as refs/heads/*, tags) and
    the branch its HEAD follows."""
    await git.run("clone", "-q", url, str(dest), key=key, url=url if key else None)
    listed = await git.run(
        "for-each-ref", "--format=%(objectname) %(refname)", "refs/remotes/origin", "refs/tags",
        cwd=dest,
    )  # fmt: skip
    refs: dict[str, str] = {}
    for line in listed.stdout.decode().splitlines():
        oid, _, name = line.partition(" ")
        if name == "refs/remotes/origin/HEAD":
            continue
        refs[name.replace("refs/remotes/origin/", "refs/heads/", 1)] = oid
    head = await git.run("symbolic-ref", "-q", "HEAD", cwd=dest, check=False)
    return refs, (head.stdout.decode().strip() or None)


def state_filter(h: Hosted, repo: str) -> dict[str, Any]:
    return {"kinds": [kinds.REPO_STATE], "authors": [h.relay_pubkey], "#d": [repo]}


async def stored_states(h: Hosted, repo: str) -> list[dict[str, Any]]:
    async with connect(h.port) as client:
        return await client.req("s", {"kinds": [kinds.REPO_STATE], "#d": [repo]})


async def newest_state(h: Hosted, repo: str) -> Event | None:
    async with connect(h.port) as client:
        found = await client.req("n", state_filter(h, repo))
    return parse_event(found[0]) if found else None


async def newest_agrees(h: Hosted, owner: str, repo: str) -> bool:
    newest = await newest_state(h, repo)
    return newest is not None and states_agree(newest, repo, await h.manifest(owner, repo))


async def converged(h: Hosted, owner: str, repo: str) -> None:
    """Wait until the newest relay-signed 30618 agrees with the pointer (it is emitted
    right after a push's answer, or by the reconciler)."""
    with trio.fail_after(CONVERGE_TIMEOUT):
        while not await newest_agrees(h, owner, repo):
            await trio.sleep(0.05)


async def settled_states(h: Hosted, owner: str, repo: str) -> list[dict[str, Any]]:
    """The stored 30618s once the newest says what the pointer holds."""
    await converged(h, owner, repo)
    return await stored_states(h, repo)


async def setup_repo(
    h: Hosted, git: Git, tmp_path: Path, key: PrivateKey, repo: str,
    extra_tags: list[list[str]] | None = None,
) -> tuple[str, str, Path]:  # fmt: skip
    """Announce, clone the empty repo; (owner, url, work tree)."""
    owner = (await announce(h.port, key, repo, extra_tags=extra_tags)).pubkey
    url = h.url(owner, repo)
    work = fresh_dir(tmp_path, "work")
    await git.run("clone", "-q", url, str(work))
    return owner, url, work
