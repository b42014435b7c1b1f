"""Clone and push with stock git through the relay."""

from __future__ import annotations

from pathlib import Path

from tests.git.gitclient import Git, announce
from tests.helpers import RelayUnderTest, connect, new_key


async def test_announce_clone_push_clone(relay: RelayUnderTest, tmp_path: Path) -> None:
    key = new_key()
    owner = (await announce(relay.port, key, "demo")).pubkey
    url = f"http://127.0.0.1:{relay.port}/git/{owner}/demo.git"
    git = Git(tmp_path / "home")
    work = tmp_path / "work"
    await git.run("clone", "-q", url, str(work))
    first = await git.commit(work, "README", "hello\n", "first")
    await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=url)
    copy = tmp_path / "copy"
    await git.run("clone", "-q", url, str(copy))
    head = (await git.run("rev-parse", "HEAD", cwd=copy)).stdout.decode().strip()
    assert head == first
    assert (copy / "README").read_text() == "hello\n"
    async with connect(relay.port) as client:
        states = await client.req("s", {"kinds": [30618], "#d": ["demo"]})
    assert len(states) == 1
    assert ["refs/heads/main", first] in states[0]["tags"]
