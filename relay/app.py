"""Wiring: open the backends, start the listener and background jobs, shut down cleanly."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio
import trio_asyncio
from coincurve import PrivateKey

from relay.config import ConfigError, Settings
from relay.events import kinds
from relay.events.ingest import Ingest
from relay.events.model import Event
from relay.git.announce import Announcements
from relay.git.maintainers import Repos
from relay.git.objectstore import GitObjects, ObjectStore
from relay.git.packcache import PackCache
from relay.git.probe import ProbeFailed
from relay.git.purgatory import SWEEP_SECONDS, GraspEvents, Purgatory, sweep_forever
from relay.git.refstate import check_ref_state
from relay.git.refsync import RefStates, reconcile_forever
from relay.git.registry import RepoRegistry
from relay.git.smart_http import GitService
from relay.git.stores import describe, open_object_store, probe_store
from relay.git.workspace import GitLimits
from relay.keys import load_or_create_key, pubkey_hex
from relay.listening import WorkerRole, open_listeners
from relay.metrics import Metrics, TimedObjectStore
from relay.protocol.access import JOIN_REQUEST, LEAVE_REQUEST, check_membership_request
from relay.pubsub.fanout import Fanout
from relay.pubsub.redis_bridge import RedisBridge
from relay.pubsub.workerbus import WorkerBus
from relay.server.listener import handle_stream
from relay.server.management import Moderation
from relay.server.membership import Membership
from relay.server.ratelimit import RateLimiter
from relay.startup import startup_lines
from relay.store.communities import Communities
from relay.store.db import Database
from relay.store.embedded import embedded_postgres
from relay.store.events import EventStore
from relay.store.group_commit import GroupCommit
from relay.store.membership import MembershipStore
from relay.store.migrations import migrate
from relay.store.moderation import ModerationStore
from relay.web.pages import WebPages
from relay.wiring import Relay

__all__ = ["Relay", "open_relay", "serve"]

log = logging.getLogger(__name__)

PACK_CACHE_DIR = "relay-pack-cache"
GC_YOUNG_THRESHOLD = 20_000


def check_git() -> None:
    """Clone and push run stock git: without it on PATH the relay would take announcements
    and fail every git request later."""
    if shutil.which("git") is None:
        raise ConfigError(
            "git is not on PATH (the relay runs git for clone and push): install git, or set PATH"
        )


def prepare_data_dir(settings: Settings) -> None:
    path = settings.data_path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"RELAY_DATA_DIR {path} cannot be created: {exc.strerror}") from None
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigError(f"RELAY_DATA_DIR {path} is not readable and writable")


@asynccontextmanager
async def database_url(settings: Settings) -> AsyncIterator[str]:
    if settings.database_url:
        yield settings.database_url
    else:
        async with embedded_postgres(settings.data_path) as url:
            yield url


@asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[Database]:
    """Postgres (configured or embedded) with migrations applied, inside a trio-asyncio loop."""
    prepare_data_dir(settings)
    async with trio_asyncio.open_loop(), database_url(settings) as url:
        db = await Database.connect(url, max_size=settings.db_pool_size)
        try:
            yield db
        finally:
            with trio.CancelScope(shield=True):
                await db.close()


async def check_object_store(store: ObjectStore, settings: Settings) -> None:
    """Run the conformance probe unless it is switched off; refuse a store that fails it."""
    if not settings.git_probe:
        log.warning("object store conformance probe is off (RELAY_GIT_PROBE=off)")
        return
    report = await probe_store(store, settings)
    for line in report.render().splitlines():
        log.info(line)
    if not report.ok:
        raise ProbeFailed(
            f"the object store ({describe(settings)}) failed the conformance probe; "
            "the relay will not start on it:\n" + report.render()
        )


@asynccontextmanager
async def open_relay(settings: Settings, role: WorkerRole | None = None) -> AsyncIterator[Relay]:
    """Every part of the relay, built from the settings. A worker (`role`) leaves what is
    per relay to its parent: the probe, the migrations and the communities (relay.workers)."""
    check_git()
    metrics = Metrics()
    async with open_database(settings) as db, open_object_store(settings) as raw_store:
        if role is None:
            await check_object_store(raw_store, settings)
        object_store = TimedObjectStore(raw_store, metrics)
        db.observe = metrics.observe_db
        communities = Communities(db)
        if role is None:
            applied = await migrate(db)
            if applied:
                log.info("applied migrations %s", applied)
            await communities.ensure(list(settings.hosts))
        else:
            await communities.load()
        store = EventStore(db, settings.query_timeout_seconds)
        fanout = Fanout()
        limits = settings.limits
        key = load_or_create_key(settings.secret_key, settings.data_path)
        objects = GitObjects(object_store)
        ingest = Ingest(store, fanout, limits, timeout=settings.ingest_timeout_seconds)
        registry = RepoRegistry(db, settings.git_max_repos_per_pubkey)
        repos = Repos(store, registry)
        grasp_events = GraspEvents(
            store, repos, objects, Purgatory(db, settings.git_purgatory_seconds),
            fanout.publish, pubkey_hex(key),
        )  # fmt: skip
        wire_git(settings, store, ingest, objects, key, registry, communities, grasp_events)
        ref_states = RefStates(store, objects, key, fanout.publish)
        bridge = None
        if settings.redis_url:
            bridge = RedisBridge(
                settings.redis_url, settings.redis_prefix, deliver=fanout.deliver_local
            )
            fanout.remote = bridge
        workers = None
        if role is not None:
            workers = WorkerBus(
                role.bus_path, role.index, deliver=fanout.deliver_local,
                expose=metrics.render, carry_events=bridge is None, listening=fanout.listening,
            )  # fmt: skip
            if bridge is None:
                fanout.remote = workers
        metrics.bind(fanout, bridge, workers)
        scratch = Path(settings.git_scratch_dir or tempfile.gettempdir())
        cache_bytes = settings.git_pack_cache_bytes
        git = GitService(
            repos=repos,
            grasp=grasp_events,
            objects=objects,
            ref_states=ref_states,
            key=key,
            operations=metrics.git_operations,
            https=settings.public_url.startswith("wss://"),
            max_event_bytes=limits.max_event_bytes,
            limits=GitLimits(
                max_pack_bytes=settings.git_max_pack_bytes,
                max_repo_bytes=settings.git_max_repo_bytes,
                timeout_seconds=settings.git_timeout_seconds,
            ),
            scratch=scratch,
            public_read=settings.git_public_read,
            processes=trio.CapacityLimiter(settings.git_max_processes),
            auth_window=settings.git_auth_window_seconds,
            hosts_of=communities.hosts_of,
            cache=pack_cache(scratch / PACK_CACHE_DIR, cache_bytes, role) if cache_bytes else None,
        )
        moderation = Moderation(
            ModerationStore(db),
            admins=settings.admin_pubkeys,
            https=settings.public_url.startswith("wss://"),
            auth_window=settings.git_auth_window_seconds,
            hosts_of=communities.hosts_of,
            redis_url=settings.redis_url,
            prefix=settings.redis_prefix,
        )
        await moderation.reload()
        ingest.moderation = moderation.refusal
        membership = wire_membership(db, store, ingest, key, moderation, fanout.publish)
        git.access_of = moderation.access
        limiter = RateLimiter(settings.rate, settings.redis_url, settings.redis_prefix)
        limiter.workers = workers
        relay = Relay(
            settings=settings,
            limits=limits,
            db=db,
            store=store,
            communities=communities,
            fanout=fanout,
            ingest=ingest,
            key=key,
            objects=objects,
            registry=registry,
            metrics=metrics,
            limiter=limiter,
            ref_states=ref_states,
            git=git,
            moderation=moderation,
            web=WebPages(
                git,
                registry,
                store,
                pubkey_hex(key),
                https=settings.public_url.startswith("wss://"),
                public_read=settings.git_public_read,
                access_of=moderation.access,
            ),
            bridge=bridge,
            workers=workers,
            membership=membership,
        )
        moderation.on_access_change.append(partial(access_changed, relay))
        if workers is not None:  # a worker whose parent is gone drains and exits
            # (late bound: `serve` may hand the relay its own shutdown event)
            workers.on_lost = lambda: relay.shutdown.set()
        try:
            yield relay
        finally:
            await relay.limiter.aclose()
            await moderation.aclose()


def wire_membership(
    db: Database,
    store: EventStore,
    ingest: Ingest,
    key: PrivateKey,
    moderation: Moderation,
    publish: Callable[[int, Event, str], None],
) -> Membership:
    """Members-only communities (NIP-43): writes need a member's AUTH (a join request only
    an AUTH), join and leave requests change the membership, NIP-86 calls map onto it."""
    membership = Membership(MembershipStore(db), store, key, moderation.changed, publish)
    moderation.membership = membership

    def refusal(community_id: int, event: Event, authenticated: Collection[str]) -> str | None:
        return moderation.access(community_id).event_refusal(event, authenticated)

    def request_rules(event: Event) -> str | None:
        return check_membership_request(event, int(time.time()))

    ingest.access = refusal
    for kind in (JOIN_REQUEST, LEAVE_REQUEST):
        ingest.side_effects[kind] = membership
        ingest.validators[kind] = request_rules
    return membership


def access_changed(relay: Relay, community_id: int) -> None:
    """A community's members or mode changed: its open connections check their access."""
    for connection in list(relay.connections):
        if connection.community_id == community_id:
            connection.access_changed()


def pack_cache(root: Path, max_bytes: int, role: WorkerRole | None) -> PackCache:
    """The pack cache of this process: the whole of `root`, or a worker's own directory in
    it with its share of the size, looking in the other workers' on a miss."""
    if role is None:
        return PackCache(root, max_bytes)
    own = root / f"worker-{role.index}"
    others = tuple(root / f"worker-{j}" for j in range(role.count) if j != role.index)
    return PackCache(own, max_bytes // role.count, others)


def wire_git(
    settings: Settings,
    store: EventStore,
    ingest: Ingest,
    objects: GitObjects,
    key: PrivateKey,
    registry: RepoRegistry,
    communities: Communities,
    grasp_events: GraspEvents,
) -> Announcements:
    """NIP-34: announcements that ask us reserve names and pointers; maintainers' ref
    states and pull requests wait in purgatory for their git data; ref states are checked."""
    announcements = Announcements(
        store,
        registry,
        objects,
        key,
        hosts_of=communities.hosts_of,
        provision=settings.git_provision,
        compensation_seconds=settings.compensation_timeout_seconds,
    )
    ingest.side_effects[kinds.REPO_ANNOUNCEMENT] = announcements
    ingest.validators[kinds.REPO_ANNOUNCEMENT] = announcements.check
    ingest.validators[kinds.REPO_STATE] = check_ref_state
    for kind in (kinds.REPO_STATE, kinds.PULL_REQUEST, kinds.PULL_REQUEST_UPDATE):
        ingest.side_effects[kind] = grasp_events
    store.on_removal(announcements.removed_in_transaction)
    ingest.after_removal.append(announcements.removed_after_commit)
    return announcements


async def purge_expired_forever(relay: Relay) -> None:
    while True:
        await trio.sleep(relay.settings.expiration_purge_seconds)
        try:
            purged = await relay.store.purge_expired(int(time.time()))
        except Exception:
            log.exception("purging expired events failed")
            continue
        if purged:
            log.info("purged %d expired events", purged)


def start_chores(nursery: trio.Nursery, relay: Relay) -> None:
    """The relay's periodic work over all its data: expired events, the purgatory, and the
    relay-signed 30618s checked against the pointers. Each is safe on several pods at once;
    of one relay's worker processes only the first runs them (a restarted one resumes)."""
    settings = relay.settings
    nursery.start_soon(purge_expired_forever, relay)
    nursery.start_soon(
        sweep_forever, relay.git.grasp, min(SWEEP_SECONDS, settings.git_purgatory_seconds)
    )
    if settings.git_reconcile_seconds > 0:
        nursery.start_soon(
            reconcile_forever, relay.ref_states, relay.registry, settings.git_reconcile_seconds
        )


def tune_garbage_collector() -> None:
    """Each connection keeps a few hundred long-lived objects, so with thousands of them
    the collector's passes get long and a fan-out that wakes every connection triggers
    them. Start-up objects are frozen out of its way and young collections run less
    often; reference counting still frees almost everything at once."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


async def serve(
    settings: Settings,
    *,
    shutdown: trio.Event | None = None,
    on_ready: Callable[[Relay], None] | None = None,
    role: WorkerRole | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the relay, or one worker of it (`role`); reports the bound port through
    task_status.

    When `shutdown` is set: stop accepting connections, ask websocket clients to go (close
    1001), and give requests in flight RELAY_SHUTDOWN_GRACE seconds to finish.
    """
    async with open_relay(settings, role) as relay, trio.open_nursery() as background:
        if shutdown is not None:
            relay.shutdown = shutdown
        if relay.bridge is not None:
            background.start_soon(relay.bridge.run)
        if relay.workers is not None:
            await background.start(relay.workers.run)
        group = GroupCommit(relay.db)
        relay.store.group = group
        background.start_soon(group.run)
        background.start_soon(relay.ingest.verifier.run)
        background.start_soon(relay.prober.run)
        background.start_soon(relay.moderation.run)
        if role is None or role.index == 0:
            # The relay's periodic chores, safe on several pods at once, are one worker's.
            start_chores(background, relay)
        async with trio.open_nursery() as connections:
            listeners = await open_listeners(settings, role)
            port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as accepting:
                accepting.start_soon(
                    partial(
                        trio.serve_listeners,
                        partial(handle_stream, relay),
                        listeners,
                        handler_nursery=connections,
                    )
                )
                communities = list((await relay.communities.names()).values())
                bound = f"{settings.bind}:{port}"
                if role is None or role.index == 0:
                    count = 1 if role is None else role.count
                    lines = startup_lines(settings, bound, communities, relay.pubkey, count)
                    for line in lines:
                        log.info("%s", line)
                if role is not None:
                    log.info("worker %d ready (pid %d)", role.index, os.getpid())
                tune_garbage_collector()
                if on_ready is not None:
                    on_ready(relay)
                task_status.started(port)
                await relay.shutdown.wait()
                log.info("shutting down: no new connections; %.0f s grace", settings.shutdown_grace)
                accepting.cancel_scope.cancel()
                for connection in list(relay.connections):
                    connection.stop_reading()
            connections.cancel_scope.deadline = trio.current_time() + settings.shutdown_grace
        log.info("shutdown complete")
        background.cancel_scope.cancel()
