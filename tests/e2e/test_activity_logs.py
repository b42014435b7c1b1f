"""What the relay logs at info while it works: repositories created and deleted, pushes,
one access line per git request, connections closed; and library warnings as log records."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import orjson
import pytest
import trio

from relay.events import kinds
from relay.keys import pubkey_hex
from relay.logs import configure_logging
from tests.git.gitclient import Git
from tests.git.hosting import hosted_relay, setup_repo
from tests.helpers import connect, make_event, new_key, publish
from tests.services import start_relay


def messages(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


async def test_repositories_pushes_and_git_requests_are_logged(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        key, git = new_key(), Git(tmp_path / "home")
        owner, url, work = await setup_repo(h, git, tmp_path, key, "logged")
        created = messages(caplog, "relay.git.announce")
        assert f"repo created: {owner}/logged in community {h.community_id}" in created
        await git.commit(work, "README", "one\n", "first")
        await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=url)
        path = f"/git/{owner}/logged.git"
        post = f"127.0.0.1 POST {path}/git-receive-pack 200 "
        # Both are logged once the push is answered (after its ref state): wait for them.
        with trio.fail_after(10):
            while not any(a.startswith(post) for a in messages(caplog, "relay.git.access")):
                await trio.sleep(0.05)
        [push] = messages(caplog, "relay.git.receive")
        assert push.startswith(f"push to {owner}/logged by {owner}: 1 refs changed, ")
        assert push.endswith(" ms") and " bytes, " in push
        access = messages(caplog, "relay.git.access")
        assert any(f"GET {path}/info/refs?service=git-upload-pack 200 " in a for a in access)

        deletion = make_event(
            key, kind=kinds.DELETION, content="", tags=[["a", f"30617:{owner}:logged"]]
        )
        assert (await publish(h.port, deletion))[2] is True
        deleted = messages(caplog, "relay.git.announce")
        assert f"repo deleted: {pubkey_hex(key)}/logged in community {h.community_id}" in deleted


def test_library_warnings_are_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """A library's warning (platformdirs' RuntimeDirWarning on every start with the embedded
    database) is a log line: JSON under RELAY_LOG_FORMAT=json, not plain text."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        configure_logging("info", "json")
        try:
            warnings.warn("a library's warning", RuntimeWarning, stacklevel=1)
        finally:
            logging.captureWarnings(False)
            root.handlers[:], root.level = handlers, level
    [line] = capsys.readouterr().err.splitlines()
    record = orjson.loads(line)
    assert record["logger"] == "py.warnings" and record["level"] == "warning"
    assert "RuntimeWarning: a library's warning" in record["message"]


async def test_a_closed_connection_is_logged_with_what_it_did(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="relay.server.websocket")
    relay = await start_relay(nursery, db_url, tmp_path)
    key = new_key()
    async with connect(relay.port) as client:
        assert (await client.publish(make_event(key)))[2] is True
        bad = make_event(key, created_at=int(time.time()) + 3600)
        assert (await client.publish(bad))[2] is False
        await client.req("s", {"authors": [pubkey_hex(key)]})
    with trio.fail_after(5):
        while not (closed := messages(caplog, "relay.server.websocket")):
            await trio.sleep(0.05)
    line = next(m for m in closed if m.startswith("connection closed"))
    assert line.startswith("connection closed: client 127.0.0.1 on 127.0.0.1, ")
    assert line.endswith(" s, 1 events accepted, 1 refused, 1 REQs")
    assert any(m.startswith(f"event {bad.id} from 127.0.0.1 refused: invalid:") for m in closed)
