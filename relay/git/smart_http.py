"""git smart HTTP on the relay's port: clone and fetch (upload-pack), push (receive-pack).

The routes are in `routes`, the push in `receive`; this is the handler between them: it
authenticates, finds the announcement, reads the body within its deadline, takes a git
slot, hydrates a temporary bare repo from the object store and runs stock git in it. The
directory goes when the request ends. Every refusal is an HttpError (or a git-side error
mapped to its status in `_handle`).
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from relay.git import model, nip98, pktline
from relay.git.maintainers import HostedRepo, Repos
from relay.git.objectstore import StoreError
from relay.git.packcache import PackCache
from relay.git.push import pack_too_large
from relay.git.receive import NO_CACHE, RESULT_TYPE, Push, Receiver, read_head, refusal_report
from relay.git.routes import GitRoute, git_protocol, parse_route, service_label, wants_v2
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
from relay.http import (
    BodyTooLarge,
    CountingStream,
    HttpError,
    Request,
    discard_body,
    read_decoded_body,
    refuse,
    respond,
    send_chunked,
    spool_decoded_body,
)
from relay.protocol.access import NOT_A_MEMBER, PUBLIC_ACCESS, Access

if TYPE_CHECKING:
    from collections import Counter

    from coincurve import PrivateKey

    from relay.git.objectstore import GitObjects
    from relay.git.purgatory import GraspEvents
    from relay.git.refsync import RefStates

log = logging.getLogger(__name__)
# One line per git request at info (client, method, path, status, bytes in/out, time).
access = logging.getLogger("relay.git.access")

MAX_UPLOAD_REQUEST_BYTES = 16 * 1024 * 1024
RETRY_AFTER_SECONDS = "5"
SLOT_WAIT_SECONDS = 2.0


def advertisement(service: str, body: bytes) -> bytes:
    return pktline.encode(f"# service={service}\n".encode()) + pktline.FLUSH + body


@dataclass
class GitService:
    """The git smart-HTTP routes; it is handed the parts it uses, not the relay."""

    repos: Repos
    grasp: GraspEvents
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
    hosts_of: Callable[[int], Awaitable[frozenset[str]]]  # a community's host names
    cache: PackCache | None = None
    # Who may use a community (members-only ones: NIP-98 of a member for every request).
    access_of: Callable[[int], Access] = lambda _community_id: PUBLIC_ACCESS
    receiver: Receiver = field(init=False)

    def __post_init__(self) -> None:
        self.receiver = Receiver(
            self.objects, self.ref_states, self.key, self.limits, self.max_event_bytes,
            self.cache, self.grasp,
        )  # fmt: skip

    # -- entry ------------------------------------------------------------------------------

    async def handle(
        self,
        stream: trio.abc.Stream,
        request: Request,
        community_id: int,
        host: str,
        client: str = "unknown",
    ) -> None:
        """Serve one git request, count it for /metrics and log it (an access log line:
        client, method, path, status, bytes in and out, milliseconds)."""
        started = time.perf_counter()
        counted = CountingStream(stream)
        status = await self._handle(counted, request, community_id, host)
        outcome = "ok" if status < 400 else str(status)
        service = service_label(request.method, request.path, request.query)
        self.operations[(service, outcome)] += 1
        access.info(
            "%s %s %s %d %d %d %.0fms",
            client, request.method, request.target[:512], status, counted.received,
            counted.sent, (time.perf_counter() - started) * 1000,
        )  # fmt: skip

    async def _handle(
        self, stream: trio.abc.Stream, request: Request, community_id: int, host: str
    ) -> int:
        """Serve one git request; returns the HTTP status sent."""
        try:
            route = parse_route(request.method, request.path, request.query)
            access = self.access_of(community_id)
            names = await self.hosts_of(community_id)
            pusher = self._authenticate(request, route, host, names, access.members_only)
            if access.members_only and pusher not in access.members:
                raise HttpError(403, NOT_A_MEMBER)
            repo = await self._repo(community_id, route)
            if not self.public_read and pusher not in repo.maintainers:
                # Private reads are the maintainers' (a push advertisement lists the refs
                # too); to anyone else the repository does not exist, so names do not leak.
                raise RepoNotFound(route.repo_id)
            await self._serve(stream, request, route, community_id, pusher, repo)
            return 200
        except HttpError as exc:
            refusal = exc
        except RepoNotFound:
            refusal = HttpError(404, "repository not found")
        except ResourceLimit as exc:
            refusal = HttpError(413, str(exc))
        except GitFailed as exc:
            log.error("git failed for %s: %s", request.path, exc)
            refusal = HttpError(504 if exc.timed_out else 500, "git operation failed")
        except (StoreError, model.InvalidManifest) as exc:
            log.error("object store failure for %s: %s", request.path, exc)
            refusal = HttpError(502, "repository storage is unavailable")
        await refuse(stream, refusal)
        return refusal.status

    def _authenticate(
        self,
        request: Request,
        route: GitRoute,
        host: str,
        names: frozenset[str],
        required: bool = False,
    ) -> str | None:
        """The NIP-98 key of the request, or None where none is needed: reads of public
        repositories, and pushes sent without Authorization (authorized by signed state,
        as GRASP-01 clients push), unless `required` (a members-only community: every
        request). A token that is sent must be valid."""
        authorization = request.header("authorization")
        if not authorization and not required and (self.public_read or route.is_push):
            return None
        scheme = "https" if self.https else "http"
        try:
            return nip98.authenticate(
                authorization,
                scheme=scheme,
                host=request.header("host") or host,
                repo_root=route.repo_root,
                aliases=names,
                window=self.auth_window,
            )
        except nip98.Unauthorized as exc:
            raise HttpError(401, str(exc), [nip98.CHALLENGE]) from None

    async def _repo(self, community_id: int, route: GitRoute) -> HostedRepo:
        """The hosted repository of the route: reachable under the npub of every member of
        its maintainer set, not only the owner's."""
        repo = await self.repos.hosted(community_id, route.repo_id)
        if repo is None or route.owner not in repo.maintainers:
            raise RepoNotFound(route.repo_id)
        return repo

    async def _serve(
        self,
        stream: trio.abc.Stream,
        request: Request,
        route: GitRoute,
        community_id: int,
        pusher: str | None,
        repo: HostedRepo,
    ) -> None:
        key = model.pointer_key(community_id, repo.owner, repo.repo_id)
        async with scratch_dir(self.scratch) as tmp:
            bare = tmp / "repo.git"
            bare.mkdir()
            # The body is read before a git slot is taken, within its own deadline, so a
            # slow or stalled client never holds a slot.
            body = b""
            spool = tmp / "push.body"
            with trio.move_on_after(self.limits.timeout_seconds) as reading:
                if route.advertise:
                    pass
                elif route.is_push:
                    if not await self._spool_push(stream, request, spool):
                        return
                else:
                    body = await read_decoded_body(stream, request, MAX_UPLOAD_REQUEST_BYTES)
            if reading.cancelled_caught:
                raise HttpError(408, "the request body did not arrive in time")
            async with self.slot():
                ws = await hydrate_into(bare, self.objects, key, self.limits, self.cache)
                protocol = git_protocol(request.header("git-protocol"))
                if route.advertise:
                    await self._advertise(
                        stream, ws, route.service, protocol, head_only=request.method == "HEAD"
                    )
                elif route.is_push:
                    push = Push(route, community_id, key, pusher, repo)
                    await self.receiver.receive(stream, ws, spool, push)
                else:
                    await self._upload_pack(stream, ws, body, protocol)

    async def _spool_push(self, stream: trio.abc.Stream, request: Request, spool: Path) -> bool:
        """The push body into `spool`; False when it was over the limit and that was
        answered the way git prints it (a report-status refusing every ref). Either way the
        rest of the body is read and dropped first (up to the limit again), so the client
        reads the answer; a body without commands gets HTTP 413."""
        limit = self.limits.max_pack_bytes + MAX_UPLOAD_REQUEST_BYTES
        try:
            await spool_decoded_body(stream, request, spool, limit)
            return True
        except BodyTooLarge:
            drained = await discard_body(stream, request, limit)
            head = await trio.to_thread.run_sync(read_head, spool)
            report = refusal_report(head, pack_too_large(self.limits))
            if report is None or not drained:
                raise
        await respond(stream, 200, report, RESULT_TYPE, NO_CACHE)
        return False

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
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

    async def _advertise(
        self,
        stream: trio.abc.Stream,
        ws: Workspace,
        service: str,
        protocol: str | None,
        *,
        head_only: bool,
    ) -> None:
        """The ref advertisement; for protocol v2 (asked in Git-Protocol) git's capability
        advertisement, which comes without the `# service=` line, as git http-backend does."""
        result = await run_git(
            [service.removeprefix("git-"), "--stateless-rpc", "--advertise-refs", str(ws.path)],
            home=ws.path,
            timeout=self.limits.timeout_seconds,
            env=_protocol_env(protocol),
        )
        body = result.stdout if wants_v2(protocol) else advertisement(service, result.stdout)
        await respond(
            stream, 200, body, f"application/x-{service}-advertisement", NO_CACHE,
            send_body=not head_only,
        )  # fmt: skip

    async def _upload_pack(
        self, stream: trio.abc.Stream, ws: Workspace, body: bytes, protocol: str | None
    ) -> None:
        command = ["git", *SERVE_OPTIONS, "upload-pack", "--stateless-rpc", str(ws.path)]
        process = await trio.lowlevel.open_process(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=git_env(ws.path, _protocol_env(protocol)),
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


def _protocol_env(protocol: str | None) -> dict[str, str] | None:
    return {"GIT_PROTOCOL": protocol} if protocol else None


async def _feed(process: trio.Process, body: bytes) -> None:
    assert process.stdin is not None
    async with process.stdin:
        with contextlib.suppress(trio.BrokenResourceError):
            await process.stdin.send_all(body)
