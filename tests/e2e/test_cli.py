"""The `relay` command as an operator runs it: settings errors, embedded defaults, restarts."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import orjson
import pytest
import trio

from relay.config import SETTINGS
from relay.keys import pubkey_hex
from relay.protocol.bech32 import hex_to_npub
from tests.helpers import (
    RELAY_CLI,
    RelayUnderTest,
    clean_environ,
    connect,
    http_get,
    make_event,
    new_key,
)
from tests.services import free_port


def run_relay(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RELAY_CLI, *args],
        env={**clean_environ(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_documents_every_command_and_setting() -> None:
    out = run_relay(["--help"], {}).stdout
    for command in ("serve", "migrate", "keygen", "gc"):
        assert command in out
    for setting in SETTINGS:
        assert setting.env in out


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RELAY_PORT": "70000"}, "RELAY_PORT"),
        ({"RELAY_PORT": "http"}, "RELAY_PORT"),
        ({"RELAY_DATABASE_URL": "mysql://x"}, "RELAY_DATABASE_URL"),
        ({"RELAY_DATABASE_URL": "postgres://h:port/db"}, "RELAY_DATABASE_URL"),
        ({"RELAY_LOG_LEVEL": "loud"}, "RELAY_LOG_LEVEL"),
        ({"RELAY_PUBLIC_URL": "http://x"}, "RELAY_PUBLIC_URL"),
        ({"RELAY_HOSTS": "a b"}, "RELAY_HOSTS"),
        ({"RELAY_SECRET_KEY": "zz"}, "RELAY_SECRET_KEY"),
    ],
)
def test_bad_setting_is_one_line_naming_it_and_exit_2(env: dict[str, str], named: str) -> None:
    result = run_relay(["serve"], env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr


def test_unusable_data_dir_is_a_configuration_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_relay(["migrate"], {"RELAY_DATA_DIR": str(blocker / "data")})
    assert result.returncode == 2
    assert "RELAY_DATA_DIR" in result.stderr


def test_keygen_prints_a_key() -> None:
    out = run_relay(["keygen"], {}).stdout.strip()
    assert len(out) == 64 and int(out, 16) > 0


async def _wait_healthy(port: int, proc: trio.Process) -> None:
    with trio.fail_after(60):
        while True:
            assert proc.returncode is None, "relay exited early"
            try:
                if (await http_get(port, "/readyz"))[0] == 200:
                    return
            except OSError:
                pass
            await trio.sleep(0.2)


async def test_serve_with_embedded_defaults_survives_a_restart(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **clean_environ(),
        "RELAY_PORT": str(port),
        "RELAY_DATA_DIR": str(tmp_path / "d"),
        "RELAY_LOG_FORMAT": "json",
    }
    event = make_event()
    pubkeys = []
    for round_ in range(2):
        proc = await trio.lowlevel.open_process(
            [*RELAY_CLI, "serve"], env=env, stderr=subprocess.PIPE
        )
        try:
            await _wait_healthy(port, proc)
            _, _, body = await http_get(port, "/", "localhost", Accept="application/nostr+json")
            pubkeys.append(orjson.loads(body)["self"])
            async with connect(port, "localhost") as client:
                if round_ == 0:
                    assert (await client.publish(event))[2] is True
                else:
                    assert [e["id"] for e in await client.req("s", {"ids": [event.id]})] == [
                        event.id
                    ]
        finally:
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                await proc.wait()
        assert proc.returncode == 0
        assert proc.stderr is not None
        logs = (await proc.stderr.receive_some(1 << 20)).decode()
        records = [orjson.loads(line) for line in logs.splitlines() if line.startswith("{")]
        assert any("listening" in r["message"] for r in records)
    assert pubkeys[0] == pubkeys[1]
    assert (tmp_path / "d" / "relay.key").stat().st_mode & 0o077 == 0


def test_community_add_is_served_without_a_restart(db_url: str, tmp_path: Path) -> None:
    env = {"RELAY_DATABASE_URL": db_url, "RELAY_DATA_DIR": str(tmp_path)}
    added = run_relay(["community", "add", "New.Example.COM."], env)
    assert added.returncode == 0, added.stderr
    assert "new.example.com" in added.stdout.split()
    listed = run_relay(["community", "list"], env)
    assert "new.example.com" in listed.stdout.split()
    bad = run_relay(["community", "add", "not a host"], env)
    assert bad.returncode == 2 and "not a host name" in bad.stderr


def test_community_add_alias_of_gives_a_community_another_name(
    db_url: str, tmp_path: Path
) -> None:
    env = {"RELAY_DATABASE_URL": db_url, "RELAY_DATA_DIR": str(tmp_path)}
    assert run_relay(["community", "add", "main.test"], env).returncode == 0
    added = run_relay(["community", "add", "WWW.main.test", "--alias-of", "main.test"], env)
    assert added.returncode == 0, added.stderr
    # One line per community, its names together.
    assert "main.test www.main.test" in added.stdout.splitlines()
    taken = run_relay(["community", "add", "main.test", "--alias-of", "www.main.test"], env)
    assert taken.returncode == 2 and "already names a community" in taken.stderr
    unknown = run_relay(["community", "add", "x.test", "--alias-of", "nowhere.test"], env)
    assert unknown.returncode == 2 and "nowhere.test is not a community" in unknown.stderr
    missing = run_relay(["community", "add"], env)
    assert missing.returncode == 2 and "needs a host name" in missing.stderr


async def test_a_community_added_later_is_found_by_a_running_relay(
    relay: RelayUnderTest, tmp_path: Path
) -> None:
    status, _, _ = await http_get(relay.port, "/", "late.test", Accept="application/nostr+json")
    assert status == 404
    env = {"RELAY_DATABASE_URL": relay.db_url, "RELAY_DATA_DIR": str(tmp_path)}
    result = await trio.to_thread.run_sync(run_relay, ["community", "add", "late.test"], env)
    assert result.returncode == 0, result.stderr
    # An unknown host is asked of the database again after a short while.
    with trio.fail_after(30):
        while (await http_get(relay.port, "/", "late.test", Accept="application/nostr+json"))[
            0
        ] != 200:
            await trio.sleep(0.5)
    async with connect(relay.port, "late.test") as client:
        event = make_event()
        assert (await client.publish(event))[2] is True


def test_gc_lists_then_removes_what_no_pointer_reaches(tmp_path: Path) -> None:
    """`relay gc` on the embedded defaults' store (a directory of the data dir)."""
    objects = tmp_path / "data" / "objects"
    stray = objects / "manifests" / ("ab" * 32)
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"{}")
    old = 0.0  # written long ago: past any grace period
    os.utime(stray, (old, old))
    env = {"RELAY_DATA_DIR": str(tmp_path / "data")}
    dry = run_relay(["gc", "--dry-run"], env)
    assert dry.returncode == 0, dry.stderr
    assert f"would remove manifests/{'ab' * 32} (2 bytes)" in dry.stdout
    assert "would remove 1 objects, 2 bytes" in dry.stdout
    assert stray.exists()
    done = run_relay(["gc", "--grace", "60"], env)
    assert done.returncode == 0, done.stderr
    assert "removed 1 objects, 2 bytes" in done.stdout
    assert not stray.exists()


async def test_relay_admin_manages_a_running_relays_community(
    relay: RelayUnderTest, tmp_path: Path
) -> None:
    """`relay admin` runs the NIP-86 methods from the shell: a ban written there is kept by
    the running relay within its reload (no Redis here: a second), and admins are listed."""
    env = {
        "RELAY_DATABASE_URL": relay.db_url, "RELAY_DATA_DIR": str(tmp_path),
        "RELAY_HOSTS": "127.0.0.1",
    }  # fmt: skip
    key = new_key()
    npub = hex_to_npub(pubkey_hex(key))
    before = make_event(key)
    async with connect(relay.port) as client:
        assert (await client.publish(before))[2] is True

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        return run_relay(["admin", *args], env)

    banned = await trio.to_thread.run_sync(admin, "banpubkey", npub, "spam", "delete")
    assert banned.returncode == 0, banned.stderr
    assert banned.stdout.strip() == "true"
    listed = await trio.to_thread.run_sync(admin, "listbannedpubkeys")
    assert orjson.loads(listed.stdout) == [{"pubkey": pubkey_hex(key), "reason": "spam"}]
    with trio.fail_after(10):
        while True:
            async with connect(relay.port) as client:
                answer = await client.publish(make_event(key))
            if answer[2] is False:
                break
            await trio.sleep(0.2)
    assert answer[3].startswith("blocked:"), answer
    async with connect(relay.port) as client:
        assert await client.req("s", {"ids": [before.id]}) == []  # deleted with the ban
    added = await trio.to_thread.run_sync(admin, "addadmin", npub)
    assert added.returncode == 0, added.stderr
    admins = await trio.to_thread.run_sync(admin, "listadmins")
    assert orjson.loads(admins.stdout) == [pubkey_hex(key)]
    unknown = await trio.to_thread.run_sync(admin, "nosuchmethod")
    assert unknown.returncode == 2 and "unknown method 'nosuchmethod'" in unknown.stderr
    bad = await trio.to_thread.run_sync(admin, "banpubkey", "not-a-key")
    assert bad.returncode == 2 and "banpubkey:" in bad.stderr, bad.stderr
