"""Bulk export and import of one community's events (`relay export`, `relay import`).

The format is JSON Lines: one compact NIP-01 event a line, oldest first (created_at, id).

Export streams the stored, unexpired events in keyset-paginated batches, one database
crossing a batch, so memory stays bounded whatever the size of the community. It reads
without locking the relay: events written while it runs may or may not be included, but
because the output is ordered by created_at, a deletion or a newer replaceable version
written meanwhile comes after what it affects, and importing the file still converges.

Import checks every line as the websocket path checks an EVENT (shape, limits,
created_at not too far in the future, the kind-specific validators, id and signature)
and stores it in file order the way the live relay does (regular events together, as
group commit stores them; the others through `EventStore.save`), so replacement and
NIP-09 deletion rules apply exactly as they do live. Events already expired (NIP-40),
ephemeral events and NIP-42 AUTH events are skipped. Re-running a file stores nothing
twice, so an interrupted import is resumed by running it again. NIP-70 protected events
are stored: the operator vouches for the file. Repositories are not re-created: a kind
30617 announcement is stored as an event only, without reserving its name in the
registry or seeding a git pointer, and a deletion in the file does not release names or
drop pointers. An invalid line is counted and named, and makes the exit status 1 unless the
operator allows it (`--allow-invalid`): the valid lines are stored either way.

Both report progress on stderr (relay/progress.py): events written, lines read.

`relay sync` (relay/sync.py) stores what it fetches from another relay through the same
checks and the same storing path (`check_event`, `store_events`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import BinaryIO, Concatenate, ParamSpec, TypeVar

import asyncpg
import orjson
import trio

from relay.app import open_database
from relay.config import ConfigError, Settings
from relay.errors import OperatorError
from relay.events import kinds, rules
from relay.events.kinds import Storage, storage_class
from relay.events.model import Event, InvalidEvent, parse_event
from relay.git.announce import Announcements
from relay.git.refstate import check_ref_state
from relay.progress import Progress
from relay.protocol.hosts import normalize_host, primary_host
from relay.protocol.limits import Limits
from relay.store.communities import Communities
from relay.store.db import (
    DRIVER_ERRORS,
    UNDEFINED_TABLE,
    Connection,
    Database,
    DatabaseError,
)
from relay.store.embedded import describe_database
from relay.store.events import EventStore, Saved
from relay.store.group_commit import Pending, batchable, save_regular
from relay.store.migrations import migrate

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

EXPORT_BATCH = 5000
# Lines read and checked before their events are stored.
IMPORT_BATCH = 1000
# Invalid lines named in the report; the rest are only counted.
REPORTED_INVALID = 10

# The same kind-specific checks the websocket path runs before storing (see app.wire_git).
VALIDATORS = {
    kinds.REPO_ANNOUNCEMENT: Announcements.check,
    kinds.REPO_STATE: check_ref_state,
}


class UnknownCommunity(ConfigError):
    """The named community does not exist (exit status 2, like a bad setting)."""


class LinesRefused(OperatorError):
    """Import read lines it could not store (exit status 1 unless --allow-invalid)."""


def community_host(settings: Settings, community: str | None) -> str:
    """The normalized host of `--community`, or the first of RELAY_HOSTS."""
    if community is None:
        return primary_host(settings.hosts[0])
    host = normalize_host(community)
    if host is None:
        raise ConfigError(f"--community {community!r} is not a host name")
    return host


async def resolve_community(db: Database, host: str, settings: Settings) -> int:
    """The id of the community `host` names; UnknownCommunity when there is none."""
    try:
        community_id = await Communities(db).resolve(host)
    except DatabaseError as exc:
        if exc.sqlstate != UNDEFINED_TABLE:
            raise
        # Most often the command ran from another directory than the relay's, on a fresh
        # ./relay-data: name the database, so the operator sees which one it was.
        where = describe_database(settings.database_url, settings.data_path)
        raise DatabaseError(
            f"{where} has no relay tables: run `relay migrate`, or point RELAY_DATA_DIR or "
            "RELAY_DATABASE_URL at the relay's database"
        ) from None
    if community_id is None:
        raise UnknownCommunity(f"community {host!r} does not exist in this database")
    return community_id


# -- export --------------------------------------------------------------------------------


async def _export_batch(
    conn: Connection, community_id: int, now: int, after: tuple[int, bytes], limit: int
) -> list[asyncpg.Record]:
    # (created_at, id) > after, spelled so the created_at bound is an index condition.
    return list(
        await conn.fetch(
            "SELECT raw, created_at, id FROM events"
            " WHERE community_id = $1 AND (expires_at IS NULL OR expires_at > $2)"
            " AND created_at >= $3 AND (created_at > $3 OR id > $4)"
            " ORDER BY created_at, id LIMIT $5",
            community_id,
            now,
            after[0],
            after[1],
            limit,
        )
    )


class OutputClosed(OperatorError):
    """Export could not write all its events (exit status 1, with a one-line message)."""


async def export_events(
    db: Database,
    community_id: int,
    out: BinaryIO,
    *,
    now: int,
    batch: int = EXPORT_BATCH,
    progress: Progress | None = None,
) -> int:
    """Write the community's events unexpired at `now` to `out`; returns how many."""
    after: tuple[int, bytes] = (-1, b"")
    total = 0
    while True:
        try:
            rows = await db.run(_export_batch, community_id, now, after, batch)
        except DatabaseError as exc:
            raise DatabaseError(f"reading events failed after {total}: {exc}") from exc
        if not rows:
            return total
        try:
            out.write(b"".join(row["raw"].encode() + b"\n" for row in rows))
            out.flush()
        except BrokenPipeError:
            raise OutputClosed(
                f"export stopped after {total} events: the output was closed"
            ) from None
        total += len(rows)
        if progress is not None:
            progress.update(total)
        last = rows[-1]
        after = (last["created_at"], bytes(last["id"]))
        if len(rows) < batch:
            return total


async def export_command(
    settings: Settings, community: str | None, *, progress: Progress | None = None
) -> None:
    host = community_host(settings, community)
    async with open_database(settings) as db:
        community_id = await resolve_community(db, host, settings)
        try:
            exported = await export_events(
                db, community_id, sys.stdout.buffer, now=int(time.time()), progress=progress
            )
        except OutputClosed:
            # Keep the interpreter from failing again when it flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise
        finally:
            if progress is not None:
                progress.finish()
    print(f"exported {exported} events from {host}", file=sys.stderr)


# -- import --------------------------------------------------------------------------------


@dataclass
class SaveCounts:
    """The outcomes of events stored as import stores them (`store_events`)."""

    stored: int = 0
    duplicate: int = 0
    superseded: int = 0
    deleted: int = 0

    def add_saved(self, outcome: Saved) -> None:
        if outcome is Saved.STORED:
            self.stored += 1
        elif outcome is Saved.DUPLICATE:
            self.duplicate += 1
        elif outcome is Saved.SUPERSEDED:
            self.superseded += 1
        elif outcome is Saved.DELETED:
            self.deleted += 1
        else:  # REFUSED needs a precondition, which an import never passes
            raise AssertionError(f"unexpected save outcome {outcome}")


@dataclass
class ImportReport(SaveCounts):
    read: int = 0
    invalid: int = 0
    skipped: int = 0
    expired: int = 0  # of the skipped: NIP-40 expired
    ephemeral: int = 0  # of the skipped: ephemeral kinds and kind 22242
    problems: list[str] = field(default_factory=list)  # the first invalid lines, named

    def add_invalid(self, line: int, reason: str) -> None:
        self.invalid += 1
        if len(self.problems) < REPORTED_INVALID:
            self.problems.append(f"line {line}: {reason}")

    def render(self, host: str) -> str:
        lines = [
            f"imported into {host}: read {self.read}, stored {self.stored}, "
            f"duplicate {self.duplicate}, superseded {self.superseded}, "
            f"deleted {self.deleted}, invalid {self.invalid}, skipped {self.skipped} "
            f"(expired {self.expired}, ephemeral {self.ephemeral})"
        ]
        lines += [f"  {p}" for p in self.problems]
        if self.invalid > len(self.problems):
            lines.append(f"  ... and {self.invalid - len(self.problems)} more invalid lines")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Skip:
    reason: str  # "expired" or "ephemeral"


def max_line_bytes(limits: Limits) -> int:
    """Longer lines cannot hold an acceptable event (JSON escapes take at most 6 bytes)."""
    return 6 * limits.max_event_bytes + 4096


def read_lines(stream: BinaryIO, max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) for each non-blank line; None for a line longer than max_bytes,
    which is skipped without being held in memory."""
    number = 0
    while True:
        line = stream.readline(max_bytes + 1)
        if not line:
            return
        number += 1
        if len(line) > max_bytes:
            while line and not line.endswith(b"\n"):
                line = stream.readline(max_bytes)
            yield number, None
            continue
        if line.strip():
            yield number, line


def check_line(line: bytes, limits: Limits, now: int) -> Event | Skip | str:
    """The event to store, a reason to skip it, or why the line is invalid."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    return check_event(obj, limits, now)


def check_event(obj: object, limits: Limits, now: int) -> Event | Skip | str:
    """The event to store, a reason to skip it, or why `obj` (a decoded event) is invalid:
    the checks of the websocket path, the kind-specific validators, id and signature."""
    try:
        event = parse_event(obj)
        expiration = rules.expiration_of(event)
    except InvalidEvent as exc:
        return str(exc)
    expired = expiration is not None and expiration <= now
    if not expired:
        # Its expiration test would refuse an expired event, which is skipped instead.
        refusal = rules.check_shape_limits(event, len(event.to_json().encode()), limits, now)
        if refusal is not None:
            return refusal.removeprefix("invalid: ")
    validator = VALIDATORS.get(event.kind)
    refusal = (validator(event) if validator else None) or rules.check_signature(event)
    if refusal is not None:
        return refusal.removeprefix("invalid: ")
    if event.kind == kinds.AUTH or storage_class(event.kind) is Storage.EPHEMERAL:
        return Skip("ephemeral")
    if expired:
        return Skip("expired")
    return event


def _check_batch(
    lines: Iterator[tuple[int, bytes | None]], limits: Limits, max_bytes: int, size: int
) -> list[tuple[int, Event | Skip | str]]:
    """Read and check up to `size` lines (blocking: run in a worker thread)."""
    checked: list[tuple[int, Event | Skip | str]] = []
    now = int(time.time())
    for number, line in lines:
        if line is None:
            checked.append((number, f"line is longer than {max_bytes} bytes"))
        else:
            checked.append((number, check_line(line, limits, now)))
        if len(checked) >= size:
            break
    return checked


class _OnConnection(Database):
    """A Database whose `run` uses one connection the caller already holds on the asyncio
    side: an EventStore over it saves within the batch's one crossing, through exactly the
    code the relay uses."""

    def __init__(self, conn: Connection) -> None:  # no pool: nothing is acquired
        self._conn = conn

    async def run(
        self,
        work: Callable[Concatenate[Connection, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        return await work(self._conn, *args, **kwargs)


@dataclass
class _Saving:
    outcomes: list[Saved] = field(default_factory=list)
    failure: tuple[int, Exception] | None = None  # the line whose event could not be stored


async def _save_batch(
    conn: Connection, community_id: int, events: list[tuple[int, Event]]
) -> _Saving:
    """Save in order; stop at the first failure, keeping what was committed before it.

    Consecutive regular, non-deletion events are stored together, one transaction a run,
    exactly as the relay's group commit stores them live (a duplicate, or an event whose
    deletion is stored, gets the same outcome); any other event is its own transaction
    through `EventStore.save`, so runs never cross a deletion or a replacement and file
    order holds. Transactions commit without waiting for the disk; one synchronous commit
    at the end of the batch then flushes the WAL up to it, so the whole batch is durable
    before it is counted, at the price of one flush."""
    store = EventStore(_OnConnection(conn))
    saving = _Saving()
    line = events[0][0]  # the first line not yet stored, named if storing fails
    run: list[tuple[int, Event]] = []

    async def store_run() -> None:
        nonlocal line
        if run:
            line = run[0][0]
            pending = [Pending(community_id, e, e.to_json()) for _, e in run]
            saving.outcomes.extend(await save_regular(conn, pending))
            run.clear()

    try:
        await conn.execute("SET synchronous_commit = off")
        try:
            for number, event in events:
                if batchable(event):
                    run.append((number, event))
                    continue
                await store_run()
                line = number
                result = await store.save(community_id, event, event.to_json())
                saving.outcomes.append(result.outcome)
            await store_run()
        finally:
            await conn.execute("RESET synchronous_commit")
        # A transaction with an id commits synchronously: WAL is flushed up to here.
        await conn.fetchval("SELECT txid_current()")
    except DRIVER_ERRORS as exc:
        saving.failure = (line, exc)
    return saving


async def import_events(
    db: Database,
    community_id: int,
    stream: BinaryIO,
    limits: Limits,
    report: ImportReport,
    *,
    batch: int = IMPORT_BATCH,
    progress: Progress | None = None,
) -> ImportReport:
    """Store the events of `stream` in file order, counting each line's outcome in `report`.

    Lines are read and checked in a worker thread, a batch at a time; the batch's events
    are then saved in one database crossing, in file order (see _save_batch)."""
    max_bytes = max_line_bytes(limits)
    lines = read_lines(stream, max_bytes)
    while True:
        # Abandoned on cancel (Ctrl-C while stdin waits): nothing reads `lines` afterwards.
        checked = await trio.to_thread.run_sync(
            _check_batch, lines, limits, max_bytes, batch, abandon_on_cancel=True
        )
        if not checked:
            return report
        events: list[tuple[int, Event]] = []
        for number, outcome in checked:
            report.read += 1
            if isinstance(outcome, Event):
                events.append((number, outcome))
            elif isinstance(outcome, Skip):
                report.skipped += 1
                if outcome.reason == "expired":
                    report.expired += 1
                else:
                    report.ephemeral += 1
            else:
                report.add_invalid(number, outcome)
        if events:
            await _store_batch(db, community_id, events, report)
        if progress is not None:
            progress.update(report.read, _import_detail(report))


async def store_events(
    db: Database, community_id: int, events: list[tuple[int, Event]], counts: SaveCounts
) -> tuple[int, Exception] | None:
    """Store checked events in order as import does (see _save_batch), durably before this
    returns, counting each outcome in `counts`. Each event comes with a number naming it
    (a line, a position); the number and the error of the event whose storing failed (it
    and those after it are not stored, those before it are), or None."""
    try:
        saving = await db.run(_save_batch, community_id, events)
    except DatabaseError as exc:  # no connection: nothing of the batch was stored
        saving = _Saving(failure=(events[0][0], exc))
    for saved in saving.outcomes:
        counts.add_saved(saved)
    return saving.failure


async def _store_batch(
    db: Database, community_id: int, events: list[tuple[int, Event]], report: ImportReport
) -> None:
    failure = await store_events(db, community_id, events, report)
    if failure is not None:
        failed_line, error = failure
        raise DatabaseError(
            f"storing the event of line {failed_line} failed: {error}; "
            "run the import again to resume"
        ) from error


def _import_detail(report: ImportReport) -> str:
    return f"stored {report.stored}, invalid {report.invalid}"


@asynccontextmanager
async def open_community(
    settings: Settings, community: str | None
) -> AsyncIterator[tuple[Database, int, str]]:
    """The database with migrations applied and the RELAY_HOSTS communities made, and the
    id and host of `--community` (default the first of RELAY_HOSTS): what a command that
    writes a community's events starts from."""
    host = community_host(settings, community)
    async with open_database(settings) as db:
        applied = await migrate(db)
        if applied:
            log.info("applied migrations %s", applied)
        await Communities(db).ensure(list(settings.hosts))
        yield db, await resolve_community(db, host, settings), host


async def import_command(
    settings: Settings,
    community: str | None,
    *,
    allow_invalid: bool = False,
    progress: Progress | None = None,
) -> None:
    """Import stdin into the community; LinesRefused (exit status 1) when a line was invalid,
    unless `allow_invalid`. The summary is printed either way."""
    report = ImportReport()
    async with open_community(settings, community) as (db, community_id, host):
        if sys.stdin.isatty():
            log.warning("reading events from the terminal; end with Ctrl-D")
        try:
            await import_events(
                db, community_id, sys.stdin.buffer, settings.limits, report, progress=progress
            )
        finally:
            if progress is not None:
                progress.finish()
            print(report.render(host), file=sys.stderr)
    if report.invalid and not allow_invalid:
        raise LinesRefused(
            f"{report.invalid} of {report.read} lines were invalid and not imported (the "
            "others were); --allow-invalid exits 0 for that"
        )
