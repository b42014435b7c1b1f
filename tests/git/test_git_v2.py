"""Stock git at its own defaults: protocol v2 (ls-refs with the unborn HEAD, fetch with
filters for partial clone), next to the v0 clients the other tests use."""

from __future__ import annotations

from pathlib import Path

import trio

from relay.keys import pubkey_hex
from tests.git.gitclient import Git
from tests.git.hosting import fresh_dir, hosted_relay, raw_request, rev, setup_repo
from tests.helpers import new_key

V2 = ("-c", "protocol.version=2")


async def test_a_v2_clone_of_an_empty_repository_checks_out_the_announced_branch(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        key, git = new_key(), Git(tmp_path / "home")
        owner, url, _ = await setup_repo(h, git, tmp_path, key, "empty")
        clone = fresh_dir(tmp_path, "v2")
        # The client's own default branch would be master: v2 tells it HEAD is main.
        await git.run(*V2, "-c", "init.defaultBranch=master", "clone", "-q", url, str(clone))
        head = await git.run("symbolic-ref", "HEAD", cwd=clone)
        assert head.stdout.decode().strip() == "refs/heads/main"
        # So `git push URL main` works right after, as the README says.
        await git.commit(clone, "README", "one\n", "first")
        await git.run("push", "-q", url, "main", cwd=clone, key=key, url=url)
        assert set((await h.manifest(owner, "empty")).refs) == {"refs/heads/main"}


async def test_v2_fetch_and_partial_clones(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        key, git = new_key(), Git(tmp_path / "home")
        _, url, work = await setup_repo(h, git, tmp_path, key, "partial")
        await git.commit(work, "README", "one\n", "first")
        (work / "big.bin").write_bytes(bytes(range(256)) * 4096)
        await git.run("add", "big.bin", cwd=work)
        await git.run("commit", "-q", "-m", "a blob", cwd=work)
        tip = await rev(git, work)
        await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=url)
        # The v2 capability advertisement, without the `# service=` line v0 has.
        info = f"/git/{pubkey_hex(key)}/partial.git/info/refs?service=git-upload-pack"
        v2 = await raw_request(h.port, "GET", info, headers=[("Git-Protocol", "version=2")])
        assert v2.status == 200 and v2.body.startswith(b"000eversion 2\n"), v2.body[:60]
        assert b"fetch=" in v2.body and b"filter" in v2.body
        v0 = await raw_request(h.port, "GET", info)
        assert v0.body.startswith(b"001e# service=git-upload-pack\n")
        for spec in ("blob:none", "tree:0"):
            clone = fresh_dir(tmp_path, spec.replace(":", "-"))
            await git.run(*V2, "clone", "-q", "--no-checkout", f"--filter={spec}", url, str(clone))
            assert await rev(git, clone) == tip
            promisor = await git.run("config", "remote.origin.promisor", cwd=clone)
            assert promisor.stdout.decode().strip() == "true"
            # The blob is fetched on demand when checked out.
            await git.run(*V2, "checkout", "-q", "main", cwd=clone)
            assert (clone / "big.bin").read_bytes() == (work / "big.bin").read_bytes()
        # A v2 fetch into the v0 clone's repository works too.
        await git.run(*V2, "fetch", "-q", "origin", cwd=work)
