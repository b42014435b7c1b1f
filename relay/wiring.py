"""The relay's parts, wired: what the listener and the websocket connections are handed.

A leaf of the import graph: it names the parts (each built by `app.open_relay`), and no
module it imports imports it back. The HTTP listener and the websocket connections take
this object; the git routes, the metrics and the stores take only the parts they use.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import trio
from coincurve import PrivateKey

from relay.config import Settings
from relay.events.ingest import Ingest
from relay.git.objectstore import GitObjects, StoreError
from relay.git.refsync import RefStates
from relay.git.registry import RepoRegistry
from relay.git.smart_http import GitService
from relay.keys import pubkey_hex
from relay.metrics import Metrics
from relay.probes import Check, Prober
from relay.protocol.limits import Limits
from relay.pubsub.fanout import Fanout
from relay.pubsub.redis_bridge import RedisBridge
from relay.pubsub.workerbus import WorkerBus
from relay.server.management import Moderation
from relay.server.membership import Membership
from relay.server.ratelimit import RateLimiter
from relay.store.communities import Communities
from relay.store.db import Database
from relay.store.events import EventStore
from relay.web.pages import WebPages

# Any key will do: readiness only asks that the object store answers.
READINESS_KEY = "probe/readiness"


@dataclass
class Relay:
    settings: Settings
    limits: Limits
    db: Database
    store: EventStore
    communities: Communities
    fanout: Fanout
    ingest: Ingest
    key: PrivateKey
    objects: GitObjects
    registry: RepoRegistry
    metrics: Metrics
    limiter: RateLimiter
    ref_states: RefStates
    git: GitService
    moderation: Moderation
    web: WebPages
    membership: Membership
    bridge: RedisBridge | None = None
    # One worker of several (RELAY_WORKERS): the bus to the others and the parent.
    workers: WorkerBus | None = None
    # Set on SIGTERM: stop accepting, close websockets with 1001, let work in flight finish.
    shutdown: trio.Event = field(default_factory=trio.Event)
    # Open websocket connections (ClientConnection), told to stop reading on shutdown.
    connections: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)
    prober: Prober = field(default_factory=Prober)

    @property
    def pubkey(self) -> str:
        return pubkey_hex(self.key)

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Ready when Postgres and the object store answer, each within
        READINESS_CHECK_SECONDS (checked at once, so a stalled backend gets a 503 in time,
        not a hung probe). Redis only degrades the relay (events still reach this pod's
        clients and storage, rate limits go local), so it is reported, not gated."""
        checks: dict[str, Check] = {
            "postgres": self.db.ping,
            "object_store": self._object_store_answers,
        }
        if self.bridge is not None:
            checks["redis"] = self.bridge.answers
        answers = await self.prober.answers(checks)
        states = {
            name: "ok" if answer else "stalled" if answer is None else "unreachable"
            for name, answer in answers.items()
        }
        ready = states["postgres"] == states["object_store"] == "ok"
        if self.bridge is not None:
            healthy = answers["redis"] and self.bridge.healthy and self.limiter.shared
            states["redis"] = "ok" if healthy else "degraded"
        if self.shutdown.is_set():
            states["shutdown"] = "in progress"
            ready = False
        return ready, dict(sorted(states.items()))

    async def _object_store_answers(self) -> bool:
        try:
            await self.objects.store.get(READINESS_KEY, 1024)
        except StoreError:
            return False
        return True
