"""A push, end to end: receive-pack with the relay's hook, publish, answer, ref state.

What the push is judged by (`policy.PushRules`: the maintainer set, the refs before it,
the newest maintainer-signed state, the tips pull-request events name) is read before git
runs; git checks the pack and asks the hook (`hookserver`), and the relay decides. Only
when git accepted every ref and the relay allowed it is the result staged and committed by
the pointer CAS (`push`). A push is all or nothing: when anything is refused, every ref is
reported refused. After the commit the relay-signed 30618 follows, then the events waiting
in purgatory for this data are released; the push's answer waits on neither.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from relay.git import grasp, model, nip98, pktline, policy
from relay.git.hookserver import hook_server
from relay.git.maintainers import HostedRepo
from relay.git.push import Conflict, Published, Refused, Staged, commit, stage
from relay.git.refstate import build_ref_state
from relay.git.refsync import CONVERGE_ERRORS
from relay.git.workspace import GitLimits, ResourceLimit, Workspace, run_git
from relay.http import HttpError, respond

if TYPE_CHECKING:
    from coincurve import PrivateKey

    from relay.git.objectstore import GitObjects
    from relay.git.packcache import PackCache
    from relay.git.purgatory import GraspEvents
    from relay.git.refsync import RefStates
    from relay.git.routes import GitRoute

log = logging.getLogger(__name__)

# The pointer CAS and the push's answer run shielded from cancellation for at most this.
COMMIT_SECONDS = 5.0
RESULT_TYPE = "application/x-git-receive-pack-result"
NO_CACHE = [("Cache-Control", "no-cache")]
HEAD_BYTES = 1024 * 1024  # the commands are read from at most this much of the body
# Refusals git prints (report-status `ng <ref> <reason>`: git hides HTTP error bodies).
RACE_LOST = "another push won the race: fetch, rebase and push again"


@dataclass(frozen=True, slots=True)
class Push:
    """One push request: where it goes, and who sends it (None: no NIP-98, so the push
    is authorized by signed state)."""

    route: GitRoute
    community_id: int
    pointer_key: str
    pusher: str | None
    repo: HostedRepo

    @property
    def actor(self) -> str:
        """Who the relay-signed 30618 names as causing the new state."""
        return self.pusher or self.repo.owner


@dataclass
class Receiver:
    """Runs pushes; handed the parts it uses."""

    objects: GitObjects
    ref_states: RefStates
    key: PrivateKey
    limits: GitLimits
    max_event_bytes: int  # the relay-signed 30618 must fit it
    cache: PackCache | None
    grasp: GraspEvents

    async def receive(
        self, stream: trio.abc.Stream, ws: Workspace, spool: Path, push: Push
    ) -> None:
        """Run receive-pack on the spooled body in the hydrated `ws`, publish what it
        accepted, and answer git's report on `stream`."""
        started = time.perf_counter()
        head = await trio.to_thread.run_sync(read_head, spool)
        try:
            commands, capabilities = pktline.parse_commands(head)
        except ValueError:
            raise HttpError(400, "the receive-pack request is not pkt-line commands") from None
        side_band = "side-band-64k" in capabilities
        rules = await self._rules(push, ws, commands)
        if policy.needs_token(rules, [c.ref for c in commands]):
            raise HttpError(
                401,
                "authentication required: push with a NIP-98 token (for stock git: "
                "`relay git-credential` as credential helper), or publish a kind 30618 "
                "signed by a maintainer naming these refs first",
                [nip98.CHALLENGE],
            )
        decide = partial(policy.evaluate, rules)
        async with hook_server(ws.path, decide) as hooks:
            result = await run_git(
                # Whatever arrives stays one checked pack, published as it is.
                ["-c", "receive.unpackLimit=1", "receive-pack", "--stateless-rpc", str(ws.path)],
                home=ws.path,
                timeout=self.limits.timeout_seconds,
                stdin_path=spool,
                env=hooks.env,
                check=False,
            )
        report = pktline.parse_report(result.stdout, side_band)
        stdout = result.stdout
        git_took_all = result.returncode == 0 and report.unpack_ok and not report.rejected
        if not (git_took_all and hooks.allowed):
            if report.accepted:
                # git took some refs and refused others; nothing was published, so none of
                # them was pushed: a push is all or nothing, and the report says so.
                stdout = pktline.refuse_all(stdout, commands, side_band)
            await respond(stream, 200, stdout, RESULT_TYPE, NO_CACHE)
            return
        fits = partial(self._state_fits, push.route.repo_id, push.actor)
        wanted = rules.state.head if rules.state is not None else None
        try:
            staged = await stage(
                self.objects, ws, self.limits, self.cache, accept=fits, head=wanted
            )
        except ResourceLimit as exc:
            staged = Refused(str(exc))
        if isinstance(staged, Refused):
            stdout = pktline.refuse_all(stdout, commands, side_band, staged.reason)
        outcome: Published | Conflict | None = None
        # The CAS and its answer are not parted by a shutdown: a push the pointer took is
        # answered as done (bounded, so a stuck store still lets the relay stop).
        with trio.move_on_after(COMMIT_SECONDS) as committing:
            committing.shield = True
            if isinstance(staged, Staged):
                outcome = await commit(self.objects, staged, push.pointer_key, ws.token)
            if isinstance(outcome, Conflict):
                stdout = pktline.refuse_all(stdout, commands, side_band, RACE_LOST)
            await respond(stream, 200, stdout, RESULT_TYPE, NO_CACHE)
        if isinstance(outcome, Published):
            changed = sum(
                ws.manifest.refs.get(c.ref) != (None if set(c.new) == {"0"} else c.new)
                for c in commands
            )
            log.info(
                "push to %s/%s by %s: %d refs changed, %d bytes, %.0f ms",
                push.repo.owner, push.repo.repo_id, push.pusher or "signed state (no NIP-98)",
                changed, spool.stat().st_size, (time.perf_counter() - started) * 1000,
            )  # fmt: skip
        if isinstance(outcome, Published) and outcome.digest != ws.digest:
            await self._announce_state(push)
            await self._release(push, rules, outcome.manifest)

    async def _rules(
        self, push: Push, ws: Workspace, commands: list[pktline.Command]
    ) -> policy.PushRules:
        repo, cid = push.repo, push.community_id
        pr_ids = [i for c in commands if (i := grasp.pr_event_id(c.ref)) is not None]
        return policy.PushRules(
            pusher=push.pusher,
            announcement=repo.announcement,
            maintainers=repo.maintainers,
            refs=ws.manifest.refs,
            state=await self.grasp.newest_state(cid, repo) if push.pusher is None else None,
            pr_tips=await self.grasp.pull_request_tips(cid, pr_ids),
        )

    async def _release(self, push: Push, rules: policy.PushRules, manifest: model.Manifest) -> None:
        """Events waiting for what this push brought are served from now on, and PR refs
        it created without an event are noted (removed if none comes); a failure here is
        the sweep's to mend (the push is done)."""
        created = sorted(manifest.refs.keys() - rules.refs.keys())
        try:
            await self.grasp.track(push.community_id, push.repo, created, rules.pr_tips)
            await self.grasp.release(push.community_id, push.repo, manifest.refs)
        except CONVERGE_ERRORS as exc:
            log.warning(
                "releasing purgatory of %s/%s failed (%s); the sweep will",
                push.repo.owner, push.repo.repo_id, exc,
            )  # fmt: skip

    def _state_fits(self, repo_id: str, pusher: str, manifest: model.Manifest) -> str | None:
        """Why the ref-state event of `manifest` would be refused, or None: it is an event
        like any other, and larger than RELAY_MAX_EVENT_BYTES no relay would take it."""
        state = build_ref_state(
            self.key, repo_id=repo_id, head=manifest.head, refs=manifest.refs,
            actor=pusher, created_at=int(time.time()),
        )  # fmt: skip
        limit = self.max_event_bytes
        if len(state.to_json().encode()) > limit:
            return f"too many refs: the repository state event would be over {limit} bytes"
        return None

    async def _announce_state(self, push: Push) -> None:
        """The relay-signed 30618 after a push. The push is done (the CAS committed it), so
        its answer never depends on this: a failure here is the reconciler's to mend."""
        route = push.route
        try:
            await self.ref_states.converge(
                push.community_id, push.repo.owner, route.repo_id, push.actor
            )
        except CONVERGE_ERRORS as exc:
            log.warning(
                "the ref state of %s/%s is behind its push (%s); the reconciler will emit it",
                push.repo.owner, route.repo_id, exc,
            )  # fmt: skip


def refusal_report(head: bytes, reason: str) -> bytes | None:
    """git's report-status refusing every command of a receive-pack request whose body
    starts with `head`, with `reason`; None when no command can be read from it (then an
    HTTP status is all there is to answer with)."""
    try:
        commands, capabilities = pktline.parse_commands(head)
    except ValueError:
        return None
    if not commands:
        return None
    return pktline.refuse_all(b"", commands, "side-band-64k" in capabilities, reason)


def read_head(path: Path) -> bytes:
    """The start of a spooled body (where the commands are); empty when there is none."""
    try:
        with open(path, "rb") as handle:
            return handle.read(HEAD_BYTES)
    except FileNotFoundError:
        return b""
