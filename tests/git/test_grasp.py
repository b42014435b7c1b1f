"""GRASP-01 with the real git binary: pushes authorized by maintainer-signed state (as ngit
and gitworkshop.dev push: no HTTP auth), co-maintainers, pull requests on refs/nostr,
purgatory, and which announcements provision a repository."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import trio
from coincurve import PrivateKey

from relay.events import kinds
from relay.events.model import Event
from relay.git.grasp import PURGATORY_MESSAGE
from relay.keys import pubkey_hex
from relay.protocol.bech32 import hex_to_npub
from tests.git.gitclient import Git
from tests.git.hosting import (
    HOST,
    Hosted,
    clone_refs,
    fresh_dir,
    hosted_relay,
    raw_request,
    rev,
    stderr_of,
)
from tests.helpers import (
    announcement,
    clone_url,
    connect,
    make_event,
    new_key,
    publish,
    relay_process,
    sql,
)
from tests.pods import expect_event, pod_env, until_bridged
from tests.redis_server import RedisServer
from tests.services import free_port, moto_bucket

RELEASE_TIMEOUT = 15.0


def npub_url(h: Hosted, key: PrivateKey | str, repo: str) -> str:
    pubkey = key if isinstance(key, str) else pubkey_hex(key)
    return f"http://{HOST}:{h.port}/{hex_to_npub(pubkey)}/{repo}.git"


def state_event(
    key: PrivateKey,
    repo: str,
    refs: dict[str, str],
    head: str = "main",
    created_at: int | None = None,
) -> Event:
    """A maintainer's kind 30618 as ngit signs it: one tag per ref, and HEAD."""
    tags = [["d", repo], *([name, oid] for name, oid in refs.items())]
    tags.append(["HEAD", f"ref: refs/heads/{head}"])
    return make_event(key, kind=kinds.REPO_STATE, content="", tags=tags, created_at=created_at)


async def found(h: Hosted, flt: dict[str, Any]) -> list[dict[str, Any]]:
    async with connect(h.port) as client:
        return await client.req("q", flt)


async def served(h: Hosted, event: Event) -> None:
    """Wait until `event` is served to REQs (released from purgatory)."""
    with trio.fail_after(RELEASE_TIMEOUT):
        while not await found(h, {"ids": [event.id]}):
            await trio.sleep(0.05)


async def local_repo(git: Git, tmp_path: Path) -> tuple[Path, str]:
    work = fresh_dir(tmp_path, "work")
    await git.run("init", "-q", str(work))
    return work, await git.commit(work, "README", "one\n", "first")


async def announce_hosted(
    h: Hosted, key: PrivateKey, repo: str, extra_tags: list[list[str]] | None = None
) -> Event:
    event = announcement(key, repo, extra_tags=extra_tags)
    assert await publish(h.port, event) == ["OK", event.id, True, ""]
    return event


async def test_ngit_push_flow_state_first_then_an_unauthenticated_push(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        key, git = new_key(), Git(tmp_path / "home")
        await announce_hosted(h, key, "flow")
        url = npub_url(h, key, "flow")
        work, c1 = await local_repo(git, tmp_path)
        await git.run("checkout", "-q", "-b", "dev", cwd=work)
        c2 = await git.commit(work, "DEV", "dev\n", "on dev")
        await git.run("tag", "-a", "v1", "-m", "release one", c1, cwd=work)
        tag = await rev(git, work, "refs/tags/v1")
        refs = {"refs/heads/main": c1, "refs/heads/dev": c2, "refs/tags/v1": tag,
                "refs/tags/v1^{}": c1}  # fmt: skip
        # 1. The maintainer signs the state (peeled tag entry included) and publishes it:
        # the repository does not hold it yet, so it waits in purgatory, unserved.
        state = state_event(key, "flow", refs, head="dev")
        assert await publish(h.port, state) == ["OK", state.id, True, PURGATORY_MESSAGE]
        assert await found(h, {"ids": [state.id]}) == []
        # 2. ngit pushes with force refspecs and no HTTP auth.
        pushed = await git.run(
            "push", url, "+refs/heads/main:refs/heads/main", "+refs/heads/dev:refs/heads/dev",
            "+refs/tags/v1:refs/tags/v1", cwd=work, check=False,
        )  # fmt: skip
        assert pushed.returncode == 0, stderr_of(pushed)
        # 3. A fresh clone has exactly those refs, and HEAD follows the state's HEAD.
        got, head = await clone_refs(git, url, fresh_dir(tmp_path, "clone"))
        assert got == {"refs/heads/main": c1, "refs/heads/dev": c2, "refs/tags/v1": tag}
        assert head == "refs/heads/dev"
        # HEAD on info/refs answers as GET would, without the body.
        info = url.split(str(h.port), 1)[1] + "/info/refs?service=git-upload-pack"
        probe = await raw_request(h.port, "HEAD", info)
        assert probe.status == 200 and probe.body == b"", probe
        assert int(probe.headers["content-length"]) > 0
        # 4. The state is released: served.
        await served(h, state)
        assert (await h.manifest(pubkey_hex(key), "flow")).head == "refs/heads/dev"

        # The next push: a new state, then a push that matches it.
        c3 = await git.commit(work, "DEV", "dev two\n", "dev again")
        # (Newer by its created_at: in the same second the lower id would win, as NIP-01 says.)
        newer = state_event(
            key, "flow", {**refs, "refs/heads/dev": c3}, "dev", state.created_at + 1
        )
        assert (await publish(h.port, newer))[2:] == [True, PURGATORY_MESSAGE]
        await git.run("push", url, "+refs/heads/dev:refs/heads/dev", cwd=work)
        await served(h, newer)
        # A push that does not match the newest state is refused with a reason git prints.
        c4 = await git.commit(work, "DEV", "signed\n", "in the next state")
        signed = state_event(
            key, "flow", {**refs, "refs/heads/dev": c4}, "dev", newer.created_at + 1
        )
        assert (await publish(h.port, signed))[2:] == [True, PURGATORY_MESSAGE]
        await git.commit(work, "DEV", "unsigned\n", "not in any state")
        refused = await git.run(
            "push", url, "+refs/heads/dev:refs/heads/dev", cwd=work, check=False
        )
        assert refused.returncode != 0
        err = stderr_of(refused)
        assert "refs/heads/dev" in err and "maintainer-signed state" in err, err
        assert (await h.manifest(pubkey_hex(key), "flow")).refs["refs/heads/dev"] == c3


async def test_a_state_the_repository_already_holds_is_stored_at_once(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        key = new_key()
        await announce_hosted(h, key, "same")
        state = make_event(key, kind=kinds.REPO_STATE, content="",
                           tags=[["d", "same"], ["HEAD", "ref: refs/heads/main"]])  # fmt: skip
        assert await publish(h.port, state) == ["OK", state.id, True, ""]
        assert [e["id"] for e in await found(h, {"ids": [state.id]})] == [state.id]


async def test_co_maintainers_announce_push_and_reach_one_repository(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        alice, bob, carol, mallory = new_key(), new_key(), new_key(), new_key()
        git = Git(tmp_path / "home")
        # Alice lists Bob; Bob's own announcement lists Carol (the set is recursive).
        await announce_hosted(h, alice, "shared", [["maintainers", pubkey_hex(bob)]])
        await announce_hosted(h, bob, "shared", [["maintainers", pubkey_hex(carol)]])
        # Both co-maintainers' announcements were stored and reserved nothing.
        rows = await sql(h.db_url, "SELECT owner_pubkey FROM git_repo_names WHERE repo_id = $1",
                         "shared")  # fmt: skip
        assert [r["owner_pubkey"] for r in rows] == [pubkey_hex(alice)]
        assert await h.pointer(pubkey_hex(bob), "shared") is None
        # A stranger's announcement of the held name is refused.
        stranger = announcement(mallory, "shared")
        answer = await publish(h.port, stranger)
        assert answer[2] is False and answer[3].startswith("blocked:"), answer

        # Carol (two hops away) signs a state and pushes to her own URL, without auth.
        work, c1 = await local_repo(git, tmp_path)
        state = state_event(carol, "shared", {"refs/heads/main": c1})
        assert (await publish(h.port, state))[2:] == [True, PURGATORY_MESSAGE]
        await git.run("push", npub_url(h, carol, "shared"), "+refs/heads/main:refs/heads/main",
                      cwd=work)  # fmt: skip
        # One repository, reachable under every maintainer's npub and the owner's hex URL.
        for url in (npub_url(h, alice, "shared"), npub_url(h, bob, "shared"),
                    h.url(pubkey_hex(alice), "shared")):  # fmt: skip
            got, _ = await clone_refs(git, url, fresh_dir(tmp_path, "clone"))
            assert got == {"refs/heads/main": c1}, url
        # Not under a stranger's npub.
        stranger_info = (
            f"/{hex_to_npub(pubkey_hex(mallory))}/shared.git/info/refs?service=git-upload-pack"
        )
        assert (await raw_request(h.port, "GET", stranger_info)).status == 404

        # Bob deleting his own announcement releases nothing and leaves the repository and
        # its relay-signed state alone.
        relay_states = {"kinds": [kinds.REPO_STATE], "authors": [h.relay_pubkey], "#d": ["shared"]}
        before = await found(h, relay_states)
        bobs = f"{kinds.REPO_ANNOUNCEMENT}:{pubkey_hex(bob)}:shared"
        deletion = make_event(bob, kind=kinds.DELETION, content="", tags=[["a", bobs]])
        assert (await publish(h.port, deletion))[2] is True
        assert await found(h, relay_states) == before != []
        got, _ = await clone_refs(git, npub_url(h, alice, "shared"), fresh_dir(tmp_path, "c"))
        assert got == {"refs/heads/main": c1}

        # A stranger's state is stored as any event, and authorizes nothing.
        c2 = await git.commit(work, "README", "two\n", "second")
        foreign = state_event(mallory, "shared", {"refs/heads/main": c2})
        assert await publish(h.port, foreign) == ["OK", foreign.id, True, ""]
        alices = npub_url(h, alice, "shared")
        refused = await git.run("push", alices, "+main:main", cwd=work, check=False)
        assert refused.returncode != 0
        assert (await h.manifest(pubkey_hex(alice), "shared")).refs == {"refs/heads/main": c1}


async def test_pull_requests_on_refs_nostr(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        owner_key, contributor = new_key(), new_key()
        git = Git(tmp_path / "home")
        await announce_hosted(h, owner_key, "prs")
        owner = pubkey_hex(owner_key)
        url = npub_url(h, owner_key, "prs")
        work, c1 = await local_repo(git, tmp_path)
        address = f"{kinds.REPO_ANNOUNCEMENT}:{owner}:prs"

        def pr(tip: str, kind: int = kinds.PULL_REQUEST) -> Event:
            return make_event(contributor, kind=kind, content="please merge",
                              tags=[["a", address], ["c", tip], ["clone", url]])  # fmt: skip

        # ngit's order: push the tip to refs/nostr/<id of the signed-to-be PR>, then publish.
        first = pr(c1)
        await git.run("push", url, f"{c1}:refs/nostr/{first.id}", cwd=work)
        assert await publish(h.port, first) == ["OK", first.id, True, ""]
        assert (await h.manifest(owner, "prs")).refs == {f"refs/nostr/{first.id}": c1}
        # Another tip for the same PR is refused: the PR event names c1.
        c2 = await git.commit(work, "README", "two\n", "second")
        moved = await git.run("push", url, f"+{c2}:refs/nostr/{first.id}", cwd=work, check=False)
        assert moved.returncode != 0 and "names another tip" in stderr_of(moved), stderr_of(moved)
        # Only a 64-hex event id under refs/nostr/.
        bad = await git.run("push", url, f"{c2}:refs/nostr/not-an-id", cwd=work, check=False)
        assert bad.returncode != 0 and "64-hex event id" in stderr_of(bad)

        # Published first, the PR update waits in purgatory until its tip is pushed.
        update = pr(c2, kinds.PULL_REQUEST_UPDATE)
        assert await publish(h.port, update) == ["OK", update.id, True, PURGATORY_MESSAGE]
        assert await found(h, {"ids": [update.id]}) == []
        await git.run("push", url, f"{c2}:refs/nostr/{update.id}", cwd=work)
        await served(h, update)
        # A PR event for a repository hosted elsewhere is stored as it is.
        elsewhere = make_event(contributor, kind=kinds.PULL_REQUEST, content="",
                               tags=[["a", f"30617:{owner}:not-here"], ["c", c2]])  # fmt: skip
        assert await publish(h.port, elsewhere) == ["OK", elsewhere.id, True, ""]


async def test_only_announcements_that_list_the_relay_provision(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        key = new_key()
        owner = pubkey_hex(key)
        elsewhere = make_event(key, kind=kinds.REPO_ANNOUNCEMENT, content="", tags=[
            ["d", "away"], ["clone", "https://git.example.com/away.git"]])  # fmt: skip
        assert await publish(h.port, elsewhere) == ["OK", elsewhere.id, True, ""]
        assert [e["id"] for e in await found(h, {"ids": [elsewhere.id]})] == [elsewhere.id]
        assert await sql(h.db_url, "SELECT 1 FROM git_repo_names WHERE repo_id = 'away'") == []
        assert await h.pointer(owner, "away") is None
        info = f"/git/{owner}/away.git/info/refs?service=git-upload-pack"
        assert (await raw_request(h.port, "GET", info)).status == 404
        # Either URL form on a host of the community lists us; another owner's URL does not.
        for listed, provisions in (
            (f"https://{HOST}:{h.port}/git/{owner}/hexform", True),
            # localhost is a community of its own: not a host of this one.
            (f"http://localhost:{h.port}/{hex_to_npub(owner)}/local.git", False),
            (clone_url(pubkey_hex(new_key()), "theirs"), False),
            (f"https://other.example/{hex_to_npub(owner)}/other.git", False),
        ):
            repo = listed.rstrip("/").rsplit("/", 1)[1].removesuffix(".git")
            clone = ["clone", "https://mirror.example/x.git", listed]
            tags = [["d", repo], clone]
            event = make_event(key, kind=kinds.REPO_ANNOUNCEMENT, content="", tags=tags)
            assert (await publish(h.port, event))[2] is True
            assert (await h.pointer(owner, repo) is not None) is provisions, listed


async def test_provision_any_hosts_announcements_without_clone_urls(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay(
        "filesystem", nursery, db_url, tmp_path / "data", git_provision="any"
    ) as h:
        key = new_key()
        bare = make_event(key, kind=kinds.REPO_ANNOUNCEMENT, content="", tags=[["d", "bare"]])
        assert await publish(h.port, bare) == ["OK", bare.id, True, ""]
        assert await h.pointer(pubkey_hex(key), "bare") is not None


async def test_purgatory_expires(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> None:
    async with hosted_relay(
        "filesystem", nursery, db_url, tmp_path / "data", git_purgatory_seconds=1
    ) as h:
        key, git = new_key(), Git(tmp_path / "home")
        await announce_hosted(h, key, "late")
        work, c1 = await local_repo(git, tmp_path)
        state = state_event(key, "late", {"refs/heads/main": c1})
        assert (await publish(h.port, state))[2:] == [True, PURGATORY_MESSAGE]
        waiting = "SELECT event_id FROM git_purgatory WHERE event_id = $1"
        assert len(await sql(h.db_url, waiting, state.id)) == 1
        await trio.sleep(1.5)
        # Past its window the state authorizes nothing, and is never served.
        late = await git.run("push", npub_url(h, key, "late"), "+main:main", cwd=work, check=False)
        # (No state waiting: stock git's push, asked for a token.)
        assert late.returncode != 0 and "Username" in stderr_of(late), stderr_of(late)
        assert await found(h, {"ids": [state.id]}) == []
        # Each pod's sweep drops it (at least as often as the window).
        with trio.fail_after(RELEASE_TIMEOUT):
            while await sql(h.db_url, waiting, state.id):
                await trio.sleep(0.1)


async def test_purgatory_is_shared_by_pods_and_survives_a_restart(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, moto_endpoint: str, redis: RedisServer
) -> None:
    """The state is published through pod A, A restarts, the push lands on pod B (another
    OS process): B finds the state in Postgres, accepts the push, and releases the state,
    which reaches a subscriber on the restarted A through Redis."""
    secret = PrivateKey().secret.hex()
    prefix = f"grasp-{uuid.uuid4().hex[:12]}"
    key, git = new_key(), Git(tmp_path / "home")
    async with moto_bucket(moto_endpoint) as (s3, _store):
        env_a = pod_env(db_url, tmp_path / "a", secret=secret, s3=s3, redis_url=redis.url,
                        prefix=prefix)  # fmt: skip
        env_b = pod_env(db_url, tmp_path / "b", secret=secret, s3=s3, redis_url=redis.url,
                        prefix=prefix)  # fmt: skip
        a_port, b_port = free_port(), free_port()
        work, c1 = await local_repo(git, tmp_path)
        state = state_event(key, "pods", {"refs/heads/main": c1})
        async with relay_process(env_a, a_port, tmp_path / "a.log"):
            event = announcement(key, "pods")
            async with connect(a_port) as client:
                assert (await client.publish(event))[2:] == [True, ""]
                assert (await client.publish(state))[2:] == [True, PURGATORY_MESSAGE]
        async with (
            relay_process(env_a, a_port, tmp_path / "a2.log"),
            relay_process(env_b, b_port, tmp_path / "b.log"),
        ):
            await until_bridged(a_port, b_port)
            async with connect(a_port) as on_a:
                assert await on_a.req("s", {"ids": [state.id]}, live=True) == []
                url = f"http://{HOST}:{b_port}/{hex_to_npub(pubkey_hex(key))}/pods.git"
                await git.run("push", url, "+main:main", cwd=work)
                await expect_event(on_a, "s", state.id)
            async with connect(b_port) as on_b:
                assert [e["id"] for e in await on_b.req("q", {"ids": [state.id]})] == [state.id]


async def test_pr_refs_without_an_event_are_removed_after_the_window(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay(
        "filesystem", nursery, db_url, tmp_path / "data", git_purgatory_seconds=1
    ) as h:
        owner_key, git = new_key(), Git(tmp_path / "home")
        await announce_hosted(h, owner_key, "orphans")
        owner = pubkey_hex(owner_key)
        url = npub_url(h, owner_key, "orphans")
        work, c1 = await local_repo(git, tmp_path)
        address = f"{kinds.REPO_ANNOUNCEMENT}:{owner}:orphans"
        kept = make_event(new_key(), kind=kinds.PULL_REQUEST, content="",
                          tags=[["a", address], ["c", c1]])  # fmt: skip
        orphan = "ab" * 32
        await git.run("push", url, f"{c1}:refs/nostr/{kept.id}", f"{c1}:refs/nostr/{orphan}",
                      cwd=work)  # fmt: skip
        assert await publish(h.port, kept) == ["OK", kept.id, True, ""]
        with trio.fail_after(RELEASE_TIMEOUT):
            while f"refs/nostr/{orphan}" in (await h.manifest(owner, "orphans")).refs:
                await trio.sleep(0.1)
        assert (await h.manifest(owner, "orphans")).refs == {f"refs/nostr/{kept.id}": c1}
        assert await sql(h.db_url, "SELECT event_id FROM git_pr_refs") == []
