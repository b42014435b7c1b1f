"""`relay sync URL`: reconcile a community with another relay over NIP-77, then move the
difference.

This side is the negentropy client. It reads the (created_at, id) keys of the community's
stored, unexpired events that match the filter (at most RELAY_NEG_MAX_RECORDS of them),
opens one websocket to the remote relay, sends NEG-OPEN with the filter and its first
message, and answers each NEG-MSG until the reconciliation is done: by then it knows the
ids it has that the remote lacks ("have") and the ids the remote has that it lacks
("need"). It works with any NIP-77 relay (protocol version 0x61); a remote that answers in
another version, or with NEG-ERR, stops the command with one line.

Down, the needed events are asked for by id (REQ, `--batch` ids at a time) and each batch
is checked and stored exactly as `relay import` stores a batch (relay/transfer.py: id and
signature, the kind validators, replacement and NIP-09 deletion rules, NIP-34 events as
plain events), durably before the next REQ: a sync interrupted anywhere resumes when run
again, since the next reconciliation finds only what is still missing. Up, the events the
remote lacks are read from the store by id (a batch at a time, their raw JSON as stored)
and sent with EVENT, each OK read; a refusal is counted and named, not fatal. Both goes
down first, so that what the remote's deletions and newer versions remove here is not sent
back up. Rate-limited answers (`rate-limited:`) are retried after a pause.

Progress goes to stderr (relay/progress.py), then a summary. The exit status is 1 when a
fetched event was invalid or a sent one refused (everything else is done all the same).
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import trio
import trio_websocket

from relay.client import RelayError, UsageError, connection_failure, next_frame, relay_url
from relay.config import Settings
from relay.errors import OperatorError, redact_urls
from relay.events.model import Event
from relay.progress import Progress
from relay.protocol.filters import Filter, InvalidFilter, parse_filter
from relay.protocol.limits import Limits
from relay.protocol.negentropy import (
    PROTOCOL_VERSION,
    Negentropy,
    NegentropyError,
    Storage,
    UnsupportedVersionError,
    from_hex,
    to_hex,
)
from relay.store.db import Database, DatabaseError
from relay.store.events import EventStore
from relay.transfer import (
    SaveCounts,
    Skip,
    check_event,
    open_community,
    store_events,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
ProgressFactory = Callable[[str, str], Progress]

# How long the remote may take over any one answer (and the websocket handshake).
REPLY_SECONDS = 30.0
# The largest message taken from the remote (an event bigger than this side stores is
# refused by the checks, not by the socket).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# EVENTs sent before their OKs are read.
SEND_WINDOW = 100
# Pauses (seconds) before sending again what the remote answered `rate-limited:`.
RATE_LIMIT_PAUSES = (1, 2, 4, 8, 16, 30)
# The store's queries in a command may take their time (the relay's REQ timeout is short).
QUERY_TIMEOUT_SECONDS = 600.0
# Problems (invalid or refused events) named in the summary; the rest are only counted.
REPORTED_PROBLEMS = 10
NEG_SUB = "relay-sync"


class TooManyRecords(UsageError):
    """More events match the filter here than one reconciliation may cover (exit 2)."""


class RemoteRefused(RelayError):
    """The remote answered NEG-ERR or CLOSED, or spoke a protocol this side cannot."""


class SyncIncomplete(OperatorError):
    """Some fetched events were invalid or some sent ones refused (exit status 1)."""


@dataclass(frozen=True)
class SyncOptions:
    url: str
    filter: dict[str, Any]  # as sent to the remote
    parsed: Filter  # as the local store reads it
    direction: str  # down, up or both
    batch: int


def parse_options(
    url: str, filter_json: str | None, direction: str, batch: int, limits: Limits
) -> SyncOptions:
    """The command's arguments checked; UsageError (exit 2) for one it cannot use."""
    if not url.strip():
        raise UsageError("the remote URL must be a ws:// or wss:// URL with a host")
    remote = relay_url(url)
    try:
        obj = orjson.loads(filter_json if filter_json is not None else "{}")
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"--filter is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise UsageError("--filter must be a JSON object (a NIP-01 filter), e.g. '{\"kinds\":[1]}'")
    try:
        parsed = parse_filter(obj, limits)
    except InvalidFilter as exc:
        raise UsageError(f"--filter: {exc}") from None
    if direction not in ("down", "up", "both"):
        raise UsageError(f"--direction must be down, up or both, not {direction!r}")
    if batch < 1:
        raise UsageError(f"--batch must be at least 1, not {batch}")
    return SyncOptions(remote, obj, parsed, direction, batch)


@dataclass
class SyncReport(SaveCounts):
    keys: int = 0  # this side's keys reconciled
    have: int = 0  # this side has, the remote lacks
    need: int = 0  # the remote has, this side lacks
    reconciled: bool = False
    fetched: int = 0
    invalid: int = 0
    skipped: int = 0  # fetched but expired or ephemeral: not stored, as import skips them
    sent: int = 0  # EVENTs whose OK was read
    accepted: int = 0  # OK true, or `duplicate:` (the remote holds it or a newer version)
    refused: int = 0
    gone: int = 0  # reconciled, but deleted, replaced or expired before it was moved
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < REPORTED_PROBLEMS:
            self.problems.append(text)

    def render(self, host: str, url: str, direction: str) -> str:
        lines = [
            f"synced {host} with {redact_urls(url)} ({direction}): keys {self.keys}, "
            f"have {self.have}, need {self.need}, fetched {self.fetched}, "
            f"stored {self.stored}, duplicate {self.duplicate}, "
            f"superseded {self.superseded}, deleted {self.deleted}, invalid {self.invalid}, "
            f"skipped {self.skipped}, sent {self.sent}, accepted {self.accepted}, "
            f"refused {self.refused}, gone {self.gone}"
        ]
        lines += [f"  {p}" for p in self.problems]
        more = self.invalid + self.refused - len(self.problems)
        if more > 0:
            lines.append(f"  ... and {more} more invalid or refused events")
        return "\n".join(lines)


def _words(value: object, limit: int = 300) -> str:
    """A remote's text on one line, at most `limit` characters."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the websocket ---------------------------------------------------------------------------


class Remote:
    """The websocket to the remote relay: frames out, and frames in, each within
    REPLY_SECONDS. NOTICEs are kept (the last one is named if the connection fails)."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, url: str) -> None:
        self.ws = ws
        self.url = url
        self.notice: str | None = None

    async def send(self, frame: list[Any] | str) -> None:
        await self.ws.send_message(
            frame if isinstance(frame, str) else orjson.dumps(frame).decode()
        )

    async def receive(self) -> list[Any]:
        with trio.fail_after(REPLY_SECONDS):
            while True:
                frame = await next_frame(self.ws)
                if frame[0] == "NOTICE":
                    self.notice = _words(frame[1]) if len(frame) > 1 else ""
                    continue
                return frame


async def talk(url: str, work: Callable[[Remote], Awaitable[T]]) -> T:
    """Open a websocket to `url`, run `work` on it, close it. A connection that fails (or an
    answer that takes over REPLY_SECONDS) is a RelayError of one line; once `work` is done
    or has failed on its own, a close that goes wrong changes nothing."""
    done: list[T] = []
    failed: list[OperatorError] = []
    remote: Remote | None = None
    try:
        async with trio_websocket.open_websocket_url(
            url, connect_timeout=REPLY_SECONDS, disconnect_timeout=1,
            max_message_size=MAX_MESSAGE_BYTES,
        ) as ws:  # fmt: skip
            remote = Remote(ws, url)
            try:
                done.append(await work(remote))
            except OperatorError as exc:
                failed.append(exc)
    except (
        trio.TooSlowError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed, OSError
    ) as exc:  # fmt: skip
        if not done and not failed:
            error = connection_failure(url, REPLY_SECONDS, exc)
            if remote is not None and remote.notice:
                error = RelayError(f"{error} (its last NOTICE: {remote.notice!r})")
            raise error from None
    if failed:
        raise failed[0]
    return done[0]


# -- reconciliation --------------------------------------------------------------------------


async def reconcile(
    remote: Remote,
    items: list[tuple[int, bytes]],
    flt: dict[str, Any],
    frame_bytes: int,
    progress: Progress | None = None,
) -> tuple[list[bytes], list[bytes]]:
    """NIP-77 as the client holding `items`: (ids this side has that the remote lacks, ids
    the remote has that this side lacks)."""

    def start() -> tuple[Negentropy, bytes]:
        client = Negentropy(Storage(items), frame_size_limit=frame_bytes)
        return client, client.initiate()

    client, first = await trio.to_thread.run_sync(start)
    await remote.send(["NEG-OPEN", NEG_SUB, flt, to_hex(first)])
    have: list[bytes] = []
    need: list[bytes] = []
    trips = 0
    while True:
        frame = await remote.receive()
        if len(frame) < 2 or frame[1] != NEG_SUB or frame[0] not in ("NEG-MSG", "NEG-ERR"):
            continue
        if frame[0] == "NEG-ERR":
            reason = _words(frame[2]) if len(frame) > 2 else "no reason given"
            limit = f" (it covers at most {frame[3]} events)" if len(frame) > 3 else ""
            raise RemoteRefused(f"{remote.url} refused the reconciliation: {reason}{limit}")
        try:
            message = from_hex(frame[2] if len(frame) > 2 else "")
            reply, got_have, got_need = await trio.to_thread.run_sync(
                client.reconcile_client, message
            )
        except UnsupportedVersionError as exc:
            raise RemoteRefused(
                f"{remote.url} cannot reconcile with this relay: {exc} (NIP-77 version "
                f"0x{PROTOCOL_VERSION:02x} is the one this relay speaks)"
            ) from None
        except NegentropyError as exc:
            raise RemoteRefused(
                f"{remote.url} sent a negentropy message this relay cannot read: {exc}"
            ) from None
        trips += 1
        have += got_have
        need += got_need
        if progress is not None:
            detail = f"{len(items)} keys here, have {len(have)}, need {len(need)}"
            progress.update(trips, detail)
        if reply is None:
            await remote.send(["NEG-CLOSE", NEG_SUB])
            return have, need
        await remote.send(["NEG-MSG", NEG_SUB, to_hex(reply)])


# -- down: fetch and store -------------------------------------------------------------------


async def _request(remote: Remote, sub: str, ids: list[str]) -> dict[str, Any]:
    """The events the remote answers a REQ for `ids` with, by the id they claim (only those
    asked for); a `rate-limited:` CLOSED is retried after a pause, any other CLOSED is a
    RemoteRefused."""
    wanted = set(ids)
    for pause in (*RATE_LIMIT_PAUSES, None):
        await remote.send(["REQ", sub, {"ids": ids, "limit": len(ids)}])
        got: dict[str, Any] = {}
        while True:
            frame = await remote.receive()
            if len(frame) < 2 or frame[1] != sub:
                continue
            if frame[0] == "EVENT" and len(frame) > 2 and isinstance(frame[2], dict):
                claimed = frame[2].get("id")
                if isinstance(claimed, str) and claimed in wanted:
                    got[claimed] = frame[2]
            elif frame[0] == "EOSE":
                await remote.send(["CLOSE", sub])
                return got
            elif frame[0] == "CLOSED":
                reason = _words(frame[2]) if len(frame) > 2 else "no reason given"
                if not reason.startswith("rate-limited:") or pause is None:
                    hint = "; a smaller --batch may do" if "too many" in reason else ""
                    raise RemoteRefused(
                        f"{remote.url} refused to send {len(ids)} events by id: {reason}{hint}"
                    )
                log.info("%s is rate-limiting REQs; again in %s s", remote.url, pause)
                await trio.sleep(pause)
                break
    raise AssertionError("unreachable")  # the last pass raises or returns


def _check_all(fetched: dict[str, Any], limits: Limits) -> list[tuple[str, Event | Skip | str]]:
    """Check fetched events (blocking: signatures; run in a worker thread)."""
    now = int(time.time())
    return [(event_id, check_event(obj, limits, now)) for event_id, obj in fetched.items()]


async def fetch(
    remote: Remote,
    db: Database,
    community_id: int,
    need: list[bytes],
    batch: int,
    limits: Limits,
    report: SyncReport,
    progress: Progress | None = None,
) -> None:
    """Fetch the `need` ids by REQ, `batch` at a time, and store each batch (durably) before
    asking for the next. Ids the remote leaves out of an answer that brought others are
    asked for again (it may cap a REQ's limit); those left out of an answer that brought
    none are gone."""
    queue = deque(i.hex() for i in need)
    subs = itertools.count(1)
    while queue:
        ids = [queue.popleft() for _ in range(min(batch, len(queue)))]
        fetched = await _request(remote, f"sync-{next(subs)}", ids)
        missing = [i for i in ids if i not in fetched]
        if fetched:
            queue.extendleft(reversed(missing))
        else:
            report.gone += len(missing)
        report.fetched += len(fetched)
        events: list[Event] = []
        for event_id, outcome in await trio.to_thread.run_sync(_check_all, fetched, limits):
            if isinstance(outcome, Event):
                events.append(outcome)
            elif isinstance(outcome, Skip):
                report.skipped += 1
            else:
                report.invalid += 1
                report.problem(f"event {event_id} from the remote is invalid: {outcome}")
        # Oldest first, as an export file orders them: a deletion after what it deletes.
        events.sort(key=lambda e: (e.created_at, e.id))
        if events:
            failure = await store_events(db, community_id, list(enumerate(events)), report)
            if failure is not None:
                index, error = failure
                raise DatabaseError(
                    f"storing event {events[index].id} failed: {error}; run the sync again "
                    "to resume"
                ) from error
        if progress is not None:
            progress.update(report.fetched, f"stored {report.stored}, invalid {report.invalid}")


# -- up: read and send -----------------------------------------------------------------------


async def _publish(remote: Remote, window: list[tuple[str, str]], report: SyncReport) -> None:
    """Send the (id, raw JSON) events and read each OK; those answered `rate-limited:` are
    sent again after a pause."""
    pending = dict(window)
    for pause in (*RATE_LIMIT_PAUSES, None):
        for raw in pending.values():
            await remote.send(f'["EVENT",{raw}]')
        waiting = set(pending)
        again: dict[str, str] = {}
        while waiting:
            frame = await remote.receive()
            if frame[0] != "OK" or len(frame) < 3 or frame[1] not in waiting:
                continue
            event_id = frame[1]
            waiting.discard(event_id)
            message = _words(frame[3]) if len(frame) > 3 else ""
            limited = frame[2] is not True and message.startswith("rate-limited:")
            if limited and pause is not None:
                again[event_id] = pending[event_id]
                continue
            report.sent += 1
            if frame[2] is True or message.startswith("duplicate:"):
                report.accepted += 1
            else:
                report.refused += 1
                report.problem(f"event {event_id} refused by the remote: {message or 'no reason'}")
        if not again or pause is None:
            return
        log.info("%s is rate-limiting EVENTs; again in %s s", remote.url, pause)
        await trio.sleep(pause)
        pending = again


async def send(
    remote: Remote,
    store: EventStore,
    community_id: int,
    have: list[str],
    batch: int,
    report: SyncReport,
    progress: Progress | None = None,
) -> None:
    """Send the `have` events, read from the store `batch` at a time, SEND_WINDOW in flight.
    Those no longer stored (deleted or replaced since, by this sync's own fetches too) are
    gone, not sent."""
    for start in range(0, len(have), batch):
        ids = have[start : start + batch]
        rows = dict(
            await store.query(community_id, (Filter(ids=frozenset(ids)),), int(time.time()))
        )
        report.gone += len(ids) - len(rows)
        ordered = [(i, rows[i]) for i in ids if i in rows]
        for first in range(0, len(ordered), SEND_WINDOW):
            await _publish(remote, ordered[first : first + SEND_WINDOW], report)
            if progress is not None:
                progress.update(
                    report.sent, f"accepted {report.accepted}, refused {report.refused}"
                )


# -- the command -----------------------------------------------------------------------------


async def sync_command(
    settings: Settings,
    options: SyncOptions,
    community: str | None,
    *,
    progress: ProgressFactory | None = None,
) -> None:
    """Reconcile the community with the relay at `options.url` and move the difference as
    `options.direction` says; the summary goes to stderr once reconciled. SyncIncomplete
    (exit status 1) when a fetched event was invalid or a sent one refused."""
    report = SyncReport()
    async with open_community(settings, community) as (db, community_id, host):
        store = EventStore(db, QUERY_TIMEOUT_SECONDS)
        limit = settings.max_neg_records
        items = await store.items(community_id, options.parsed, int(time.time()), limit)
        if items is None:
            raise TooManyRecords(
                f"more than {limit} events of {host} match the filter, over "
                "RELAY_NEG_MAX_RECORDS: narrow --filter (since/until, kinds, authors) or "
                "raise the setting"
            )
        report.keys = len(items)

        async def work(remote: Remote) -> None:
            step = progress("sync", "round trips") if progress else None
            try:
                have, need = await reconcile(
                    remote, items, options.filter, settings.neg_frame_bytes, step
                )
            finally:
                if step is not None:
                    step.finish()
            report.have, report.need, report.reconciled = len(have), len(need), True
            if options.direction in ("down", "both"):
                step = progress("sync down", "events") if progress else None
                try:
                    await fetch(
                        remote, db, community_id, need, options.batch, settings.limits,
                        report, step,
                    )  # fmt: skip
                finally:
                    if step is not None:
                        step.finish()
            if options.direction in ("up", "both"):
                # Oldest first: what a deletion or a newer version refers to goes before it.
                created = {i: t for t, i in items}
                ours = sorted(have, key=lambda i: (created[i], i))
                step = progress("sync up", "events") if progress else None
                try:
                    await send(
                        remote, store, community_id, [i.hex() for i in ours], options.batch,
                        report, step,
                    )  # fmt: skip
                finally:
                    if step is not None:
                        step.finish()

        try:
            await talk(options.url, work)
        finally:
            if report.reconciled:
                print(report.render(host, options.url, options.direction), file=sys.stderr)
    if report.invalid or report.refused:
        raise SyncIncomplete(
            f"{report.invalid} fetched events were invalid and {report.refused} sent events "
            "were refused by the remote (the others were stored and sent)"
        )
