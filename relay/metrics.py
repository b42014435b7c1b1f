"""Prometheus metrics: counters kept as plain integers where the work happens, read at
scrape time by one collector; latency histograms observed around each backend call. With
several worker processes a scrape answers every worker's metrics, labelled `worker`."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from relay.git.objectstore import CasResult, Found, Listed, ObjectStore

if TYPE_CHECKING:
    from relay.pubsub.fanout import Fanout
    from relay.pubsub.redis_bridge import RedisBridge
    from relay.pubsub.workerbus import WorkerBus

T = TypeVar("T")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.db_seconds = Histogram(
            "relay_db_seconds", "Postgres work per crossing", ["operation"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.object_store_seconds = Histogram(
            "relay_object_store_seconds", "object store requests", ["operation"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        # Counted where they happen; exported by RelayCollector.
        self.events_received = 0
        self.events_accepted = 0
        self.events_refused: Counter[str] = Counter()
        self.git_operations: Counter[tuple[str, str]] = Counter()
        self.slow_consumers = 0

    def observe_db(self, operation: str, seconds: float) -> None:
        self.db_seconds.labels(operation).observe(seconds)

    def count_verdict(self, accepted: bool, message: str) -> None:
        self.events_received += 1
        if accepted:
            self.events_accepted += 1
        else:
            self.events_refused[message.split(":", 1)[0] or "unknown"] += 1

    def bind(
        self, fanout: Fanout, bridge: RedisBridge | None, workers: WorkerBus | None = None
    ) -> None:
        self.registry.register(RelayCollector(fanout, bridge, self, workers))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RelayCollector(Collector):
    def __init__(
        self,
        fanout: Fanout,
        bridge: RedisBridge | None,
        metrics: Metrics,
        workers: WorkerBus | None = None,
    ) -> None:
        self.fanout = fanout
        self.bridge = bridge
        self.metrics = metrics
        self.workers = workers

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        fanout, m = self.fanout, self.metrics
        yield GaugeMetricFamily(
            "relay_connections", "open websocket connections", value=fanout.connection_count()
        )
        yield GaugeMetricFamily(
            "relay_subscriptions", "open subscriptions", value=fanout.subscription_count()
        )
        yield CounterMetricFamily(
            "relay_events_received", "EVENT messages answered", value=m.events_received
        )
        yield CounterMetricFamily(
            "relay_events_accepted", "events answered OK true", value=m.events_accepted
        )
        refused = CounterMetricFamily(
            "relay_events_refused", "events answered OK false, by prefix", labels=["reason"]
        )
        for reason, count in sorted(m.events_refused.items()):
            refused.add_metric([reason], count)
        yield refused
        yield CounterMetricFamily(
            "relay_fanout_deliveries", "live events queued to subscriptions",
            value=fanout.deliveries,
        )  # fmt: skip
        yield CounterMetricFamily(
            "relay_fanout_slow_consumers", "connections dropped for reading too slowly",
            value=m.slow_consumers,
        )  # fmt: skip
        git = CounterMetricFamily(
            "relay_git_operations", "git requests by service and outcome",
            labels=["service", "outcome"],
        )  # fmt: skip
        for (service, outcome), count in sorted(m.git_operations.items()):
            git.add_metric([service, outcome], count)
        yield git
        bridge = self.bridge
        if bridge is not None:
            stats = bridge.stats
            yield GaugeMetricFamily(
                "relay_redis_up", "Redis fan-out connected", value=bridge.healthy
            )
            yield CounterMetricFamily(
                "relay_redis_published", "events published to Redis", value=stats.published
            )
            yield CounterMetricFamily(
                "relay_redis_received", "events received from other pods", value=stats.received
            )
            yield CounterMetricFamily(
                "relay_redis_publish_errors", "events that failed to reach Redis",
                value=stats.publish_errors + stats.dropped,
            )  # fmt: skip
        workers = self.workers
        if workers is not None:
            yield GaugeMetricFamily(
                "relay_worker_bus_up", "connected to the worker bus", value=workers.connected
            )
            yield CounterMetricFamily(
                "relay_worker_bus_sent", "events sent to the other workers", value=workers.sent
            )
            yield CounterMetricFamily(
                "relay_worker_bus_received", "events received from the other workers",
                value=workers.received,
            )  # fmt: skip
            yield CounterMetricFamily(
                "relay_worker_bus_dropped", "events that found the bus queue full",
                value=workers.dropped,
            )  # fmt: skip


def labelled(expositions: dict[int, bytes]) -> bytes:
    """The expositions of several workers as one, every sample labelled with its worker's
    index (`worker="0"`, ...), each metric family once."""
    families: dict[str, Metric] = {}
    for index, text in sorted(expositions.items()):
        for family in text_string_to_metric_families(text.decode()):
            merged = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type, family.unit)
            )
            for sample in family.samples:
                labels = {**sample.labels, "worker": str(index)}
                merged.samples.append(sample._replace(labels=labels))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class TimedObjectStore:
    """An ObjectStore that records the latency of each request."""

    def __init__(self, inner: ObjectStore, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def _timed(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        started = time.perf_counter()
        try:
            return await call()
        finally:
            seconds = time.perf_counter() - started
            self.metrics.object_store_seconds.labels(operation).observe(seconds)

    async def get(self, key: str, max_bytes: int | None = None) -> Found | None:
        return await self._timed("get", lambda: self.inner.get(key, max_bytes))

    async def put(self, key: str, body: bytes, if_match: str | None) -> CasResult:
        operation = "put_create" if if_match is None else "put_replace"
        return await self._timed(operation, lambda: self.inner.put(key, body, if_match))

    async def delete(self, key: str) -> None:
        await self._timed("delete", lambda: self.inner.delete(key))

    async def list(self, prefix: str) -> list[Listed]:
        return await self._timed("list", lambda: self.inner.list(prefix))

    async def aclose(self) -> None:
        await self.inner.aclose()
