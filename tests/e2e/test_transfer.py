"""`relay export` and `relay import` as an operator runs them: backups and migrations."""

from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path

import orjson
import pytest
import trio

from relay.app import open_database
from relay.config import load_settings
from relay.events.model import Event
from relay.protocol.limits import Limits
from relay.store.communities import Communities
from relay.transfer import ImportReport, OutputClosed, export_events, import_events
from tests.helpers import (
    RELAY_CLI,
    RelayUnderTest,
    clean_environ,
    connect,
    make_event,
    new_key,
    sql,
)

HOSTS = "alpha.test,beta.test"


async def run_cli(
    args: list[str], db_url: str, data_dir: Path, stdin: bytes = b"", hosts: str = HOSTS
) -> subprocess.CompletedProcess[bytes]:
    env = {
        **clean_environ(),
        "RELAY_DATABASE_URL": db_url,
        "RELAY_DATA_DIR": str(data_dir),
        "RELAY_HOSTS": hosts,
        "RELAY_LOG_LEVEL": "warning",
    }
    with trio.fail_after(120):
        return await trio.run_process(
            [*RELAY_CLI, *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            env=env,
            check=False,
        )


def jsonl(*items: Event | str | bytes) -> bytes:
    lines = []
    for item in items:
        if isinstance(item, Event):
            lines.append(item.to_json().encode())
        else:
            lines.append(item.encode() if isinstance(item, str) else item)
    return b"\n".join(lines) + b"\n"


def summary(stderr: bytes) -> dict[str, int]:
    """The counts of the import summary line."""
    line = next(ln for ln in stderr.decode().splitlines() if ln.startswith("imported into"))
    counts = line.split(": ", 1)[1].split(" (")[0]
    return {k: int(v) for k, v in (part.split(" ") for part in counts.split(", "))}


def counts(**nonzero: int) -> dict[str, int]:
    names = ("read", "stored", "duplicate", "superseded", "deleted", "invalid", "skipped")
    return {name: nonzero.get(name, 0) for name in names}


async def ids_on_host(db_url: str, host: str) -> set[str]:
    rows = await sql(
        db_url,
        "SELECT e.id FROM events e JOIN communities c ON c.id = e.community_id"
        " WHERE c.host = $1",
        host,
    )
    return {bytes(r["id"]).hex() for r in rows}


async def test_export_and_import_move_a_community(
    relay: RelayUnderTest, empty_database_url: str, tmp_path: Path
) -> None:
    key = new_key()
    now = int(time.time())
    note = make_event(key, content="hello", created_at=now - 100)
    profile_old = make_event(key, kind=0, content="v1", created_at=now - 50)
    profile_new = make_event(key, kind=0, content="v2", created_at=now - 40)
    article = make_event(key, kind=30023, tags=[["d", "post"], ["t", "x"]], created_at=now - 30)
    doomed = make_event(key, content="regret", created_at=now - 20)
    deletion = make_event(key, kind=5, tags=[["e", doomed.id]], created_at=now - 10)
    lasting = make_event(key, tags=[["expiration", str(now + 3600)]], created_at=now - 5)
    fleeting = make_event(key, tags=[["expiration", str(now + 3)]], created_at=now - 5)
    # Two at one second: the export orders them by id.
    tied = [make_event(key, created_at=now - 1) for _ in range(2)]
    elsewhere = make_event(key, content="beta only", created_at=now - 60)
    async with connect(relay.port, "alpha.test") as alpha, connect(relay.port, "beta.test") as beta:
        for event in (note, profile_old, profile_new, article, doomed, deletion, lasting,
                      fleeting, *tied):
            assert (await alpha.publish(event))[2] is True, event
        assert (await beta.publish(elsewhere))[2] is True
        assert (await beta.publish(note))[2] is True
    await trio.sleep(max(0.0, now + 3.1 - time.time()))  # `fleeting` has expired

    # The default community is the first of RELAY_HOSTS.
    exported = await run_cli(["export"], relay.db_url, tmp_path / "out")
    assert exported.returncode == 0, exported.stderr
    lines = exported.stdout.splitlines()
    events = [orjson.loads(line) for line in lines]
    expected = [note, profile_new, article, deletion, lasting, *sorted(tied, key=lambda e: e.id)]
    assert [e["id"] for e in events] == [e.id for e in expected]
    assert events == [e.to_dict() for e in expected]
    assert exported.stderr.decode().strip() == f"exported {len(expected)} events from alpha.test"
    rows = await sql(
        relay.db_url,
        "SELECT raw FROM events e JOIN communities c ON c.id = e.community_id"
        " WHERE c.host = 'alpha.test' AND e.id = ANY($1::bytea[]) ORDER BY e.created_at, e.id",
        [bytes.fromhex(e.id) for e in expected],
    )
    assert [r["raw"].encode() for r in rows] == lines  # the stored JSON, as it is

    # Into a database with no tables yet: import migrates and creates the communities.
    imported = await run_cli(
        ["import", "--community", "ALPHA.test"], empty_database_url, tmp_path / "in",
        exported.stdout,
    )
    assert imported.returncode == 0, imported.stderr
    n = len(expected)
    assert summary(imported.stderr) == counts(read=n, stored=n)
    assert await ids_on_host(empty_database_url, "alpha.test") == {e.id for e in expected}
    assert await ids_on_host(empty_database_url, "beta.test") == set()
    tombstones = await sql(empty_database_url, "SELECT event_id FROM deleted_events")
    assert [bytes(r["event_id"]).hex() for r in tombstones] == [doomed.id]

    again = await run_cli(
        ["export", "--community", "alpha.test"], empty_database_url, tmp_path / "in"
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout == exported.stdout

    # Resumable: running the same file again stores nothing twice.
    rerun = await run_cli(["import"], empty_database_url, tmp_path / "in", exported.stdout)
    assert rerun.returncode == 0, rerun.stderr
    assert summary(rerun.stderr) == counts(read=n, duplicate=n)
    assert await ids_on_host(empty_database_url, "alpha.test") == {e.id for e in expected}

    # What was deleted stays deleted: the tombstone came with the deletion.
    late = await run_cli(["import"], empty_database_url, tmp_path / "in", jsonl(doomed))
    assert summary(late.stderr) == counts(read=1, deleted=1)

    # The other community is exported on its own.
    other = await run_cli(["export", "--community", "beta.test"], relay.db_url, tmp_path / "out")
    assert other.returncode == 0, other.stderr
    assert [orjson.loads(line)["id"] for line in other.stdout.splitlines()] == [
        note.id,
        elsewhere.id,
    ]


async def test_import_applies_the_rules_and_counts_every_line(
    db_url: str, tmp_path: Path
) -> None:
    key = new_key()
    now = int(time.time())
    note = make_event(key, created_at=now - 100)
    forged = note.to_dict() | {"sig": ("0" if note.sig[0] != "0" else "1") + note.sig[1:]}
    edited = note.to_dict() | {"content": "not what was signed"}
    newer = make_event(key, kind=0, content="new", created_at=now - 10)
    older = make_event(key, kind=0, content="old", created_at=now - 20)
    deletion = make_event(key, kind=5, tags=[["e", note.id]], created_at=now - 5)
    expired = make_event(key, tags=[["expiration", str(now - 10)]], created_at=now - 60)
    ephemeral = make_event(key, kind=20001)
    auth = make_event(key, kind=22242, tags=[["challenge", "x"], ["relay", "ws://alpha.test"]])
    future = make_event(key, created_at=now + 3600)
    announcement = make_event(key, kind=30617, tags=[["d", "../escape"]])
    data = jsonl(
        note,  # 1
        "this is not json",  # 2
        orjson.dumps(forged),  # 3
        orjson.dumps(edited),  # 4
        newer,  # 5
        older,  # 6
        deletion,  # 7
        note,  # 8
        expired,  # 9
        ephemeral,  # 10
        auth,  # 11
        "   ",  # 12: blank, not counted
        future,  # 13
        '{"id": "00"}',  # 14
        announcement,  # 15
    )
    result = await run_cli(["import", "--community", "beta.test"], db_url, tmp_path, data)
    # Invalid lines make the exit status 1; the valid ones are stored all the same.
    assert result.returncode == 1, result.stderr
    assert result.stderr.decode().splitlines()[-1] == (
        "relay: 6 of 14 lines were invalid and not imported (the others were); "
        "--allow-invalid exits 0 for that"
    )
    assert summary(result.stderr) == counts(
        read=14, stored=3, superseded=1, deleted=1, invalid=6, skipped=3
    )
    err = result.stderr.decode()
    assert "(expired 1, ephemeral 2)" in err
    named = [line.strip() for line in err.splitlines() if line.startswith("  line ")]
    assert [line.split(":")[0] for line in named] == [
        f"line {n}" for n in (2, 3, 4, 13, 14, 15)
    ]
    assert "line 2: not JSON" in err
    assert "line 3: signature does not verify" in err
    assert "line 4: event id does not match its content" in err
    assert "line 13: created_at is more than 900 seconds in the future" in err
    assert "line 14: event is missing" in err
    # The deletion in the file removed the note stored before it; the older profile lost.
    assert await ids_on_host(db_url, "beta.test") == {newer.id, deletion.id}
    assert await ids_on_host(db_url, "alpha.test") == set()


async def test_a_deletion_earlier_in_the_batch_beats_a_stored_duplicate(
    db_url: str, tmp_path: Path
) -> None:
    key, stranger = new_key(), new_key()
    note = make_event(key)
    first = await run_cli(["import"], db_url, tmp_path, jsonl(note))
    assert summary(first.stderr) == counts(read=1, stored=1)
    others_deletion = make_event(stranger, kind=5, tags=[["e", note.id]])
    deletion = make_event(key, kind=5, tags=[["e", note.id]])
    data = jsonl(others_deletion, note, deletion, note)
    second = await run_cli(["import"], db_url, tmp_path, data)
    # A stranger cannot delete the note: it is still a duplicate; its author's deletion wins.
    assert summary(second.stderr) == counts(read=4, stored=2, duplicate=1, deleted=1)
    assert await ids_on_host(db_url, "alpha.test") == {others_deletion.id, deletion.id}


async def test_only_the_first_invalid_lines_are_named(db_url: str, tmp_path: Path) -> None:
    data = b"".join(b"[%d]\n" % i for i in range(12)) + jsonl(make_event())
    result = await run_cli(["import", "--allow-invalid"], db_url, tmp_path, data)
    assert result.returncode == 0, result.stderr
    assert summary(result.stderr) == counts(read=13, stored=1, invalid=12)
    err = result.stderr.decode()
    assert "line 10: event must be a JSON object" in err
    assert "line 11:" not in err
    assert "... and 2 more invalid lines" in err


@pytest.mark.parametrize(
    ("args", "hosts", "named"),
    [
        (["export", "--community", "gamma.test"], HOSTS, "gamma.test"),
        (["import", "--community", "gamma.test"], HOSTS, "gamma.test"),
        (["import", "--community", "not a host"], HOSTS, "--community"),
        (["export"], "a b", "RELAY_HOSTS"),
    ],
)
async def test_unknown_community_or_bad_setting_exits_2(
    db_url: str, tmp_path: Path, args: list[str], hosts: str, named: str
) -> None:
    result = await run_cli(args, db_url, tmp_path, jsonl(make_event()), hosts=hosts)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr.decode()
    assert result.stdout == b""
    rows = await sql(db_url, "SELECT count(*) AS n FROM events")
    assert rows[0]["n"] == 0


async def test_export_pages_through_ties_and_stops_on_a_closed_output(
    db_url: str, tmp_path: Path
) -> None:
    key = new_key()
    now = int(time.time())
    events = [make_event(key, created_at=now - (i // 3)) for i in range(10)]
    settings = load_settings({}, database_url=db_url, data_dir=str(tmp_path))
    async with open_database(settings) as db:
        communities = Communities(db)
        await communities.ensure(["alpha.test"])
        community_id = await communities.resolve("alpha.test")
        assert community_id is not None
        report = await import_events(
            db, community_id, io.BytesIO(jsonl(*events)), Limits(), ImportReport(), batch=4
        )
        assert (report.read, report.stored) == (10, 10)
        out = io.BytesIO()
        # Three events share each second: pages of 2 must neither skip nor repeat one.
        assert await export_events(db, community_id, out, now=now, batch=2) == 10
        ordered = sorted(events, key=lambda e: (e.created_at, e.id))
        assert out.getvalue() == jsonl(*ordered)

        class Closed(io.BytesIO):
            def write(self, data: object) -> int:
                raise BrokenPipeError

        with pytest.raises(OutputClosed, match="after 0 events"):
            await export_events(db, community_id, Closed(), now=now, batch=2)
