"""Cross-pod fan-out through Redis pub/sub (redis.asyncio under trio-asyncio).

Every event this pod accepts is published once to its community's channel; one subscriber
connection per pod receives the other pods' events and delivers them to local
subscriptions. A pod skips its own messages, so nothing is delivered twice. While Redis is
down local delivery goes on, publishing failures are counted and logged, both loops
reconnect with backoff, and storage is untouched: REQ still finds every accepted event.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import redis.asyncio as aioredis
import trio
from redis.exceptions import RedisError
from trio_asyncio import aio_as_trio

from relay.events.model import Event, InvalidEvent, parse_event

log = logging.getLogger(__name__)

QUEUE_EVENTS = 10_000
BATCH_EVENTS = 500
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
POLL_SECONDS = 1.0
CONNECT_TIMEOUT = 5.0
CLOSE_SECONDS = 1.0

REDIS_ERRORS = (RedisError, OSError, TimeoutError)


@dataclass
class BridgeStats:
    published: int = 0
    received: int = 0
    publish_errors: int = 0
    dropped: int = 0
    subscriber_up: bool = False
    publisher_up: bool = False
    reconnects: int = 0


@dataclass
class RedisBridge:
    url: str
    prefix: str
    deliver: Callable[[int, Event, str], None]  # local delivery of the other pods' events
    pod_id: str = field(default_factory=lambda: secrets.token_hex(8))
    stats: BridgeStats = field(default_factory=BridgeStats)

    def __post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[tuple[int, str]](QUEUE_EVENTS)

    def channel(self, community_id: int) -> str:
        return f"{self.prefix}:events:{community_id}"

    def send(self, community_id: int, raw: str) -> None:
        """Queue an accepted event for the other pods; never blocks the caller."""
        try:
            self._send.send_nowait((community_id, raw))
        except trio.WouldBlock:
            self.stats.dropped += 1
            log.warning("redis publish queue full; an event reaches only this pod")

    @property
    def healthy(self) -> bool:
        return self.stats.subscriber_up and self.stats.publisher_up

    async def answers(self) -> bool:
        """Whether Redis answers a PING now. The publish and subscribe loops learn of a
        stalled (not dead) Redis only when a call of theirs times out, if ever."""
        client = self._client()
        try:
            return bool(await aio_as_trio(client.ping)())
        except REDIS_ERRORS:
            return False
        finally:
            with trio.move_on_after(CLOSE_SECONDS) as closing:
                closing.shield = True
                await _close(client)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publish_forever)
            nursery.start_soon(self._subscribe_forever)

    def _client(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self.url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT
        )

    async def _publish_forever(self) -> None:
        backoff = BACKOFF_START
        while True:
            client = self._client()
            batch: list[tuple[int, str]] = []
            try:
                await aio_as_trio(client.ping)()
                self.stats.publisher_up = True
                backoff = BACKOFF_START
                while True:
                    batch = [await self._receive.receive()]
                    while len(batch) < BATCH_EVENTS:
                        try:
                            batch.append(self._receive.receive_nowait())
                        except trio.WouldBlock:
                            break
                    await aio_as_trio(self._publish_batch)(client, batch)
                    self.stats.published += len(batch)
                    batch = []
            except REDIS_ERRORS as exc:
                self.stats.publisher_up = False
                self.stats.publish_errors += len(batch)
                log.warning(
                    "redis publish failed (%s); %d events reach only this pod", exc, len(batch)
                )
            finally:
                with trio.CancelScope(shield=True):
                    await _close(client)
            self.stats.reconnects += 1
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _publish_batch(self, client: aioredis.Redis, batch: list[tuple[int, str]]) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for community_id, raw in batch:
                pipe.publish(self.channel(community_id), f"{self.pod_id} {raw}")
            await pipe.execute()

    async def _subscribe_forever(self) -> None:
        backoff = BACKOFF_START
        while True:
            client = self._client()
            pubsub = client.pubsub()
            try:
                await aio_as_trio(pubsub.psubscribe)(f"{self.prefix}:events:*")
                self.stats.subscriber_up = True
                backoff = BACKOFF_START
                while True:
                    message = await aio_as_trio(pubsub.get_message)(
                        ignore_subscribe_messages=True, timeout=POLL_SECONDS
                    )
                    if message is not None:
                        self._on_message(message)
            except REDIS_ERRORS as exc:
                self.stats.subscriber_up = False
                log.warning("redis subscription lost (%s); retrying in %.1f s", exc, backoff)
            finally:
                with trio.CancelScope(shield=True):
                    await _close(pubsub)
                    await _close(client)
            self.stats.reconnects += 1
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _on_message(self, message: dict[str, object]) -> None:
        channel, data = message.get("channel"), message.get("data")
        if not isinstance(channel, bytes) or not isinstance(data, bytes):
            return
        pod, _, raw = data.decode("utf-8", "replace").partition(" ")
        if pod == self.pod_id:
            return
        try:
            community_id = int(channel.rsplit(b":", 1)[1])
            event = parse_event(orjson.loads(raw))
        except (ValueError, InvalidEvent, orjson.JSONDecodeError):
            log.warning("ignoring a malformed message on %r", channel[:80])
            return
        self.stats.received += 1
        self.deliver(community_id, event, raw)


async def _close(resource: aioredis.Redis | aioredis.client.PubSub) -> None:
    with contextlib.suppress(*REDIS_ERRORS):
        await aio_as_trio(resource.aclose)()
