"""NIP-77 on a websocket connection: the relay's side of negentropy set reconciliation.

A NEG-OPEN reads the (created_at, id) of the community's stored, unexpired events that
match the filter (keys only, oldest first), at most RELAY_NEG_MAX_RECORDS of them, builds
the negentropy storage and answers the client's first message; each NEG-MSG answers the
next. The negentropy work runs in a worker thread (hundreds of thousands of ids are
hashed and compared), never on the event loop. Every answer is one frame to send:
NEG-MSG, or NEG-ERR after which the session is gone.
"""

from __future__ import annotations

import logging
import time

import trio

from relay.protocol import messages as msg
from relay.protocol.limits import Limits
from relay.protocol.negentropy import Negentropy, NegentropyError, Storage
from relay.protocol.session import Session
from relay.store.db import DatabaseError
from relay.store.events import EventStore, QueryTooExpensive

log = logging.getLogger(__name__)

CLOSED_IDLE = "closed: the negentropy session was idle too long, or was never opened"


async def open_session(
    store: EventStore, community_id: int, session: Session, request: msg.ClientNegOpen
) -> str:
    limits = session.limits
    now = trio.current_time()
    refusal = session.neg_room(request.sub_id, now)
    if refusal is not None:
        return msg.neg_err(request.sub_id, refusal)
    try:
        items = await store.items(
            community_id, request.filter, int(time.time()), limits.max_neg_records
        )
    except QueryTooExpensive:
        return msg.neg_err(request.sub_id, "blocked: query too expensive")
    except DatabaseError as exc:
        log.error("NEG-OPEN failed: %s", exc)
        return msg.neg_err(request.sub_id, "error: the query could not be run, try again")
    if items is None:
        return _too_many(request.sub_id, limits)
    try:
        reconciler, reply = await trio.to_thread.run_sync(
            _start, items, request.message, limits.neg_frame_bytes
        )
    except NegentropyError as exc:
        return msg.neg_err(request.sub_id, f"invalid: {exc}")
    except ValueError as exc:  # stored rows negentropy cannot order (a negative created_at)
        log.error("NEG-OPEN could not use the stored events: %s", exc)
        return msg.neg_err(request.sub_id, "error: these events cannot be reconciled")
    session.neg_start(request.sub_id, reconciler, trio.current_time())
    return msg.neg_msg(request.sub_id, reply)


async def continue_session(session: Session, request: msg.ClientNegMsg) -> str:
    found = session.neg_session(request.sub_id, trio.current_time())
    if found is None:
        return msg.neg_err(request.sub_id, CLOSED_IDLE)
    try:
        reply = await trio.to_thread.run_sync(found.reconciler.reconcile_server, request.message)
    except NegentropyError as exc:
        session.neg_close(request.sub_id)
        return msg.neg_err(request.sub_id, f"invalid: {exc}")
    return msg.neg_msg(request.sub_id, reply)


def _start(
    items: list[tuple[int, bytes]], first: bytes, frame_bytes: int
) -> tuple[Negentropy, bytes]:
    reconciler = Negentropy(Storage(items), frame_size_limit=frame_bytes)
    return reconciler, reconciler.reconcile_server(first)


def _too_many(sub_id: str, limits: Limits) -> str:
    reason = (
        f"blocked: too many records: more than {limits.max_neg_records} events match this "
        "filter; narrow it (since/until, kinds, authors)"
    )
    return msg.neg_err(sub_id, reason, limits.max_neg_records)
