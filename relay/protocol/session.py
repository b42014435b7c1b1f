"""The per-connection protocol state, without I/O: subscriptions and authenticated keys."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from relay.events.model import Event
from relay.protocol.filters import Filter, matches_any
from relay.protocol.limits import Limits

if TYPE_CHECKING:
    from relay.protocol.negentropy import Negentropy


@dataclass
class Subscription:
    filters: tuple[Filter, ...]
    # Live events that matched while the stored ones were being read; None once live.
    backlog: list[tuple[str, str]] | None = field(default_factory=list)
    backlog_bytes: int = 0

    def hold(self, event_id: str, raw: str, max_bytes: int) -> bool:
        """Keep a live event until the stored ones are sent; False once the held events
        are over `max_bytes` (the client reads too slowly to keep up)."""
        assert self.backlog is not None
        self.backlog.append((event_id, raw))
        self.backlog_bytes += len(raw)
        return self.backlog_bytes <= max_bytes


@dataclass
class NegSession:
    """One NIP-77 reconciliation the client has open (the relay is the server side)."""

    reconciler: Negentropy
    last_used: float


@dataclass
class Session:
    """One websocket connection's view of the protocol (NIP-01 subscriptions, NIP-42)."""

    host: str
    limits: Limits
    # Every name of the connection's community (NIP-42 `relay` tags may use any); shared by
    # the community's connections.
    names: frozenset[str] = frozenset()
    challenge: str = field(default_factory=lambda: secrets.token_hex(16))
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    # Immutable, so each EVENT can take it as it is; at most limits.max_auth_keys keys.
    authenticated: frozenset[str] = frozenset()
    # NIP-77 sessions by id; None until the first (most connections never sync).
    negentropy: dict[str, NegSession] | None = None

    @property
    def hosts(self) -> frozenset[str]:
        return self.names or frozenset({self.host})

    def authenticate(self, pubkey: str) -> str | None:
        """Add a key that passed NIP-42; the refusal reason if the connection has its
        limit of keys already (each key is rate-limited on every later message)."""
        if pubkey in self.authenticated:
            return None
        if len(self.authenticated) >= self.limits.max_auth_keys:
            return (
                "blocked: too many keys authenticated on this connection "
                f"(max {self.limits.max_auth_keys})"
            )
        self.authenticated |= {pubkey}
        return None

    def open(self, sub_id: str, filters: tuple[Filter, ...]) -> str | None:
        """Add or replace a subscription, live events held back until `go_live`.

        Returns the refusal reason, or None.
        """
        if sub_id not in self.subscriptions and len(self.subscriptions) >= (
            self.limits.max_subscriptions
        ):
            return f"blocked: too many open subscriptions (max {self.limits.max_subscriptions})"
        self.subscriptions[sub_id] = Subscription(filters)
        return None

    def close(self, sub_id: str) -> bool:
        return self.subscriptions.pop(sub_id, None) is not None

    def matching(self, event: Event, sub_ids: set[str]) -> list[tuple[str, Subscription]]:
        """Those of `sub_ids` (the candidates) that should receive this live event, in
        the order they were opened."""
        return [
            (sid, sub)
            for sid, sub in self.subscriptions.items()
            if sid in sub_ids and matches_any(sub.filters, event)
        ]

    def route_live(
        self, event: Event, raw: str, sub_ids: set[str], max_held_bytes: int
    ) -> tuple[list[str], int, bool]:
        """A live event for this connection: the subscriptions to send it to now (in the
        order they were opened), how many held it back (still sending stored events), and
        whether a hold grew past `max_held_bytes` (then the connection is given up)."""
        send: list[str] = []
        held = 0
        for sub_id, sub in self.matching(event, sub_ids):
            if sub.backlog is None:
                send.append(sub_id)
            elif sub.hold(event.id, raw, max_held_bytes):
                held += 1
            else:
                return send, held, True
        return send, held, False

    # -- NIP-77 ----------------------------------------------------------------------------

    def neg_room(self, sub_id: str, now: float) -> str | None:
        """Before a NEG-OPEN: drop sessions idle past the limit, close one of the same id
        (NIP-77: a new NEG-OPEN replaces it); the refusal when the connection already has
        limits.max_neg_sessions open, or None."""
        sessions = self.negentropy
        if sessions is None:
            return None
        self._neg_expire(now)
        sessions.pop(sub_id, None)
        if len(sessions) >= self.limits.max_neg_sessions:
            return (
                "blocked: too many negentropy sessions open on this connection "
                f"(max {self.limits.max_neg_sessions})"
            )
        return None

    def neg_start(self, sub_id: str, reconciler: Negentropy, now: float) -> None:
        if self.negentropy is None:
            self.negentropy = {}
        self.negentropy[sub_id] = NegSession(reconciler, now)

    def neg_session(self, sub_id: str, now: float) -> NegSession | None:
        """The open session `sub_id`, touched; None when there is none (never opened,
        closed, or idle past limits.neg_idle_seconds)."""
        self._neg_expire(now)
        found = (self.negentropy or {}).get(sub_id)
        if found is not None:
            found.last_used = now
        return found

    def neg_close(self, sub_id: str) -> bool:
        return self.negentropy is not None and self.negentropy.pop(sub_id, None) is not None

    def _neg_expire(self, now: float) -> None:
        if not self.negentropy:
            return
        idle = self.limits.neg_idle_seconds
        for sub_id in [s for s, neg in self.negentropy.items() if now - neg.last_used > idle]:
            del self.negentropy[sub_id]

    def go_live(self, sub_id: str, sent_ids: set[str]) -> list[str]:
        """End the stored phase; returns held-back events not already sent, oldest first."""
        sub = self.subscriptions.get(sub_id)
        if sub is None or sub.backlog is None:
            return []
        held, sub.backlog, sub.backlog_bytes = sub.backlog, None, 0
        return [raw for event_id, raw in held if event_id not in sent_ids]
