"""Rate limits: token buckets per client address and per authenticated pubkey, for EVENT,
REQ and new connections. With Redis they are shared by every pod as fixed-window counters;
if Redis does not answer, each pod falls back to its own buckets rather than refusing
everyone. The worker processes of one relay without Redis share the buckets kept by their
parent (relay.pubsub.workerbus), each falling back to its own the same way.

The client address is the TCP peer's, or the one a trusted proxy names
(relay.server.clientaddr). Loopback clients are not limited unless
RELAY_RATE_LIMIT_LOOPBACK is on: on the relay's own host they are a developer's tools or a
test suite, and a proxy on that host is never one (its clients are named by its headers).
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import redis.asyncio as aioredis
import trio
from trio_asyncio import aio_as_trio

from relay.protocol.limits import Rate, RateLimits, TokenBuckets
from relay.pubsub.redis_bridge import REDIS_ERRORS
from relay.server.clientaddr import ClientAddress

log = logging.getLogger(__name__)

WINDOW_SECONDS = 10
# A shared check that takes longer is given up (local buckets decide), and Redis is then
# left alone for BREAKER_SECONDS: a stalled Redis costs one message at most this much, not
# every message of every client a timeout each.
SHARED_TIMEOUT_SECONDS = 0.1
BREAKER_SECONDS = 5.0


def rate_limited(client: ClientAddress, limit_loopback: bool) -> bool:
    """Whether rate limits apply to `client` (RELAY_RATE_LIMIT_LOOPBACK is `limit_loopback`)."""
    return limit_loopback or not client.loopback


class SharedBuckets(Protocol):
    async def allow(self, action: str, who: str) -> bool | None:
        """The shared verdict, or None when it could not be had in time."""


class RateLimiter:
    def __init__(self, limits: RateLimits, redis_url: str | None = None, prefix: str = "") -> None:
        self.limits = limits
        # The worker bus's shared buckets (RELAY_WORKERS > 1 without Redis); see `allow`.
        self.workers: SharedBuckets | None = None
        self.local = TokenBuckets()
        self.prefix = prefix
        self._redis = aioredis.Redis.from_url(redis_url, socket_timeout=1) if redis_url else None
        self.refused = 0
        self._redis_skipped_until = float("-inf")
        self.breaker_trips = 0

    async def allow(self, action: str, who: str) -> bool:
        """May `who` (a client address or `pubkey:<hex>`) do `action` (event, req, connect)
        now?"""
        if not self.limits.enabled:
            return True
        rate = self.limits.rate_of(action)
        allowed = None
        if self._redis:
            allowed = await self._shared(action, who, rate)
        elif self.workers is not None:
            allowed = await self.workers.allow(action, who)
        if allowed is None:
            allowed = self.local.take(action, who, rate)
        if not allowed:
            self.refused += 1
            log.debug("rate-limited: %s by %s", action, who)
        return allowed

    async def _shared(self, action: str, who: str, rate: Rate) -> bool | None:
        window = int(time.time()) // WINDOW_SECONDS
        key = f"{self.prefix}:rate:{action}:{who}:{window}"
        budget = rate.burst + rate.per_second * WINDOW_SECONDS
        assert self._redis is not None
        if trio.current_time() < self._redis_skipped_until:
            return None
        count: int | None = None
        with trio.move_on_after(SHARED_TIMEOUT_SECONDS):
            try:
                count = await aio_as_trio(self._incr)(key)
            except REDIS_ERRORS as exc:
                log.debug("shared rate limit unavailable: %s", exc)
        if count is None:
            self._trip()
            return None
        return bool(count <= budget)

    def _trip(self) -> None:
        self._redis_skipped_until = trio.current_time() + BREAKER_SECONDS
        self.breaker_trips += 1
        log.warning(
            "redis did not answer a rate-limit check within %.0f ms: local limits for %.0f s",
            SHARED_TIMEOUT_SECONDS * 1000,
            BREAKER_SECONDS,
        )

    @property
    def shared(self) -> bool:
        """Whether rate limits are shared through Redis right now."""
        return self._redis is not None and trio.current_time() >= self._redis_skipped_until

    async def _incr(self, key: str) -> int:
        assert self._redis is not None
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, WINDOW_SECONDS * 2)
            count, _ = await pipe.execute()
        return int(count)

    async def aclose(self) -> None:
        if self._redis is not None:
            with trio.CancelScope(shield=True):
                await aio_as_trio(self._redis.aclose)()
