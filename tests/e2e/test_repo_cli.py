"""`relay whoami`, `relay repo create|list|delete` and `relay git-credential` as a user runs
them: the real command as a subprocess, against a relay served in-process, over its real
websocket, with stock git."""

from __future__ import annotations

import base64
import contextlib
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import nostr_sdk as sdk
import orjson
import pytest
import trio
import trio_websocket
from coincurve import PrivateKey

from relay import client
from relay.events import kinds
from relay.events.model import parse_event
from relay.git import nip98
from relay.keys import pubkey_hex
from relay.protocol.bech32 import hex_to_npub
from tests.git.gitclient import Git
from tests.git.hosting import fresh_dir, rev, stderr_of
from tests.helpers import RELAY_CLI, RelayUnderTest, clean_environ, connect, make_event, new_key
from tests.services import free_port, start_relay


async def cli(
    *args: str,
    key: PrivateKey | None = None,
    relay: RelayUnderTest | None = None,
    env: dict[str, str] | None = None,
    stdin: bytes = b"",
) -> subprocess.CompletedProcess[str]:
    """`relay ARGS` as its own process, with the user's key (NOSTR_SECRET_KEY) and relay
    (NOSTR_RELAY_URL) when given, and nothing else of the test's environment that it reads."""
    environ = {k: v for k, v in clean_environ().items() if k != "NOSTR_SECRET_KEY"}
    if key is not None:
        environ["NOSTR_SECRET_KEY"] = key.secret.hex()
    if relay is not None:
        environ["NOSTR_RELAY_URL"] = relay_url(relay)
    result = await trio.run_process(
        [*RELAY_CLI, *args],
        env={**environ, **(env or {})},
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def relay_url(relay: RelayUnderTest) -> str:
    return f"ws://127.0.0.1:{relay.port}"


def npub_url(relay: RelayUnderTest, key: PrivateKey, name: str) -> str:
    return f"http://127.0.0.1:{relay.port}/{hex_to_npub(pubkey_hex(key))}/{name}.git"


def hex_url(relay: RelayUnderTest, key: PrivateKey, name: str) -> str:
    return f"http://127.0.0.1:{relay.port}/git/{pubkey_hex(key)}/{name}.git"


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


async def stored_announcements(relay: RelayUnderTest, **flt: Any) -> list[dict[str, Any]]:
    async with connect(relay.port) as reader:
        return await reader.req("r", {"kinds": [kinds.REPO_ANNOUNCEMENT], **flt})


async def create(relay: RelayUnderTest, key: PrivateKey, name: str, *args: str) -> str:
    """`relay repo create NAME ARGS` that succeeds; the clone URL it printed."""
    created = await cli("repo", "create", name, *args, key=key, relay=relay)
    assert created.returncode == 0, created.stderr
    return one_line(created.stdout)


# -- whoami ----------------------------------------------------------------------------------


async def test_whoami_prints_the_hex_pubkey_and_the_npub(tmp_path: Path) -> None:
    key = new_key()
    keys = sdk.Keys.parse(key.secret.hex())  # another implementation's encodings
    expected = [f"pubkey: {pubkey_hex(key)}", f"npub: {keys.public_key().to_bech32()}"]
    from_hex = await cli("whoami", key=key)
    assert from_hex.returncode == 0, from_hex.stderr
    assert from_hex.stdout.splitlines() == expected
    nsec = keys.secret_key().to_bech32()
    from_nsec = await cli("whoami", env={"NOSTR_SECRET_KEY": nsec})
    assert from_nsec.stdout.splitlines() == expected
    key_file = tmp_path / "key"
    key_file.write_text(nsec + "\n")
    from_file = await cli("whoami", "--key-file", str(key_file))
    assert from_file.stdout.splitlines() == expected


async def test_whoami_without_a_key_says_how_to_give_one(tmp_path: Path) -> None:
    for args, env in [
        ((), {}),
        ((), {"NOSTR_SECRET_KEY": "not-a-key"}),
        (("--key-file", str(tmp_path / "missing")), {}),
    ]:
        result = await cli("whoami", *args, env=env)
        assert result.returncode == 2, result
        assert result.stdout == ""
        line = one_line(result.stderr)
        assert "NOSTR_SECRET_KEY" in line or "--key-file" in line


async def test_token_reads_the_key_as_every_client_command_does(tmp_path: Path) -> None:
    key = new_key()
    url = "http://127.0.0.1:7777/npub1abc/demo.git"
    key_file = tmp_path / "key"
    key_file.write_text(sdk.Keys.parse(key.secret.hex()).secret_key().to_bech32())
    for printed in (
        await cli("token", url + "/", key=key),
        await cli("token", url, "--key-file", str(key_file)),
    ):
        assert printed.returncode == 0, printed.stderr
        header = one_line(printed.stdout)
        signer = nip98.authenticate(
            header, scheme="http", host="127.0.0.1:7777", repo_root="/npub1abc/demo.git"
        )
        assert signer == pubkey_hex(key)
    missing = await cli("token", url)
    assert missing.returncode == 2 and missing.stdout == ""
    assert one_line(missing.stderr) == f"relay: {client.KEY_HINT}"


# -- repo create -----------------------------------------------------------------------------


async def test_create_announces_and_the_relay_hosts_it(
    relay: RelayUnderTest, tmp_path: Path
) -> None:
    key, other = new_key(), new_key()
    other_npub = hex_to_npub(pubkey_hex(other))
    printed = await create(
        relay, key, "demo", "--description", "A demo repository", "--maintainer", other_npub
    )
    assert printed == npub_url(relay, key, "demo")

    (stored,) = await stored_announcements(relay, authors=[pubkey_hex(key)])
    assert stored["tags"] == [
        ["d", "demo"],
        ["name", "demo"],
        ["description", "A demo repository"],
        ["clone", npub_url(relay, key, "demo"), hex_url(relay, key, "demo")],
        ["relays", relay_url(relay)],
        ["maintainers", pubkey_hex(other)],
    ]
    assert abs(stored["created_at"] - time.time()) < 60

    git = Git(tmp_path / "home")
    for url in (printed, hex_url(relay, key, "demo")):
        cloned = await git.run("clone", url, str(fresh_dir(tmp_path, "clone")))
        assert "empty repository" in stderr_of(cloned)


async def test_create_with_hex_maintainers_and_the_relay_from_the_option(
    relay: RelayUnderTest,
) -> None:
    key, first, second = new_key(), new_key(), new_key()
    created = await cli(
        "repo", "create", "opts.git", "--relay", relay_url(relay),
        "--maintainer", pubkey_hex(first), "--maintainer", hex_to_npub(pubkey_hex(second)),
        key=key, env={"NOSTR_RELAY_URL": "ws://127.0.0.1:1"},
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert one_line(created.stdout) == npub_url(relay, key, "opts")
    (stored,) = await stored_announcements(relay, authors=[pubkey_hex(key)])
    assert ["maintainers", pubkey_hex(first), pubkey_hex(second)] in stored["tags"]
    assert not any(tag[0] == "description" for tag in stored["tags"])


async def test_a_name_taken_by_another_key_is_refused_with_the_relays_words(
    relay: RelayUnderTest,
) -> None:
    await create(relay, new_key(), "taken")
    again = await cli("repo", "create", "taken", key=new_key(), relay=relay)
    assert again.returncode == 1
    assert again.stdout == ""
    assert one_line(again.stderr) == "relay: blocked: repo name taken is taken"


async def test_the_quota_of_repositories_is_the_relays_answer(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, db_url, tmp_path / "data", git_max_repos_per_pubkey=2)
    key = new_key()
    await create(relay, key, "one")
    await create(relay, key, "two")
    third = await cli("repo", "create", "three", key=key, relay=relay)
    assert third.returncode == 1
    assert one_line(third.stderr) == "relay: blocked: limit of 2 repos per pubkey"


async def test_an_invalid_name_is_refused_before_connecting() -> None:
    down = f"ws://127.0.0.1:{free_port()}"
    for name in (".hidden", "a..b", "a/b", "x" * 65, ""):
        result = await cli("repo", "create", name, "--relay", down, key=new_key())
        assert result.returncode == 2, result
        assert "repo id" in one_line(result.stderr)
    bad = await cli("repo", "create", "ok", "--maintainer", "npub1nope", "--relay", down,
                    key=new_key())  # fmt: skip
    assert bad.returncode == 2 and "not a public key" in one_line(bad.stderr)
    deleted = await cli("repo", "delete", "a..b", "--relay", down, key=new_key())
    assert deleted.returncode == 2 and "repo id" in one_line(deleted.stderr)


async def test_commands_that_sign_need_a_key() -> None:
    down = f"ws://127.0.0.1:{free_port()}"
    for args in (("repo", "create", "x"), ("repo", "delete", "x")):
        result = await cli(*args, "--relay", down)
        assert result.returncode == 2, result
        assert result.stdout == ""
        assert one_line(result.stderr) == f"relay: {client.KEY_HINT}"


async def test_a_relay_that_is_down_is_one_line_and_exit_1() -> None:
    down = f"ws://127.0.0.1:{free_port()}"
    for args in (("repo", "create", "x"), ("repo", "list"), ("repo", "delete", "x")):
        result = await cli(*args, "--relay", down, key=new_key())
        assert result.returncode == 1, result
        assert result.stdout == ""
        line = one_line(result.stderr)
        assert line.startswith("relay: ") and down in line, line


async def test_a_host_the_relay_does_not_serve_is_one_line_and_exit_1(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """The relay answers 404 to the websocket upgrade of a host it does not serve."""
    relay = await start_relay(nursery, db_url, tmp_path / "data", hosts=("localhost",))
    result = await cli("repo", "list", key=new_key(), relay=relay)  # Host: 127.0.0.1
    assert result.returncode == 1, result
    line = one_line(result.stderr)
    assert line.startswith("relay: ") and "404" in line, line


async def test_a_relay_that_never_answers_is_given_up(nursery: trio.Nursery) -> None:
    """A websocket that accepts and then says nothing: no OK within the deadline."""

    async def silent(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        with trio.move_on_after(30), contextlib.suppress(trio_websocket.ConnectionClosed):
            while True:
                await ws.get_message()

    server = await nursery.start(trio_websocket.serve_websocket, silent, "127.0.0.1", 0, None)
    url = f"ws://127.0.0.1:{server.port}"
    event = make_event()
    with trio.fail_after(5), pytest.raises(client.RelayError) as publish_error:
        await client.publish(url, event, timeout=0.5)
    assert str(publish_error.value) == f"no answer from {url} within 0.5 s"
    with trio.fail_after(5), pytest.raises(client.RelayError):
        await client.query(url, {"kinds": [1]}, timeout=0.5)


# -- repo list -------------------------------------------------------------------------------


async def test_list_prints_one_line_per_repository(relay: RelayUnderTest) -> None:
    alice, bob = new_key(), new_key()
    await create(relay, alice, "alpha", "--description", "first\nof two")
    await create(relay, alice, "beta")
    await create(relay, bob, "gamma", "--description", "bob's")
    # Hosted elsewhere (its clone URL is not ours): listed with its own clone URL.
    elsewhere = make_event(
        bob, kind=kinds.REPO_ANNOUNCEMENT, content="",
        tags=[["d", "delta"], ["clone", "https://git.example.com/delta.git"]],
    )  # fmt: skip
    async with connect(relay.port) as writer:
        assert (await writer.publish(elsewhere))[2] is True

    def rows(out: str) -> list[list[str]]:
        return sorted(line.split("\t") for line in out.splitlines())

    alice_npub, bob_npub = hex_to_npub(pubkey_hex(alice)), hex_to_npub(pubkey_hex(bob))
    alice_rows = [
        ["alpha", alice_npub, npub_url(relay, alice, "alpha"), "first of two"],
        ["beta", alice_npub, npub_url(relay, alice, "beta"), ""],
    ]
    bob_rows = [
        ["delta", bob_npub, "https://git.example.com/delta.git", ""],
        ["gamma", bob_npub, npub_url(relay, bob, "gamma"), "bob's"],
    ]
    by_owner = await cli("repo", "list", "--owner", alice_npub, relay=relay)
    assert by_owner.returncode == 0, by_owner.stderr
    assert rows(by_owner.stdout) == alice_rows
    by_hex = await cli("repo", "list", "--owner", pubkey_hex(bob), relay=relay)
    assert rows(by_hex.stdout) == bob_rows
    mine = await cli("repo", "list", key=bob, relay=relay)  # default: the user's key
    assert rows(mine.stdout) == bob_rows
    everyone = await cli("repo", "list", relay=relay)  # no key: everyone's
    assert rows(everyone.stdout) == sorted(alice_rows + bob_rows)
    nobody = await cli("repo", "list", "--owner", pubkey_hex(new_key()), relay=relay)
    assert nobody.returncode == 0 and nobody.stdout == ""


# -- repo delete -----------------------------------------------------------------------------


async def test_delete_releases_the_name_and_the_clone_gets_404(
    relay: RelayUnderTest, tmp_path: Path
) -> None:
    key = new_key()
    url = await create(relay, key, "doomed")
    (announced,) = await stored_announcements(relay, authors=[pubkey_hex(key)])
    deleted = await cli("repo", "delete", "doomed", key=key, relay=relay)
    assert deleted.returncode == 0, deleted.stderr
    assert "doomed" in one_line(deleted.stdout)

    async with connect(relay.port) as reader:
        (deletion,) = await reader.req("d", {"kinds": [kinds.DELETION]})
    owner = pubkey_hex(key)
    assert deletion["pubkey"] == owner
    assert deletion["tags"] == [
        ["a", f"{kinds.REPO_ANNOUNCEMENT}:{owner}:doomed"],
        ["e", announced["id"]],
    ]
    assert await stored_announcements(relay, authors=[owner]) == []
    git = Git(tmp_path / "home")
    gone = await git.run("clone", url, str(fresh_dir(tmp_path, "gone")), check=False)
    assert gone.returncode != 0 and "not found" in stderr_of(gone)
    # The name is free again: another key takes it.
    await create(relay, new_key(), "doomed")


async def test_deleting_a_repository_that_is_not_there_says_so(relay: RelayUnderTest) -> None:
    deleted = await cli("repo", "delete", "never", key=new_key(), relay=relay)
    assert deleted.returncode == 0, deleted.stderr
    assert "no announcement" in one_line(deleted.stdout)


# -- git-credential --------------------------------------------------------------------------


def credential_input(**fields: str) -> bytes:
    return "".join(f"{k}={v}\n" for k, v in fields.items()).encode() + b"\n"


async def test_the_credential_helper_answers_with_a_token_for_the_repository() -> None:
    key = new_key()
    asked = credential_input(
        protocol="http", host="127.0.0.1:7777", path="npub1abc/demo.git",
        wwwauth="Basic realm=git",
    )  # fmt: skip
    result = await cli("git-credential", "get", key=key, stdin=asked)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    username, password = result.stdout.splitlines()
    assert username == "username=nostr"
    token = password.removeprefix("password=")
    event = parse_event(orjson.loads(base64.b64decode(token, validate=True)))
    assert event.kind == kinds.HTTP_AUTH
    assert event.tags == (("u", "http://127.0.0.1:7777/npub1abc/demo.git"), ("method", "GET"))
    signer = nip98.authenticate(
        f"Nostr {token}", scheme="http", host="127.0.0.1:7777", repo_root="/npub1abc/demo.git"
    )
    assert signer == pubkey_hex(key)


@pytest.mark.parametrize(
    "asked",
    [
        credential_input(protocol="https", host="relay.example.com"),  # no useHttpPath
        credential_input(protocol="ssh", host="relay.example.com", path="x.git"),
        b"",
    ],
)
async def test_the_credential_helper_stays_silent_without_a_repository_url(asked: bytes) -> None:
    result = await cli("git-credential", "get", key=new_key(), stdin=asked)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


async def test_the_credential_helper_ignores_store_and_erase() -> None:
    asked = credential_input(protocol="http", host="h", path="x.git", username="nostr",
                             password="whatever")  # fmt: skip
    for action in ("store", "erase"):
        result = await cli("git-credential", action, key=new_key(), stdin=asked)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


async def test_the_credential_helper_without_a_key_prints_nothing_on_stdout() -> None:
    asked = credential_input(protocol="http", host="h", path="x.git")
    result = await cli("git-credential", "get", stdin=asked)
    assert result.stdout == ""
    assert "NOSTR_SECRET_KEY" in one_line(result.stderr)


def credential_helper(key_file: Path | None = None) -> str:
    """The `credential.helper` value that runs this checkout's `relay git-credential`."""
    words = [*RELAY_CLI, "git-credential"]
    if key_file is not None:
        words += ["--key-file", str(key_file)]
    return "!" + shlex.join(words)


async def test_git_asks_the_helper_with_the_repository_path(tmp_path: Path) -> None:
    """`git credential fill` as git runs it on a 401: the helper named in the config, the
    repository's path passed because of credential.useHttpPath."""
    key = new_key()
    key_file = tmp_path / "key"
    key_file.write_text(key.secret.hex())
    git = Git(tmp_path / "home")
    url = "http://127.0.0.1:7777/npub1abc/demo.git"
    result = await trio.run_process(
        ["git", "-c", f"credential.helper={credential_helper(key_file)}",
         "-c", "credential.useHttpPath=true", "credential", "fill"],
        stdin=f"url={url}\n\n".encode(), env=git.env, capture_stdout=True,
        capture_stderr=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    filled = dict(line.split("=", 1) for line in result.stdout.decode().splitlines())
    assert filled["username"] == "nostr"
    signer = nip98.authenticate(
        f"Nostr {filled['password']}", scheme="http", host="127.0.0.1:7777",
        repo_root="/npub1abc/demo.git",
    )  # fmt: skip
    assert signer == pubkey_hex(key)


# -- the README's flow -----------------------------------------------------------------------


@pytest.mark.slow
async def test_create_clone_push_with_the_helper_clone_delete(
    relay: RelayUnderTest, tmp_path: Path
) -> None:
    """What "Hosting a git repository" tells a user to type, with stock git: the push is
    authenticated by the credential helper (HTTP Basic carrying a NIP-98 token)."""
    key = new_key()
    url = await create(relay, key, "flow", "--description", "the README's flow")
    git = Git(tmp_path / "home")
    git.env["NOSTR_SECRET_KEY"] = key.secret.hex()
    work = fresh_dir(tmp_path, "work")
    await git.run("clone", "-q", url, str(work))
    commit = await git.commit(work, "README", "hello\n", "first")
    anonymous = await git.run("push", "origin", "main", cwd=work, check=False)
    assert anonymous.returncode != 0  # the relay asks for credentials: the helper has them
    helper = ["-c", f"credential.helper={credential_helper()}", "-c", "credential.useHttpPath=true"]
    pushed = await git.run(*helper, "push", "origin", "main", cwd=work, check=False)
    assert pushed.returncode == 0, stderr_of(pushed)

    fresh = fresh_dir(tmp_path, "fresh")
    await git.run("clone", "-q", url, str(fresh))
    assert await rev(git, fresh) == commit
    assert (fresh / "README").read_text() == "hello\n"

    deleted = await cli("repo", "delete", "flow", key=key, relay=relay)
    assert deleted.returncode == 0, deleted.stderr
    gone = await git.run("clone", url, str(fresh_dir(tmp_path, "gone")), check=False)
    assert gone.returncode != 0 and "not found" in stderr_of(gone)
