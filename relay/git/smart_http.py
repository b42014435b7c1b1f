"""git smart HTTP on the relay's port: clone and fetch (upload-pack), push (receive-pack).

Routes, community first (the listener resolved it from Host):
  GET  /git/<owner-hex>/<repo>[.git]/info/refs?service=git-upload-pack|git-receive-pack
  POST /git/<owner-hex>/<repo>[.git]/git-upload-pack | git-receive-pack
and the same under /<npub>/<repo>.git/. Every request hydrates a temporary bare repo from
the object store and runs stock git in it; the directory goes when the request ends.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shlex
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

import orjson
import trio

from relay.events import kinds
from relay.events.model import Event, parse_event
from relay.git import hook as hook_module
from relay.git import model, nip98, pktline, policy
from relay.git.hook import SOCKET_ENV
from relay.git.objectstore import StoreError
from relay.git.packcache import PackCache
from relay.git.push import Conflict, Published, Refused, Staged, commit, stage
from relay.git.refstate import build_ref_state
from relay.git.refsync import CONVERGE_ERRORS
from relay.git.workspace import (
    SERVE_OPTIONS,
    GitFailed,
    GitLimits,
    RepoNotFound,
    ResourceLimit,
    Workspace,
    git_env,
    hydrate_into,
    run_git,
    scratch_dir,
)
from relay.protocol.bech32 import npub_to_hex
from relay.protocol.filters import Filter
from relay.server.http import (
    BadGzip,
    BodyTooLarge,
    Request,
    gunzip,
    read_body,
    respond,
    send_chunked,
)

if TYPE_CHECKING:
    from collections import Counter

    from coincurve import PrivateKey

    from relay.git.objectstore import GitObjects
    from relay.git.refsync import RefStates
    from relay.git.registry import RepoRegistry
    from relay.store.events import EventStore

log = logging.getLogger(__name__)

SERVICES = ("git-upload-pack", "git-receive-pack")
# The pointer CAS and the push's answer run shielded from cancellation for at most this.
COMMIT_SECONDS = 5.0
NO_CACHE = [("Cache-Control", "no-cache")]
MAX_UPLOAD_REQUEST_BYTES = 16 * 1024 * 1024
MAX_HOOK_MESSAGE_BYTES = 4 * 1024 * 1024
RETRY_AFTER_SECONDS = "5"
SLOT_WAIT_SECONDS = 2.0
# The hook is standard library only, so it runs isolated (-I) and without site (-S):
# a third of the interpreter's start-up, once per push.
HOOK_COMMAND = shlex.join([sys.executable, "-I", "-S", str(Path(hook_module.__file__))])


@dataclass(frozen=True, slots=True)
class GitRoute:
    owner: str
    repo_id: str
    action: str  # "info/refs", "git-upload-pack" or "git-receive-pack"
    repo_root: str  # the URL path of the repo, as signed in NIP-98 tokens


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


def is_git_path(path: str) -> bool:
    return path.startswith("/git/") or (path.startswith("/npub1") and ".git/" in path)


def parse_route(raw_path: str) -> GitRoute:
    """The owner, repo id and action of a git URL path; HttpError 400/404 when unusable."""
    segments = raw_path.split("/")
    decoded = [unquote(s) for s in segments]
    if any("\0" in s for s in decoded):
        raise HttpError(400, "invalid path")
    if decoded[1] == "git":
        if len(decoded) < 5:
            raise HttpError(404, "not found")
        owner, repo, rest, root = decoded[2], decoded[3], decoded[4:], "/".join(segments[:4])
    else:
        if len(decoded) < 4 or not decoded[2].endswith(".git"):
            raise HttpError(404, "not found")
        owner_hex = npub_to_hex(decoded[1])
        if owner_hex is None:
            raise HttpError(400, "invalid owner: not an npub")
        owner, repo, rest, root = owner_hex, decoded[2], decoded[3:], "/".join(segments[:3])
    action = "/".join(rest)
    if action not in ("info/refs", *SERVICES):
        raise HttpError(404, "not found")
    try:
        model.validate_owner(owner)
        repo_id = model.normalize_repo_id(repo)
    except model.InvalidName as exc:
        raise HttpError(400, f"invalid repository: {exc}") from None
    return GitRoute(owner, repo_id, action, root)


def advertisement(service: str, body: bytes) -> bytes:
    return pktline.encode(f"# service={service}\n".encode()) + pktline.FLUSH + body


@dataclass
class GitService:
    """The git smart-HTTP routes; it is handed the parts it uses, not the relay."""

    store: EventStore
    registry: RepoRegistry
    objects: GitObjects
    ref_states: RefStates
    key: PrivateKey
    operations: Counter[tuple[str, str]]  # requests by (service, outcome), for /metrics
    https: bool  # the public URL is wss://, so git URLs are https (NIP-98 checks it)
    max_event_bytes: int  # the relay-signed 30618 must fit it
    limits: GitLimits
    scratch: Path
    public_read: bool
    processes: trio.CapacityLimiter
    auth_window: int
    cache: PackCache | None = None

    # -- entry ------------------------------------------------------------------------------

    async def handle(
        self, stream: trio.SocketStream, request: Request, community_id: int, host: str
    ) -> None:
        service = request.path.rsplit("/", 1)[-1]
        status = await self._handle(stream, request, community_id, host)
        if "service=" in request.query:
            service = request.query.split("service=", 1)[1].split("&", 1)[0]
        outcome = "ok" if status < 400 else str(status)
        self.operations[(service[:32], outcome)] += 1

    async def _handle(
        self, stream: trio.SocketStream, request: Request, community_id: int, host: str
    ) -> int:
        """Serve one git request; returns the HTTP status sent."""
        try:
            route = parse_route(request.path)
            service = self._service(request, route)
            pusher = self._authenticate(request, route, host, service)
            announcement = await self._announcement(community_id, route)
            if not self.public_read and pusher not in policy.maintainers(announcement):
                # Private reads are the maintainers' (a push advertisement lists the refs
                # too); to anyone else the repository does not exist, so names do not leak.
                raise RepoNotFound(route.repo_id)
            await self._serve(stream, request, route, service, community_id, pusher, announcement)
            return 200
        except HttpError as exc:
            body = (exc.message + "\n").encode()
            return await _fail(stream, exc.status, body, exc.headers)
        except RepoNotFound:
            return await _fail(stream, 404, b"repository not found\n")
        except (ResourceLimit, BodyTooLarge) as exc:
            return await _fail(stream, 413, f"{exc}\n".encode())
        except GitFailed as exc:
            log.error("git failed for %s: %s", request.path, exc)
            status = 504 if exc.timed_out else 500
            return await _fail(stream, status, b"git operation failed\n")
        except (StoreError, model.InvalidManifest) as exc:
            log.error("object store failure for %s: %s", request.path, exc)
            return await _fail(stream, 502, b"repository storage is unavailable\n")

    def _service(self, request: Request, route: GitRoute) -> str:
        if route.action == "info/refs":
            if request.method != "GET":
                raise HttpError(405, "use GET for info/refs")
            params = dict(p.partition("=")[::2] for p in request.query.split("&") if p)
            service = params.get("service", "")
            if service not in SERVICES:
                raise HttpError(400, "unsupported service: use smart HTTP (git 1.6.6 or newer)")
            return service
        if request.method != "POST":
            raise HttpError(405, f"use POST for {route.action}")
        return route.action

    def _authenticate(
        self, request: Request, route: GitRoute, host: str, service: str
    ) -> str | None:
        if service == "git-upload-pack" and self.public_read:
            return None
        scheme = "https" if self.https else "http"
        try:
            return nip98.authenticate(
                request.header("authorization"),
                scheme=scheme,
                host=request.header("host") or host,
                repo_root=route.repo_root,
                window=self.auth_window,
            )
        except nip98.Unauthorized as exc:
            raise HttpError(401, str(exc), [("WWW-Authenticate", 'Nostr realm="git"')]) from None

    async def _announcement(self, community_id: int, route: GitRoute) -> Event:
        owner = await self.registry.owner_of(community_id, route.repo_id)
        if owner != route.owner:
            raise RepoNotFound(route.repo_id)
        found = await self.store.query(
            community_id,
            (
                Filter(
                    authors=frozenset({route.owner}),
                    kinds=frozenset({kinds.REPO_ANNOUNCEMENT}),
                    tags=(("d", frozenset({route.repo_id})),),
                    limit=1,
                ),
            ),
            int(time.time()),
        )
        if not found:
            raise RepoNotFound(route.repo_id)
        return parse_event(orjson.loads(found[0][1]))

    async def _serve(
        self,
        stream: trio.SocketStream,
        request: Request,
        route: GitRoute,
        service: str,
        community_id: int,
        pusher: str | None,
        announcement: Event,
    ) -> None:
        key = model.pointer_key(community_id, route.owner, route.repo_id)
        async with scratch_dir(self.scratch) as tmp:
            repo = tmp / "repo.git"
            repo.mkdir()
            # The body is read before a git slot is taken, within its own deadline, so a
            # slow or stalled client never holds a slot.
            body = b""
            spool = tmp / "push.body"
            with trio.move_on_after(self.limits.timeout_seconds) as reading:
                if route.action == "info/refs":
                    pass
                elif service == "git-upload-pack":
                    body = await self._small_body(stream, request)
                else:
                    await self._spool(stream, request, spool)
            if reading.cancelled_caught:
                raise HttpError(408, "the request body did not arrive in time")
            async with self._slot():
                ws = await hydrate_into(repo, self.objects, key, self.limits, self.cache)
                if route.action == "info/refs":
                    await self._advertise(stream, ws, service)
                elif service == "git-upload-pack":
                    await self._upload_pack(stream, ws, body)
                else:
                    assert pusher is not None
                    await self._receive_pack(
                        stream, ws, spool, key, community_id, route, pusher, announcement
                    )

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """One of RELAY_GIT_MAX_PROCESSES; a short wait absorbs a client's back-to-back
        requests (git sends its POST right after its GET), then 503 with Retry-After."""
        with trio.move_on_after(SLOT_WAIT_SECONDS) as waiting:
            await self.processes.acquire()
        if waiting.cancelled_caught:
            raise HttpError(
                503, "too many git operations in progress, retry shortly",
                [("Retry-After", RETRY_AFTER_SECONDS)],
            )  # fmt: skip
        try:
            yield
        finally:
            self.processes.release()

    # -- reads ------------------------------------------------------------------------------

    async def _advertise(self, stream: trio.SocketStream, ws: Workspace, service: str) -> None:
        result = await run_git(
            [service.removeprefix("git-"), "--stateless-rpc", "--advertise-refs", str(ws.path)],
            home=ws.path,
            timeout=self.limits.timeout_seconds,
        )
        body = advertisement(service, result.stdout)
        await respond(stream, 200, body, f"application/x-{service}-advertisement", NO_CACHE)

    async def _small_body(self, stream: trio.SocketStream, request: Request) -> bytes:
        parts: list[bytes] = []

        async def keep(chunk: bytes) -> None:
            parts.append(chunk)

        await read_body(stream, request, MAX_UPLOAD_REQUEST_BYTES, keep)
        body = b"".join(parts)
        if request.header("content-encoding").lower() == "gzip":
            out: list[bytes] = []
            source = io.BytesIO(body)
            try:
                await trio.to_thread.run_sync(gunzip, source, out.append, MAX_UPLOAD_REQUEST_BYTES)
            except BadGzip:
                raise HttpError(400, "the request body is not valid gzip") from None
            body = b"".join(out)
        return body

    async def _upload_pack(self, stream: trio.SocketStream, ws: Workspace, body: bytes) -> None:
        command = ["git", *SERVE_OPTIONS, "upload-pack", "--stateless-rpc", str(ws.path)]
        process = await trio.lowlevel.open_process(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=git_env(ws.path),
            cwd=ws.path,
        )
        try:
            with trio.fail_after(self.limits.timeout_seconds):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_feed, process, body)

                    async def output() -> AsyncIterator[bytes]:
                        assert process.stdout is not None
                        while chunk := await process.stdout.receive_some(64 * 1024):
                            yield bytes(chunk)

                    await send_chunked(
                        stream, 200, "application/x-git-upload-pack-result", output(), NO_CACHE
                    )
                await process.wait()
        except trio.TooSlowError:
            raise GitFailed("upload-pack timed out", timed_out=True) from None
        finally:
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()

    # -- push -------------------------------------------------------------------------------

    async def _spool(self, stream: trio.SocketStream, request: Request, path: Path) -> None:
        gzipped = request.header("content-encoding").lower() == "gzip"
        received = path.with_suffix(".gz") if gzipped else path
        limit = self.limits.max_pack_bytes + MAX_UPLOAD_REQUEST_BYTES
        handle = await trio.open_file(received, "wb")
        async with handle:
            await read_body(stream, request, limit, handle.write)  # type: ignore[arg-type]
        if gzipped:
            try:
                await trio.to_thread.run_sync(_gunzip_file, received, path, limit)
            except BadGzip:
                raise HttpError(400, "the request body is not valid gzip") from None
            finally:
                received.unlink(missing_ok=True)

    async def _receive_pack(
        self,
        stream: trio.SocketStream,
        ws: Workspace,
        spool: Path,
        pointer_key: str,
        community_id: int,
        route: GitRoute,
        pusher: str,
        announcement: Event,
    ) -> None:
        head = await trio.to_thread.run_sync(_read_head, spool)
        try:
            commands, capabilities = pktline.parse_commands(head)
        except ValueError:
            raise HttpError(400, "the receive-pack request is not pkt-line commands") from None
        hooks = ws.path / "hooks"
        hooks.mkdir(exist_ok=True)
        hook = hooks / "pre-receive"
        hook.write_text(f"#!/bin/sh\nexec {HOOK_COMMAND}\n")
        hook.chmod(0o755)
        socket_path = ws.path.parent / "hook.sock"
        decision: list[list[policy.Denial]] = []
        async with trio.open_nursery() as nursery:
            listener = await _unix_listener(socket_path)
            nursery.start_soon(self._answer_hook, listener, pusher, announcement, decision)
            result = await run_git(
                # Whatever arrives stays one checked pack, published as it is.
                ["-c", "receive.unpackLimit=1", "receive-pack", "--stateless-rpc", str(ws.path)],
                home=ws.path,
                timeout=self.limits.timeout_seconds,
                stdin_path=spool,
                env={SOCKET_ENV: str(socket_path)},
                check=False,
            )
            nursery.cancel_scope.cancel()
        report = pktline.parse_report(result.stdout, "side-band-64k" in capabilities)
        stdout = result.stdout
        ok = result.returncode == 0 and report.unpack_ok and not report.rejected
        side_band = "side-band-64k" in capabilities
        content_type = "application/x-git-receive-pack-result"
        if not (ok and decision and not decision[0]):
            if report.accepted:
                # git took some refs and refused others; nothing was published, so none of
                # them was pushed: a push is all or nothing, and the report says so.
                stdout = pktline.refuse_all(stdout, commands, side_band)
            await respond(stream, 200, stdout, content_type, NO_CACHE)
            return
        staged = await stage(
            self.objects, ws, self.limits, self.cache,
            accept=partial(self._state_fits, route.repo_id, pusher),
        )  # fmt: skip
        if isinstance(staged, Refused):
            stdout = pktline.refuse_all(stdout, commands, side_band, staged.reason)
        outcome: Published | Conflict | None = None
        # The CAS and its answer are not parted by a shutdown: a push the pointer took is
        # answered as done (bounded, so a stuck store still lets the relay stop).
        with trio.move_on_after(COMMIT_SECONDS) as committing:
            committing.shield = True
            if isinstance(staged, Staged):
                outcome = await commit(self.objects, staged, pointer_key, ws.token)
            if isinstance(outcome, Conflict):
                raise HttpError(
                    409,
                    "push rejected: the repository changed while you pushed; "
                    "fetch, merge or rebase, and push again",
                )
            await respond(stream, 200, stdout, content_type, NO_CACHE)
        if isinstance(outcome, Published) and outcome.digest != ws.digest:
            await self._announce_state(community_id, route, pusher)

    async def _answer_hook(
        self,
        listener: trio.SocketListener,
        pusher: str,
        announcement: Event,
        decision: list[list[policy.Denial]],
    ) -> None:
        async with listener:
            while True:
                conn = await listener.accept()
                async with conn:
                    data = b""
                    while chunk := await conn.receive_some(65536):
                        data += chunk
                        if len(data) > MAX_HOOK_MESSAGE_BYTES:
                            break
                    try:
                        updates = [
                            policy.RefUpdate(u["old"], u["new"], u["ref"], u.get("is_ancestor"))
                            for u in orjson.loads(data)["updates"]
                        ]
                        denials = policy.evaluate(pusher, announcement, updates)
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        denials = [policy.Denial("", "malformed hook message")]
                    decision.append(denials)
                    answer = {
                        "allowed": not denials,
                        "denials": [{"ref": d.ref, "reason": d.reason} for d in denials],
                    }
                    await conn.send_all(orjson.dumps(answer))

    def _state_fits(self, repo_id: str, pusher: str, manifest: model.Manifest) -> str | None:
        """Why the ref-state event of `manifest` would be refused, or None: it is an event
        like any other, and larger than RELAY_MAX_EVENT_BYTES no relay would take it."""
        state = self._ref_state(repo_id, manifest, pusher, int(time.time()))
        limit = self.max_event_bytes
        if len(state.to_json().encode()) > limit:
            return f"too many refs: the repository state event would be over {limit} bytes"
        return None

    def _ref_state(
        self, repo_id: str, manifest: model.Manifest, pusher: str, created_at: int
    ) -> Event:
        return build_ref_state(
            self.key, repo_id=repo_id, head=manifest.head, refs=manifest.refs,
            actor=pusher, created_at=created_at,
        )  # fmt: skip

    async def _announce_state(self, community_id: int, route: GitRoute, pusher: str) -> None:
        """The relay-signed 30618 after a push. The push is done (the CAS committed it), so
        its answer never depends on this: a failure here is the reconciler's to mend."""
        try:
            await self.ref_states.converge(community_id, route.owner, route.repo_id, pusher)
        except CONVERGE_ERRORS as exc:
            log.warning(
                "the ref state of %s/%s is behind its push (%s); the reconciler will emit it",
                route.owner, route.repo_id, exc,
            )  # fmt: skip


async def _fail(
    stream: trio.SocketStream,
    status: int,
    body: bytes,
    headers: list[tuple[str, str]] | None = None,
) -> int:
    await respond(stream, status, body, extra_headers=headers)
    return status


async def _feed(process: trio.Process, body: bytes) -> None:
    assert process.stdin is not None
    async with process.stdin:
        with contextlib.suppress(trio.BrokenResourceError):
            await process.stdin.send_all(body)


async def _unix_listener(path: Path) -> trio.SocketListener:
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(4)
    return trio.SocketListener(sock)


def _gunzip_file(source: Path, target: Path, max_bytes: int) -> None:
    """The gzip file `source` decompressed into `target`, at most `max_bytes` of it (the
    rest of `target` is removed with the spool when the limit refuses the push)."""
    with open(source, "rb") as compressed, open(target, "wb") as plain:
        gunzip(compressed, plain.write, max_bytes)


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(1024 * 1024)
