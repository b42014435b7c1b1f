"""One community, several host names: RELAY_HOSTS groups (`name|alias`), the default that
makes localhost, 127.0.0.1 and [::1] one community, and every protocol that names a host
(NIP-42 `relay` tags, git URLs, NIP-98 `u` tags) taking any of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from relay.config import ConfigError, load_settings
from relay.keys import pubkey_hex
from tests.git.gitclient import Git, announce
from tests.git.hosting import fresh_dir
from tests.helpers import auth_event, connect, make_event, new_key, publish, sql
from tests.services import start_relay


def test_relay_hosts_groups_and_the_default() -> None:
    assert load_settings({}).hosts == ("localhost|127.0.0.1|[::1]",)
    settings = load_settings({"RELAY_HOSTS": "Example.COM|www.example.com, other.test"})
    assert settings.hosts == ("example.com|www.example.com", "other.test")
    # A name listed again belongs to its first listing.
    assert load_settings({"RELAY_HOSTS": "a.test,b.test|a.test"}).hosts == ("a.test", "b.test")
    for bad in ("a.test|not a host", "|", "a.test|"):
        with pytest.raises(ConfigError, match="RELAY_HOSTS"):
            load_settings({"RELAY_HOSTS": bad})


async def test_every_name_reaches_one_community(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    relay = await start_relay(
        nursery, db_url, tmp_path, hosts=("localhost|127.0.0.1", "alpha.test|beta.test")
    )
    rows = await sql(db_url, "SELECT host FROM communities ORDER BY host")
    assert [r["host"] for r in rows] == ["alpha.test", "localhost"]
    key = new_key()
    note = make_event(key)
    assert (await publish(relay.port, note))[2] is True  # sent to 127.0.0.1
    async with connect(relay.port, "localhost") as client:
        assert [e["id"] for e in await client.req("s", {"ids": [note.id]})] == [note.id]
        # NIP-42: the relay tag may name the community by any of its names.
        challenge = await client.wait_challenge()
        answer = await client.publish_auth(auth_event(key, challenge, "ws://127.0.0.1/"))
        assert answer[2] is True, answer
    async with connect(relay.port, "beta.test") as other:
        assert await other.req("s", {"ids": [note.id]}) == []  # another community

    # git: announced through one name, cloned through the other, pushed with a NIP-98
    # token that names the first.
    git = Git(tmp_path / "home")
    await announce(relay.port, key, "shared", host="127.0.0.1")
    owner = pubkey_hex(key)
    via_localhost = f"http://localhost:{relay.port}/git/{owner}/shared.git"
    via_ip = f"http://127.0.0.1:{relay.port}/git/{owner}/shared.git"
    work = fresh_dir(tmp_path, "work")
    await git.run("clone", "-q", via_localhost, str(work))
    await git.commit(work, "README", "one\n", "first")
    await git.run("push", "-q", via_localhost, "main", cwd=work, key=key, url=via_ip)
    listed = await git.run("ls-remote", via_ip, cwd=work)
    assert b"refs/heads/main" in listed.stdout
