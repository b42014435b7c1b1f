"""`relay sync URL` as an operator runs it: two real relays on separate databases reconcile
over NIP-77 and converge (down, up or both), an interrupted sync resumes, and what goes
wrong (arguments, an unreachable relay, a remote that refuses, speaks another negentropy
version or serves forged events) is one line and the right exit status."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio_websocket

from relay.events import kinds
from relay.events.model import Event
from relay.protocol.negentropy import Negentropy, Storage
from tests.helpers import RELAY_CLI, clean_environ, connect, make_event, new_key, sql
from tests.services import admin_sql, database_url, free_port, start_relay

HOST = "127.0.0.1"
WebSocket = trio_websocket.WebSocketConnection


@pytest.fixture
def other_db_url(template_database: str) -> Iterator[str]:
    """A second fresh, migrated database: the other relay's."""
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    admin_sql(f"CREATE DATABASE {name} TEMPLATE {template_database}")
    yield database_url(name)
    admin_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def sync_env(db_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        **clean_environ(),
        "RELAY_DATABASE_URL": db_url,
        "RELAY_DATA_DIR": str(data_dir),
        "RELAY_HOSTS": HOST,
        "RELAY_LOG_LEVEL": "warning",
        **extra,
    }


async def run_sync(
    args: list[str], db_url: str, data_dir: Path, **extra: str
) -> subprocess.CompletedProcess[bytes]:
    """`relay sync ARGS` on the database at `db_url`; fails the test on a traceback."""
    with trio.fail_after(120):
        result = await trio.run_process(
            [*RELAY_CLI, "sync", *args],
            capture_stdout=True,
            capture_stderr=True,
            env=sync_env(db_url, data_dir, **extra),
            check=False,
        )
    assert b"Traceback" not in result.stderr, result.stderr.decode()
    return result


def one_line(result: subprocess.CompletedProcess[bytes]) -> str:
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, result.stderr.decode()
    return lines[0]


def summary(stderr: bytes) -> dict[str, int]:
    """The counts of the summary line (`synced HOST with URL (DIRECTION): keys 3, ...`)."""
    line = next(ln for ln in stderr.decode().splitlines() if ln.startswith("synced "))
    counts = line.split("): ", 1)[1]
    return {k: int(v) for k, v in (part.split(" ") for part in counts.split(", "))}


def moved(**nonzero: int) -> dict[str, int]:
    """The summary's transfer counts (all but keys, have and need): zero unless named."""
    names = ("fetched", "stored", "duplicate", "superseded", "deleted", "invalid", "skipped",
             "sent", "accepted", "refused", "gone")  # fmt: skip
    return {name: nonzero.get(name, 0) for name in names}


def transfers(stderr: bytes) -> dict[str, int]:
    counts = summary(stderr)
    return {k: v for k, v in counts.items() if k not in ("keys", "have", "need")}


def assert_failed_naming(
    result: subprocess.CompletedProcess[bytes], named: str, *, invalid: int, refused: int
) -> None:
    """Exit 1, a line starting with `named`, and the last line counting what failed."""
    assert result.returncode == 1, result.stderr.decode()
    lines = result.stderr.decode().strip().splitlines()
    assert any(line.strip().startswith(named) for line in lines), lines
    assert lines[-1] == (
        f"relay: {invalid} fetched events were invalid and {refused} sent events were refused"
        " by the remote (the others were stored and sent)"
    )


async def publish_all(port: int, events: list[Event]) -> None:
    async with connect(port) as client:
        await client.publish_many(events, window=100)


async def ids_on(db_url: str, host: str = HOST) -> set[str]:
    rows = await sql(
        db_url,
        "SELECT e.id FROM events e JOIN communities c ON c.id = e.community_id WHERE c.host = $1",
        host,
    )
    return {bytes(r["id"]).hex() for r in rows}


def ids(*groups: list[Event] | Event) -> set[str]:
    found: set[str] = set()
    for group in groups:
        found |= {group.id} if isinstance(group, Event) else {e.id for e in group}
    return found


# -- converging --------------------------------------------------------------------------------


async def test_both_directions_converge_and_a_second_run_moves_nothing(
    nursery: trio.Nursery, db_url: str, other_db_url: str, tmp_path: Path
) -> None:
    here = await start_relay(nursery, db_url, tmp_path / "a")
    there = await start_relay(nursery, other_db_url, tmp_path / "b")
    key = new_key()
    base = int(time.time()) - 10_000
    shared = [make_event(key, created_at=base + i // 3) for i in range(300)]  # ties too
    only_here = [make_event(key, created_at=base + 1000 + i) for i in range(40)]
    only_there = [make_event(key, created_at=base + 1000 + i) for i in range(30)]
    # Replaceable: here holds an older profile, there a newer one.
    profile_old = make_event(key, kind=0, content="v1", created_at=base + 2000)
    profile_new = make_event(key, kind=0, content="v2", created_at=base + 2001)
    # A deletion on one side only: here deleted one of the shared events.
    doomed = shared[7]
    deletion = make_event(key, kind=kinds.DELETION, content="", tags=[["e", doomed.id]],
                          created_at=base + 2002)  # fmt: skip
    await publish_all(here.port, [*shared, *only_here, profile_old, deletion])
    await publish_all(there.port, [*shared, *only_there, profile_new])
    url = f"ws://{HOST}:{there.port}/"

    result = await run_sync(
        [url, "--direction", "both", "--batch", "7", "--progress-count", "1"],
        here.db_url, tmp_path / "cli",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    counts = summary(result.stderr)
    assert counts["keys"] == 300 - 1 + 40 + 2
    assert counts["have"] == 40 + 2  # only_here, profile_old, deletion
    assert counts["need"] == 30 + 2  # only_there, profile_new, doomed
    # doomed comes back and is refused by its deletion here; the old profile is replaced by
    # the new one before it would be sent, so it is gone, not sent.
    assert transfers(result.stderr) == moved(
        fetched=32, stored=31, deleted=1, sent=41, accepted=41, gone=1
    )
    stderr = result.stderr.decode()
    for label in ("relay sync: ", "relay sync down: ", "relay sync up: "):
        assert any(line.startswith(label) for line in stderr.splitlines()), stderr

    union = ids(shared, only_here, only_there, profile_new, deletion) - {doomed.id}
    assert await ids_on(here.db_url) == union
    assert await ids_on(there.db_url) == union
    # The other relay's other communities got nothing.
    assert await ids_on(there.db_url, "alpha.test") == set()

    again = await run_sync([url, "--direction", "both"], here.db_url, tmp_path / "cli")
    assert again.returncode == 0, again.stderr.decode()
    counts = summary(again.stderr)
    assert (counts["keys"], counts["have"], counts["need"]) == (len(union), 0, 0)
    assert transfers(again.stderr) == moved()


async def test_down_only_fetches_within_the_filter(
    nursery: trio.Nursery, db_url: str, other_db_url: str, tmp_path: Path
) -> None:
    here = await start_relay(nursery, db_url, tmp_path / "a")
    there = await start_relay(nursery, other_db_url, tmp_path / "b")
    key = new_key()
    base = int(time.time()) - 1000
    shared = [make_event(key, created_at=base + i) for i in range(50)]
    only_here = [make_event(key, created_at=base + i) for i in range(5)]
    only_there = [make_event(key, created_at=base + i) for i in range(20)]
    reaction = make_event(key, kind=7, content="+", created_at=base)
    await publish_all(here.port, [*shared, *only_here])
    await publish_all(there.port, [*shared, *only_there, reaction])
    url = f"ws://{HOST}:{there.port}"

    # `down` is the default; the filter leaves the reaction out.
    result = await run_sync([url, "--filter", '{"kinds": [1]}'], here.db_url, tmp_path / "cli")
    assert result.returncode == 0, result.stderr.decode()
    counts = summary(result.stderr)
    assert (counts["keys"], counts["have"], counts["need"]) == (55, 5, 20)
    assert transfers(result.stderr) == moved(fetched=20, stored=20)
    assert await ids_on(here.db_url) == ids(shared, only_here, only_there)
    assert await ids_on(there.db_url) == ids(shared, only_there, reaction)  # nothing sent

    result = await run_sync([url], here.db_url, tmp_path / "cli")
    assert result.returncode == 0, result.stderr.decode()
    assert transfers(result.stderr) == moved(fetched=1, stored=1)
    assert await ids_on(here.db_url) == ids(shared, only_here, only_there, reaction)


async def test_up_counts_and_names_refusals_and_sends_the_rest(
    nursery: trio.Nursery, db_url: str, other_db_url: str, tmp_path: Path
) -> None:
    here = await start_relay(nursery, db_url, tmp_path / "a")
    there = await start_relay(nursery, other_db_url, tmp_path / "b", max_event_bytes=1024)
    key = new_key()
    small = [make_event(key) for _ in range(12)]
    big = make_event(key, content="x" * 2000)
    await publish_all(here.port, [*small, big])

    result = await run_sync(
        [f"ws://{HOST}:{there.port}", "--direction", "up", "--batch", "5"],
        here.db_url, tmp_path / "cli",
    )  # fmt: skip
    assert transfers(result.stderr) == moved(sent=13, accepted=12, refused=1)
    assert_failed_naming(
        result, f"event {big.id} refused by the remote: invalid: event is", invalid=0, refused=1
    )
    assert await ids_on(there.db_url) == ids(small)
    assert await ids_on(here.db_url) == ids(small, big)  # up never stores here


# -- resuming ----------------------------------------------------------------------------------


class HoldAfterFirstEose:
    """A TCP proxy in front of a relay that passes the relay's answers up to and including
    the first EOSE, then holds everything else it says: the first batch of a sync arrives,
    the next never does, and the sync sits waiting to be killed."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.held = trio.Event()

    async def _forward(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        while data := await source.receive_some(65536):
            await sink.send_all(data)

    async def _answers(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        tail = b""
        while data := await source.receive_some(65536):
            await sink.send_all(data)
            if b'"EOSE"' in tail + data:
                self.held.set()
                await trio.sleep_forever()
            tail = data[-8:]

    async def serve(self, client: trio.SocketStream) -> None:
        async with client:
            server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            async with server, trio.open_nursery() as nursery:
                nursery.start_soon(self._forward, client, server)
                nursery.start_soon(self._answers, server, client)


async def test_an_interrupted_sync_resumes_with_what_is_still_missing(
    nursery: trio.Nursery, db_url: str, other_db_url: str, tmp_path: Path
) -> None:
    here = await start_relay(nursery, db_url, tmp_path / "a")
    there = await start_relay(nursery, other_db_url, tmp_path / "b")
    key = new_key()
    base = int(time.time()) - 1000
    wanted = [make_event(key, created_at=base + i) for i in range(200)]
    await publish_all(there.port, wanted)
    proxy = HoldAfterFirstEose(there.port)
    listeners = await nursery.start(partial(trio.serve_tcp, proxy.serve, 0, host="127.0.0.1"))
    proxy.port = listeners[0].socket.getsockname()[1]

    log = tmp_path / "first-run.log"
    with open(log, "wb") as stderr:
        process = await trio.lowlevel.open_process(
            [*RELAY_CLI, "sync", f"ws://{HOST}:{proxy.port}/", "--batch", "20"],
            env=sync_env(here.db_url, tmp_path / "cli"),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            with trio.fail_after(60):
                await proxy.held.wait()
                while len(await ids_on(here.db_url)) < 20:
                    assert process.returncode is None, log.read_text()
                    await trio.sleep(0.05)
            await trio.sleep(0.3)
            assert process.returncode is None, log.read_text()
        finally:
            process.send_signal(signal.SIGKILL)
            await process.wait()
    first_batch = await ids_on(here.db_url)
    assert len(first_batch) == 20 and first_batch < ids(wanted)

    result = await run_sync([f"ws://{HOST}:{there.port}/"], here.db_url, tmp_path / "cli")
    assert result.returncode == 0, result.stderr.decode()
    counts = summary(result.stderr)
    assert (counts["keys"], counts["have"], counts["need"]) == (20, 0, 180)
    assert transfers(result.stderr) == moved(fetched=180, stored=180)
    assert await ids_on(here.db_url) == ids(wanted)


# -- what goes wrong ---------------------------------------------------------------------------


async def test_bad_arguments_exit_2_and_an_unreachable_relay_exits_1_each_with_one_line(
    db_url: str, tmp_path: Path
) -> None:
    cli = tmp_path / "cli"
    url = f"ws://{HOST}:{free_port()}/"  # nothing listens there
    cases: list[tuple[list[str], int, str]] = [
        (["http://example.com"], 2, "relay: the relay URL must be a ws:// or wss:// URL"),
        (["ws://"], 2, "relay: the relay URL must be a ws:// or wss:// URL"),
        ([" "], 2, "relay: the remote URL must be a ws:// or wss:// URL"),
        ([url, "--filter", "{kinds"], 2, "relay: --filter is not JSON: "),
        ([url, "--filter", "[1]"], 2, "relay: --filter must be a JSON object"),
        ([url, "--filter", '{"search": 1}'], 2, "relay: --filter: search must be"),
        ([url, "--filter", '{"kinds": "1"}'], 2, "relay: --filter: kinds must be an array"),
        ([url, "--batch", "0"], 2, "relay: --batch must be at least 1, not 0"),
        ([url, "--community", "nowhere.test"], 2, "relay: configuration error: community"),
        ([url], 1, f"relay: cannot reach {url}: "),
    ]
    for args, status, start in cases:
        result = await run_sync(args, db_url, cli)
        assert result.returncode == status, (args, result.stderr)
        assert one_line(result).startswith(start), (args, result.stderr)
    result = await run_sync([url, "--direction", "sideways"], db_url, cli)
    assert result.returncode == 2 and b"invalid choice: 'sideways'" in result.stderr


async def test_too_many_records_here_or_there_is_one_line(
    nursery: trio.Nursery, db_url: str, other_db_url: str, tmp_path: Path
) -> None:
    here = await start_relay(nursery, db_url, tmp_path / "a")
    there = await start_relay(nursery, other_db_url, tmp_path / "b", max_neg_records=3)
    key = new_key()
    events = [make_event(key) for _ in range(5)]
    await publish_all(here.port, events)
    await publish_all(there.port, events)
    url = f"ws://{HOST}:{there.port}"

    result = await run_sync([url], here.db_url, tmp_path / "cli", RELAY_NEG_MAX_RECORDS="4")
    assert result.returncode == 2
    assert one_line(result) == (
        f"relay: more than 4 events of {HOST} match the filter, over RELAY_NEG_MAX_RECORDS: "
        "narrow --filter (since/until, kinds, authors) or raise the setting"
    )
    result = await run_sync([url], here.db_url, tmp_path / "cli")
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith(f"relay: {url} refused the reconciliation: blocked: too many records")
    assert line.endswith("(it covers at most 3 events)")
    # A narrower filter is within both bounds.
    narrow = await run_sync([url, "--filter", f'{{"ids": ["{events[0].id}"]}}'], here.db_url,
                            tmp_path / "cli")  # fmt: skip
    assert narrow.returncode == 0, narrow.stderr.decode()
    assert summary(narrow.stderr)["keys"] == 1


# -- remotes of other kinds ----------------------------------------------------------------------

Handler = Callable[[WebSocket], Awaitable[None]]


@asynccontextmanager
async def fake_relay(handler: Handler) -> AsyncIterator[str]:
    """A websocket server on loopback running `handler` on each connection; its URL."""

    async def serve(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        with suppress(trio_websocket.ConnectionClosed):
            await handler(ws)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(trio_websocket.serve_websocket, serve, "127.0.0.1", 0, ssl_context=None)
        )
        yield f"ws://127.0.0.1:{server.port}/"
        nursery.cancel_scope.cancel()


async def frames(ws: WebSocket) -> AsyncIterator[list[Any]]:
    while True:
        yield orjson.loads(await ws.get_message())


def nip77_relay(events: list[dict[str, Any]]) -> Handler:
    """A minimal NIP-77 relay serving `events` (dicts, as given, forged or not)."""

    async def handle(ws: WebSocket) -> None:
        items = sorted((e["created_at"], bytes.fromhex(e["id"])) for e in events)
        server = Negentropy(Storage(items))
        async for frame in frames(ws):
            if frame[0] in ("NEG-OPEN", "NEG-MSG"):
                answer = server.reconcile_server(bytes.fromhex(frame[-1]))
                await ws.send_message(orjson.dumps(["NEG-MSG", frame[1], answer.hex()]).decode())
            elif frame[0] == "REQ":
                for event in events:
                    if event["id"] in frame[2]["ids"]:
                        await ws.send_message(orjson.dumps(["EVENT", frame[1], event]).decode())
                await ws.send_message(orjson.dumps(["EOSE", frame[1]]).decode())

    return handle


async def test_forged_events_from_the_remote_are_counted_named_and_not_stored(
    db_url: str, tmp_path: Path
) -> None:
    key = new_key()
    good = make_event(key)
    forged = make_event(key).to_dict()
    forged["content"] = "not what was signed"
    async with fake_relay(nip77_relay([good.to_dict(), forged])) as url:
        result = await run_sync([url], db_url, tmp_path / "cli")
    assert transfers(result.stderr) == moved(fetched=2, stored=1, invalid=1)
    assert_failed_naming(
        result, f"event {forged['id']} from the remote is invalid: ", invalid=1, refused=0
    )
    assert await ids_on(db_url) == {good.id}


async def test_a_remote_of_another_negentropy_version_or_none_is_one_line(
    db_url: str, tmp_path: Path
) -> None:
    async def other_version(ws: WebSocket) -> None:
        async for frame in frames(ws):
            if frame[0] == "NEG-OPEN":
                # As the specification says: a server of another version answers with
                # its own version byte alone.
                await ws.send_message(orjson.dumps(["NEG-MSG", frame[1], "62"]).decode())

    async with fake_relay(other_version) as url:
        result = await run_sync([url], db_url, tmp_path / "cli")
    assert result.returncode == 1
    assert one_line(result) == (
        f"relay: {url} cannot reconcile with this relay: the server speaks negentropy "
        "protocol version 0x62, not 0x61 (NIP-77 version 0x61 is the one this relay speaks)"
    )

    async def without_nip77(ws: WebSocket) -> None:
        async for frame in frames(ws):
            await ws.send_message(orjson.dumps(["NOTICE", f"unknown command {frame[0]}"]).decode())
            await ws.aclose(1003)
            return

    async with fake_relay(without_nip77) as url:
        result = await run_sync([url], db_url, tmp_path / "cli")
    assert result.returncode == 1
    assert one_line(result) == (
        f"relay: {url} closed the connection (code 1003) (its last NOTICE: "
        "'unknown command NEG-OPEN')"
    )

    async def garbled(ws: WebSocket) -> None:
        async for frame in frames(ws):
            if frame[0] == "NEG-OPEN":
                await ws.send_message(orjson.dumps(["NEG-MSG", frame[1], "61zz"]).decode())

    async with fake_relay(garbled) as url:
        result = await run_sync([url], db_url, tmp_path / "cli")
    assert result.returncode == 1
    assert one_line(result).startswith(
        f"relay: {url} sent a negentropy message this relay cannot read: "
    )


def test_help_describes_sync_and_lists_its_settings() -> None:
    result = subprocess.run(
        [*RELAY_CLI, "sync", "--help"], capture_output=True, text=True, env=clean_environ(),
        timeout=60, check=True,
    )  # fmt: skip
    assert result.stdout.startswith("usage: relay sync ")
    for setting in ("RELAY_DATABASE_URL", "RELAY_HOSTS", "RELAY_NEG_MAX_RECORDS",
                    "RELAY_NEG_FRAME_BYTES", "RELAY_MAX_EVENT_BYTES"):  # fmt: skip
        assert f"  {setting} " in result.stdout, setting
