"""Every hard limit of the relay, and its rate limits, in one place. Each is a setting; the
hard limits are advertised in NIP-11, the rate limits too while they are on."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

# Client addresses and pubkeys whose token buckets are kept; the least recent go first.
MAX_TRACKED_KEYS = 100_000


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int = 128 * 1024
    max_event_bytes: int = 64 * 1024
    max_subscriptions: int = 200
    max_filters: int = 10
    max_limit: int = 500
    default_limit: int = 500
    max_event_tags: int = 2000
    max_tag_value_bytes: int = 1024
    max_subid_length: int = 64
    max_filter_values: int = 1000
    max_future_seconds: int = 15 * 60
    auth_window_seconds: int = 10 * 60
    max_auth_keys: int = 8
    max_outbound_bytes: int = 16 * 1024 * 1024
    # NIP-77: negentropy sessions open at once on a connection, events one may cover, how
    # long one may sit idle, and the largest negentropy message the relay sends (bytes
    # before hex: the NEG-MSG frame is twice that, plus a little).
    max_neg_sessions: int = 8
    max_neg_records: int = 500_000
    neg_idle_seconds: float = 60.0
    neg_frame_bytes: int = 60_000

    def nip11(self) -> dict[str, object]:
        """The NIP-11 `limitation` block (standard keys, then this relay's own)."""
        return {
            "max_message_length": self.max_message_bytes,
            "max_subscriptions": self.max_subscriptions,
            "max_limit": self.max_limit,
            "default_limit": self.default_limit,
            "max_subid_length": self.max_subid_length,
            "max_event_tags": self.max_event_tags,
            "created_at_upper_limit": self.max_future_seconds,
            "auth_required": False,
            "payment_required": False,
            "restricted_writes": False,
            "max_event_bytes": self.max_event_bytes,
            "max_tag_value_bytes": self.max_tag_value_bytes,
            "max_filters": self.max_filters,
            "max_filter_values": self.max_filter_values,
            "max_outbound_bytes": self.max_outbound_bytes,
            "max_auth_keys": self.max_auth_keys,
        }


@dataclass(frozen=True, slots=True)
class Rate:
    per_second: float
    burst: int


@dataclass(frozen=True, slots=True)
class RateLimits:
    enabled: bool = True
    events: Rate = Rate(50, 500)
    reqs: Rate = Rate(20, 200)
    connections: Rate = Rate(10, 100)

    def rate_of(self, action: str) -> Rate:
        """The rate of an action: `event`, `req`, or `connect`."""
        return {"event": self.events, "req": self.reqs}.get(action, self.connections)

    def nip11(self) -> dict[str, object]:
        if not self.enabled:
            return {}
        return {
            "rate_limits": {
                "events_per_second": self.events.per_second,
                "events_burst": self.events.burst,
                "reqs_per_second": self.reqs.per_second,
                "reqs_burst": self.reqs.burst,
                "connections_per_second": self.connections.per_second,
                "connections_burst": self.connections.burst,
            }
        }


class TokenBuckets:
    """Buckets keyed by (action, who), the least recently used forgotten past a cap."""

    def __init__(self) -> None:
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    def take(self, action: str, who: str, rate: Rate, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        key = (action, who)
        tokens, last = self._buckets.pop(key, (float(rate.burst), now))
        tokens = min(float(rate.burst), tokens + (now - last) * rate.per_second)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > MAX_TRACKED_KEYS:
            self._buckets.popitem(last=False)
        return allowed
