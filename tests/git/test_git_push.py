"""Pushing with stock git through the relay: round trip, no fork under races, authorization,
NIP-98, private reads and the npub alias.

Everything is observed from outside the relay: git's exit status and stderr, the pointer and
manifest in the store the relay writes to (its data directory, or a moto bucket), the
relay-signed kind 30618 events seen live on a websocket and stored, and fresh clones. Every
wait is bounded; every socket is on loopback.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from coincurve import PrivateKey

from relay.events import kinds
from relay.events.model import check_id_and_signature, parse_event, sign_event
from relay.git.nip98 import make_token
from relay.keys import pubkey_hex
from relay.protocol.bech32 import hex_to_npub
from tests.git.gitclient import Git, announce
from tests.git.hosting import (
    EMPTY,
    HOST,
    Hosted,
    clone_refs,
    fresh_dir,
    hosted_relay,
    raw_request,
    rev,
    settled_states,
    setup_repo,
    state_filter,
    stderr_of,
    stored_states,
)
from tests.helpers import NostrClient, connect, new_key

# -- helpers (the ones other files share are in tests/git/hosting.py) -------------------------


def auth(key: PrivateKey, url: str, **kwargs: Any) -> list[tuple[str, str]]:
    return [("Authorization", make_token(key, url, **kwargs))]


class Watch:
    """A live subscription to the relay's kind 30618 for one repo."""

    def __init__(self, client: NostrClient, stored: list[dict[str, Any]]) -> None:
        self.client = client
        self.stored = stored

    async def new(self, count: int) -> list[dict[str, Any]]:
        """Exactly `count` new events, then nothing more."""
        got = []
        for _ in range(count):
            frame = await self.client.recv(timeout=10)
            assert frame[0] == "EVENT" and frame[1] == "w", frame
            got.append(frame[2])
        await self.client.expect_nothing(0.3)
        return got


@asynccontextmanager
async def watch_states(h: Hosted, repo: str) -> AsyncIterator[Watch]:
    async with connect(h.port) as client:
        stored = await client.req("w", state_filter(h, repo), live=True)
        yield Watch(client, stored)


@dataclass
class Step:
    """What the previous step left: the pointer and the newest 30618's created_at."""

    pointer: tuple[str, str]
    created_at: int


def assert_ref_state(
    h: Hosted, state: dict[str, Any], repo: str, refs: dict[str, str], head: str, pusher: str
) -> None:
    event = parse_event(state)
    check_id_and_signature(event)
    assert event.kind == kinds.REPO_STATE
    assert event.pubkey == h.relay_pubkey
    tags = [list(t) for t in event.tags]
    published = {t[0]: t[1] for t in tags if t[0].startswith("refs/")}
    assert published == refs, (published, refs)
    assert ["d", repo] in tags
    assert ["HEAD", f"ref: {head}"] in tags
    assert ["p", pusher] in tags
    assert len(tags) == len(refs) + 3, tags


async def expect_published(
    h: Hosted,
    watch: Watch,
    git: Git,
    tmp_path: Path,
    *,
    owner: str,
    repo: str,
    before: Step,
    refs: dict[str, str],
    head: str,
    pusher: str,
) -> Step:
    """The pointer advanced to a manifest with exactly `refs`, one new 30618 says so, and a
    fresh clone has exactly that state."""
    pointer = await h.pointer(owner, repo)
    assert pointer is not None
    assert pointer != before.pointer
    manifest = await h.objects.get_manifest(pointer[1])
    assert manifest.refs == refs
    assert manifest.head == head
    assert manifest.parent == before.pointer[1]
    [state] = await watch.new(1)
    assert_ref_state(h, state, repo, refs, head, pusher)
    assert state["created_at"] > before.created_at
    [stored] = await stored_states(h, repo)
    assert stored["id"] == state["id"]
    url = h.url(owner, repo)
    cloned, cloned_head = await clone_refs(git, url, fresh_dir(tmp_path, "check"))
    assert cloned == refs
    if refs:
        assert cloned_head == head
    return Step(pointer, state["created_at"])


async def expect_unchanged(h: Hosted, watch: Watch, *, owner: str, repo: str, before: Step) -> None:
    assert await h.pointer(owner, repo) == before.pointer
    await watch.new(0)
    [stored] = await stored_states(h, repo)
    assert stored["created_at"] == before.created_at


async def first_step(h: Hosted, watch: Watch, owner: str, repo: str) -> Step:
    pointer = await h.pointer(owner, repo)
    assert pointer is not None
    [initial] = watch.stored
    return Step(pointer, initial["created_at"])


# -- round trip ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["filesystem", "s3"])
async def test_push_round_trip(
    backend: str, nursery: trio.Nursery, db_url: str, tmp_path: Path, moto_endpoint: str
) -> None:
    async with hosted_relay(backend, nursery, db_url, tmp_path / "data", moto_endpoint) as h:
        key = new_key()
        repo = "roundtrip"
        git = Git(tmp_path / "home")
        owner, url, work = await setup_repo(h, git, tmp_path, key, repo)
        assert await h.pointer(owner, repo) is not None
        assert (await h.pointer(owner, repo) or ("", ""))[1] == EMPTY
        # The empty repo clones as empty.
        cloned, _ = await clone_refs(git, url, fresh_dir(tmp_path, "empty"))
        assert cloned == {}

        async with watch_states(h, repo) as watch:
            step = await first_step(h, watch, owner, repo)

            async def published(before: Step, refs: dict[str, str]) -> Step:
                return await expect_published(
                    h, watch, git, tmp_path, owner=owner, repo=repo, before=before, refs=refs,
                    head="refs/heads/main", pusher=owner,
                )  # fmt: skip

            # First push.
            c1 = await git.commit(work, "README", "hello\n", "first")
            await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=url)
            step = await published(step, {"refs/heads/main": c1})

            # Second push, a fast-forward.
            c2 = await git.commit(work, "README", "hello again\n", "second")
            await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=url)
            step = await published(step, {"refs/heads/main": c2})

            # A second branch.
            await git.run("checkout", "-q", "-b", "feature", cwd=work)
            f1 = await git.commit(work, "feature.txt", "feature\n", "feature work")
            await git.run("push", "-q", "origin", "feature", cwd=work, key=key, url=url)
            step = await published(step, {"refs/heads/main": c2, "refs/heads/feature": f1})

            # Force push after amending.
            await git.run("checkout", "-q", "main", cwd=work)
            (work / "README").write_text("amended\n")
            await git.run("commit", "-q", "-a", "--amend", "-m", "second, amended", cwd=work)
            c2b = await rev(git, work)
            assert c2b != c2
            plain = await git.run("push", "origin", "main", cwd=work, key=key, url=url, check=False)
            assert plain.returncode != 0, "a non-fast-forward push without -f must fail"
            assert await h.pointer(owner, repo) == step.pointer
            await watch.new(0)
            await git.run("push", "-q", "-f", "origin", "main", cwd=work, key=key, url=url)
            refs = {"refs/heads/main": c2b, "refs/heads/feature": f1}
            step = await published(step, refs)

            # Tags: lightweight and annotated.
            await git.run("tag", "v1", cwd=work)
            await git.run("tag", "-a", "v2", "-m", "release two", cwd=work)
            v2 = await rev(git, work, "refs/tags/v2")
            assert v2 != c2b  # the tag object, not the commit
            await git.run("push", "-q", "origin", "v1", "v2", cwd=work, key=key, url=url)
            refs = {**refs, "refs/tags/v1": c2b, "refs/tags/v2": v2}
            step = await published(step, refs)

            # A push that changes nothing emits nothing.
            same = await git.run("push", "origin", "main", "v1", "v2", cwd=work, key=key, url=url)
            assert b"Everything up-to-date" in same.stderr
            await expect_unchanged(h, watch, owner=owner, repo=repo, before=step)
            # Nor does a receive-pack request with no commands at all.
            empty = await raw_request(
                h.port, "POST", h.path(owner, repo) + "/git-receive-pack",
                headers=[*auth(key, url),
                         ("Content-Type", "application/x-git-receive-pack-request")],
                body=b"0000",
            )  # fmt: skip
            assert empty.status == 200
            await expect_unchanged(h, watch, owner=owner, repo=repo, before=step)

            # Deleting a branch publishes a manifest and a 30618 without it.
            await git.run("push", "-q", "origin", ":feature", cwd=work, key=key, url=url)
            refs = {k: v for k, v in refs.items() if k != "refs/heads/feature"}
            step = await published(step, refs)

            # Deleting a tag likewise.
            await git.run("push", "-q", "origin", ":refs/tags/v1", cwd=work, key=key, url=url)
            refs = {k: v for k, v in refs.items() if k != "refs/tags/v1"}
            step = await published(step, refs)

        # Every object the history needs is there: a full clone passes fsck.
        final = fresh_dir(tmp_path, "final")
        await git.run("clone", "-q", "--mirror", url, str(final))
        await git.run("fsck", "--full", "--strict", cwd=final)


# -- what a push stores ------------------------------------------------------------------------


async def test_each_push_stores_the_pack_it_sent_and_many_packs_are_compacted(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("relay.git.push.COMPACT_AT_PACKS", 3)
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        key = new_key()
        git = Git(tmp_path / "home")
        owner, url, work = await setup_repo(h, git, tmp_path, key, "packs")
        commits = []
        for n, expected_packs in ((1, 1), (2, 2), (3, 1), (4, 2)):
            commits.append(await git.commit(work, f"f{n}.txt", f"{n}\n", f"commit {n}"))
            await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=url)
            manifest = await h.manifest(owner, repo="packs")
            assert manifest.refs == {"refs/heads/main": commits[-1]}
            # One new pack a push; the third would make three, so everything is repacked.
            assert len(manifest.packs) == expected_packs, (n, manifest.packs)
            newest = await h.objects.get_verified(manifest.packs[-1], 1 << 20)
            count = int.from_bytes(newest[8:12], "big")
            if n == 3:
                assert count == 3 * n  # the compaction holds every commit, tree and blob
            else:
                # What the client sent for one commit (commit, tree, blob) and at most the
                # delta bases index-pack appended, never the history again.
                assert count == 3 if n == 1 else 3 <= count < 3 * n, (n, count)
            # Every stored pack stands alone: git indexes it with nothing else around.
            alone = fresh_dir(tmp_path, "alone")
            alone.mkdir()
            (alone / "p.pack").write_bytes(newest)
            await git.run("index-pack", str(alone / "p.pack"))
        # A push that only names an existing commit stores no pack.
        await git.run("push", "-q", "origin", "main:side", cwd=work, key=key, url=url)
        manifest = await h.manifest(owner, repo="packs")
        assert len(manifest.packs) == 2 and "refs/heads/side" in manifest.refs
        final = fresh_dir(tmp_path, "final")
        await git.run("clone", "-q", "--mirror", url, str(final))
        await git.run("fsck", "--full", "--strict", cwd=final)
        log = await git.run("rev-list", "refs/heads/main", cwd=final)
        assert log.stdout.decode().split() == commits[::-1]


# -- no fork ---------------------------------------------------------------------------------

RACERS = 8
ROUNDS = 10


async def _prepare_racer(
    git: Git, work: Path, i: int, round_no: int, commits: dict[int, str]
) -> None:
    """Catch up with the previous winner, then commit this racer's own work."""
    await git.run("fetch", "-q", "origin", cwd=work)
    await git.run("reset", "-q", "--hard", "origin/main", cwd=work)
    commits[i] = await git.commit(
        work, f"racer{i}.txt", f"round {round_no} racer {i}\n", f"r{round_no} by {i}"
    )


async def _push_racer(
    git: Git, work: Path, i: int, key: PrivateKey, url: str, results: dict[int, Any]
) -> None:
    results[i] = await git.run("push", "origin", "main", cwd=work, key=key, url=url, check=False)


async def test_concurrent_pushes_never_fork(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    # More git slots than racers, so a 503 never stands in for a lost race.
    async with hosted_relay(
        "filesystem", nursery, db_url, tmp_path / "data", git_max_processes=4 * RACERS
    ) as h:
        key = new_key()
        repo = "race"
        git = Git(tmp_path / "home")
        owner, url, base_work = await setup_repo(h, git, tmp_path, key, repo)
        base = await git.commit(base_work, "base.txt", "base\n", "base")
        await git.run("push", "-q", "origin", "main", cwd=base_work, key=key, url=url)
        clones = [fresh_dir(tmp_path, f"racer{i}") for i in range(RACERS)]
        async with trio.open_nursery() as setup:
            for clone in clones:
                setup.start_soon(git.run, "clone", "-q", url, str(clone))

        tip = base
        pointer = await h.pointer(owner, repo)
        assert pointer is not None
        digests = [pointer[1]]
        outcomes: dict[str, int] = {"race lost": 0, "rejected": 0}
        started = time.monotonic()
        for round_no in range(ROUNDS):
            commits: dict[int, str] = {}
            async with trio.open_nursery() as prep:
                for i in range(RACERS):
                    prep.start_soon(_prepare_racer, git, clones[i], i, round_no, commits)
            for i in range(RACERS):
                assert await rev(git, clones[i], "HEAD~1") == tip, "racers build on the winner"

            results: dict[int, Any] = {}
            async with trio.open_nursery() as race:
                for i in range(RACERS):
                    race.start_soon(_push_racer, git, clones[i], i, key, url, results)

            winners = [i for i, r in results.items() if r.returncode == 0]
            assert len(winners) == 1, {i: stderr_of(r) for i, r in results.items()}
            winner = winners[0]
            for i, result in results.items():
                if i == winner:
                    continue
                err = stderr_of(result)
                assert "HTTP 5" not in err and "returned error: 5" not in err, err
                # A lost race is a refusal git prints with what to do, not an HTTP 409.
                assert "409" not in err, err
                if "another push won the race: fetch, rebase and push again" in err:
                    outcomes["race lost"] += 1
                elif "rejected" in err or "fetch first" in err:
                    outcomes["rejected"] += 1
                else:
                    raise AssertionError(f"racer {i} failed without a clean refusal:\n{err}")

            tip = commits[winner]
            pointer = await h.pointer(owner, repo)
            assert pointer is not None
            manifest = await h.objects.get_manifest(pointer[1])
            assert manifest.refs == {"refs/heads/main": tip}
            # Linear history of manifests: each round's parent is the previous round's.
            assert manifest.parent == digests[-1]
            digests.append(pointer[1])
            cloned, _ = await clone_refs(git, url, fresh_dir(tmp_path, f"check{round_no}"))
            assert cloned == {"refs/heads/main": tip}
            [state] = await settled_states(h, owner, repo)
            assert ["refs/heads/main", tip] in state["tags"]
        elapsed = time.monotonic() - started
        assert elapsed < 120, f"the race test took {elapsed:.0f} s"
        # Every winner's commit is in the final history, in order.
        final = fresh_dir(tmp_path, "final")
        await git.run("clone", "-q", url, str(final))
        log = await git.run("rev-list", "--count", "HEAD", cwd=final)
        assert int(log.stdout) == 1 + ROUNDS
        print(f"losers by outcome over {ROUNDS} rounds: {outcomes} ({elapsed:.1f} s)")


# -- authorization ---------------------------------------------------------------------------


async def test_only_maintainers_may_push(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        owner_key, maintainer_key, stranger_key = new_key(), new_key(), new_key()
        maintainer = pubkey_hex(maintainer_key)
        repo = "team"
        git = Git(tmp_path / "home")
        owner, url, work = await setup_repo(
            h, git, tmp_path, owner_key, repo,
            extra_tags=[["maintainers", maintainer, "not-a-pubkey"]],
        )  # fmt: skip
        async with watch_states(h, repo) as watch:
            step = await first_step(h, watch, owner, repo)

            # A stranger with a perfectly valid NIP-98 token is refused.
            await git.commit(work, "README", "stranger\n", "by a stranger")
            refused = await git.run(
                "push", "origin", "main", cwd=work, key=stranger_key, url=url, check=False
            )
            assert refused.returncode != 0
            err = stderr_of(refused)
            assert "declined" in err and "not a maintainer" in err, err
            await expect_unchanged(h, watch, owner=owner, repo=repo, before=step)

            # A maintainer can push; the 30618 names them.
            pushed = await git.run(
                "push", "-q", "origin", "main", cwd=work, key=maintainer_key, url=url
            )
            assert pushed.returncode == 0
            c1 = await rev(git, work)
            step = await expect_published(
                h, watch, git, tmp_path, owner=owner, repo=repo, before=step,
                refs={"refs/heads/main": c1}, head="refs/heads/main", pusher=maintainer,
            )  # fmt: skip

            # The stranger can neither add a branch nor delete one.
            await git.run("checkout", "-q", "-b", "side", cwd=work)
            await git.commit(work, "side.txt", "side\n", "side")
            refused = await git.run(
                "push", "origin", "side", cwd=work, key=stranger_key, url=url, check=False
            )
            assert refused.returncode != 0 and "not a maintainer" in stderr_of(refused)
            refused = await git.run(
                "push", "origin", ":main", cwd=work, key=stranger_key, url=url, check=False
            )
            assert refused.returncode != 0 and "not a maintainer" in stderr_of(refused)
            await expect_unchanged(h, watch, owner=owner, repo=repo, before=step)

            # The owner can push too.
            await git.run("push", "-q", "origin", "side", cwd=work, key=owner_key, url=url)
            side = await rev(git, work)
            await expect_published(
                h, watch, git, tmp_path, owner=owner, repo=repo, before=step,
                refs={"refs/heads/main": c1, "refs/heads/side": side},
                head="refs/heads/main", pusher=owner,
            )  # fmt: skip


async def test_protect_no_force_push(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> None:
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        key = new_key()
        repo = "guarded"
        git = Git(tmp_path / "home")
        owner, url, work = await setup_repo(
            h, git, tmp_path, key, repo,
            extra_tags=[["protect", "refs/heads/main", "no-force-push"]],
        )  # fmt: skip
        async with watch_states(h, repo) as watch:
            step = await first_step(h, watch, owner, repo)

            async def published(before: Step, refs: dict[str, str]) -> Step:
                return await expect_published(
                    h, watch, git, tmp_path, owner=owner, repo=repo, before=before, refs=refs,
                    head="refs/heads/main", pusher=owner,
                )  # fmt: skip

            c1 = await git.commit(work, "a.txt", "1\n", "one")
            await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=url)
            step = await published(step, {"refs/heads/main": c1})
            # A fast-forward is allowed.
            c2 = await git.commit(work, "a.txt", "2\n", "two")
            await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=url)
            step = await published(step, {"refs/heads/main": c2})
            # A force push is refused.
            await git.run("reset", "-q", "--hard", "HEAD~1", cwd=work)
            await git.commit(work, "a.txt", "rewritten\n", "rewritten")
            refused = await git.run(
                "push", "-f", "origin", "main", cwd=work, key=key, url=url, check=False
            )
            assert refused.returncode != 0
            err = stderr_of(refused)
            assert "declined" in err and "force push" in err, err
            await expect_unchanged(h, watch, owner=owner, repo=repo, before=step)
            # Branches the rule does not name may be force pushed.
            await git.run("push", "-q", "origin", "HEAD:refs/heads/scratch", cwd=work,
                          key=key, url=url)  # fmt: skip
            s1 = await rev(git, work)
            step = await published(step, {"refs/heads/main": c2, "refs/heads/scratch": s1})
            await git.run("commit", "-q", "--amend", "-m", "scratch amended", cwd=work)
            s2 = await rev(git, work)
            await git.run("push", "-q", "-f", "origin", "HEAD:refs/heads/scratch", cwd=work,
                          key=key, url=url)  # fmt: skip
            await published(step, {"refs/heads/main": c2, "refs/heads/scratch": s2})


async def test_protect_no_delete(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> None:
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        key = new_key()
        repo = "keep"
        git = Git(tmp_path / "home")
        owner, url, work = await setup_repo(
            h, git, tmp_path, key, repo, extra_tags=[["protect", "refs/heads/*", "no-delete"]]
        )
        async with watch_states(h, repo) as watch:
            step = await first_step(h, watch, owner, repo)
            c1 = await git.commit(work, "a.txt", "1\n", "one")
            await git.run("tag", "t1", cwd=work)
            await git.run("push", "-q", "origin", "main", "HEAD:refs/heads/feature", "t1",
                          cwd=work, key=key, url=url)  # fmt: skip
            refs = {"refs/heads/main": c1, "refs/heads/feature": c1, "refs/tags/t1": c1}
            step = await expect_published(
                h, watch, git, tmp_path, owner=owner, repo=repo, before=step, refs=refs,
                head="refs/heads/main", pusher=owner,
            )  # fmt: skip
            for target in (":feature", ":main"):
                refused = await git.run(
                    "push", "origin", target, cwd=work, key=key, url=url, check=False
                )
                assert refused.returncode != 0
                err = stderr_of(refused)
                assert "declined" in err and "deleting refs/heads/* is not allowed" in err, err
                await expect_unchanged(h, watch, owner=owner, repo=repo, before=step)
            # One denied ref rejects the whole push.
            c2 = await git.commit(work, "a.txt", "2\n", "two")
            refused = await git.run(
                "push", "origin", "main", ":feature", cwd=work, key=key, url=url, check=False
            )
            assert refused.returncode != 0
            await expect_unchanged(h, watch, owner=owner, repo=repo, before=step)
            # Tags are not covered by the pattern; force pushes are not forbidden.
            await git.run("push", "-q", "origin", ":refs/tags/t1", cwd=work, key=key, url=url)
            refs = {"refs/heads/main": c1, "refs/heads/feature": c1}
            step = await expect_published(
                h, watch, git, tmp_path, owner=owner, repo=repo, before=step, refs=refs,
                head="refs/heads/main", pusher=owner,
            )  # fmt: skip
            await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=url)
            refs = {"refs/heads/main": c2, "refs/heads/feature": c1}
            await expect_published(
                h, watch, git, tmp_path, owner=owner, repo=repo, before=step, refs=refs,
                head="refs/heads/main", pusher=owner,
            )  # fmt: skip


# -- NIP-98 ----------------------------------------------------------------------------------


def _token_of(event_dict: dict[str, Any]) -> str:
    return "Nostr " + base64.b64encode(orjson.dumps(event_dict)).decode()


async def test_nip98_required_for_push(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> None:
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        key = new_key()
        repo = "authd"
        git = Git(tmp_path / "home")
        owner, url, work = await setup_repo(h, git, tmp_path, key, repo)
        await announce(h.port, key, "other")
        path = h.path(owner, repo)
        info = f"{path}/info/refs?service=git-receive-pack"
        port = h.port

        async with watch_states(h, repo) as watch:
            step = await first_step(h, watch, owner, repo)
            # git without a token (and no maintainer-signed state waiting for a push, so
            # not a NIP-34 client's push) gets a 401 and, with prompts disabled, cannot ask
            # for credentials; nothing changes.
            await git.commit(work, "README", "x\n", "x")
            anonymous = await git.run("push", "origin", "main", cwd=work, check=False)
            assert anonymous.returncode != 0
            assert "Username" in stderr_of(anonymous) or "401" in stderr_of(anonymous)
            await expect_unchanged(h, watch, owner=owner, repo=repo, before=step)

            good = await raw_request(port, "GET", info, headers=auth(key, url))
            assert good.status == 200, good
            assert good.headers["content-type"] == "application/x-git-receive-pack-advertisement"

            signed = sign_event(
                key, kind=kinds.HTTP_AUTH, tags=[["u", url], ["method", "GET"]],
                created_at=int(time.time()),
            ).to_dict()  # fmt: skip
            tampered = {**signed, "tags": [["u", url], ["method", "POST"]]}
            forged_sig = {**signed, "sig": "0" * 128}
            wrong_kind = sign_event(
                key, kind=1, tags=[["u", url], ["method", "GET"]], created_at=int(time.time())
            ).to_dict()
            # A token that is sent must be valid (sending none is the GRASP-01 path).
            bad: dict[str, list[tuple[str, str]]] = {
                "basic": [("Authorization", "Basic dXNlcjpwYXNz")],
                "garbage": [("Authorization", "Nostr !!!not-base64!!!")],
                "not json": [("Authorization", "Nostr " + base64.b64encode(b"{nope").decode())],
                "other host": auth(key, f"http://other.test:{port}{path}"),
                "alpha host": auth(key, f"http://alpha.test:{port}{path}"),
                "https": auth(key, f"https://{HOST}:{port}{path}"),
                "other repo": auth(key, h.url(owner, "other")),
                "other owner": auth(key, h.url(pubkey_hex(new_key()), repo)),
                "service path": auth(key, f"{url}/info/refs"),
                "with query": auth(key, f"{url}?service=git-receive-pack"),
                "too old": auth(key, url, now=int(time.time()) - 120),
                "future": auth(key, url, now=int(time.time()) + 120),
                "tampered": [("Authorization", _token_of(tampered))],
                "forged sig": [("Authorization", _token_of(forged_sig))],
                "wrong kind": [("Authorization", _token_of(wrong_kind))],
                "huge": [("Authorization", "Nostr " + "A" * 12000)],
            }
            for name, headers in bad.items():
                for method, target in (("GET", info), ("POST", f"{path}/git-receive-pack")):
                    response = await raw_request(port, method, target, headers=headers)
                    assert response.status == 401, (name, method, response)
                    assert response.headers.get("www-authenticate", "").startswith("Nostr"), (
                        name,
                        response.headers,
                    )
            await expect_unchanged(h, watch, owner=owner, repo=repo, before=step)


async def test_a_partly_refused_push_is_refused_whole(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """git refuses `x/y` while `x` exists but takes `z` into the workspace; the relay then
    publishes nothing, so git must not print `z` as pushed (it did: `* [new branch]`)."""
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        key = new_key()
        git = Git(tmp_path / "home")
        owner, url, work = await setup_repo(h, git, tmp_path, key, "atomic")
        c1 = await git.commit(work, "README", "one\n", "first")
        await git.run(
            "push", "-q", "origin", "main", "main:refs/heads/x", cwd=work, key=key, url=url
        )
        before = (await h.manifest(owner, "atomic")).refs
        c2 = await git.commit(work, "README", "two\n", "second")
        pushed = await git.run(
            "push", "--porcelain", "origin", "HEAD:refs/heads/z", "HEAD:refs/heads/x/y",
            cwd=work, key=key, url=url, check=False,
        )  # fmt: skip
        assert pushed.returncode != 0
        out = pushed.stdout.decode()
        assert "!\tHEAD:refs/heads/z\t[remote rejected] (atomic push failed)" in out, out
        assert "!\tHEAD:refs/heads/x/y\t[remote rejected]" in out, out
        assert "*\t" not in out, out  # nothing reported as a new ref
        assert (await h.manifest(owner, "atomic")).refs == before == {
            "refs/heads/main": c1, "refs/heads/x": c1,
        }  # fmt: skip
        assert c2 not in before.values()


async def test_a_push_past_the_bounds_reads_enforce_is_refused_with_a_reason_git_prints(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """Refs a reader would refuse are never written: here the relay-signed ref-state event
    would outgrow RELAY_MAX_EVENT_BYTES (the manifest bounds are unit-tested)."""
    async with hosted_relay(
        "filesystem", nursery, db_url, tmp_path / "data", max_event_bytes=8192
    ) as h:
        key = new_key()
        git = Git(tmp_path / "home")
        owner, url, work = await setup_repo(h, git, tmp_path, key, "bounded")
        c1 = await git.commit(work, "README", "one\n", "first")
        await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=url)
        before = await h.pointer(owner, "bounded")
        [state_before] = await settled_states(h, owner, "bounded")
        many = [f"HEAD:refs/heads/{'b' * 150}{i:03d}" for i in range(60)]
        pushed = await git.run(
            "push", "--porcelain", "origin", *many, cwd=work, key=key, url=url, check=False
        )
        assert pushed.returncode != 0
        out = pushed.stdout.decode()
        assert out.count("[remote rejected] (too many refs: the repository state event") == 60
        assert await h.pointer(owner, "bounded") == before
        assert (await h.manifest(owner, "bounded")).refs == {"refs/heads/main": c1}
        [state_after] = await stored_states(h, "bounded")
        assert state_after["id"] == state_before["id"]
        # Fewer refs fit, and go through.
        await git.run("push", "-q", "origin", *many[:10], cwd=work, key=key, url=url)
        assert len((await h.manifest(owner, "bounded")).refs) == 11


async def test_private_reads_need_a_token(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay(
        "filesystem", nursery, db_url, tmp_path / "data", git_public_read=False
    ) as h:
        key, maintainer_key, stranger = new_key(), new_key(), new_key()
        repo = "private"
        owner = (
            await announce(
                h.port, key, repo, extra_tags=[["maintainers", pubkey_hex(maintainer_key)]]
            )
        ).pubkey
        url = h.url(owner, repo)
        git = Git(tmp_path / "home")
        work = fresh_dir(tmp_path, "work")
        await git.run("init", "-q", str(work))
        c1 = await git.commit(work, "README", "secret\n", "first")
        await git.run("push", "-q", url, "main", cwd=work, key=key, url=url)

        anonymous = await git.run("clone", url, str(fresh_dir(tmp_path, "anon")), check=False)
        assert anonymous.returncode != 0
        for method, target in (
            ("GET", f"{h.path(owner, repo)}/info/refs?service=git-upload-pack"),
            ("POST", f"{h.path(owner, repo)}/git-upload-pack"),
        ):
            response = await raw_request(h.port, method, target)
            assert response.status == 401, response
            assert response.headers["www-authenticate"].startswith("Nostr")
        stale = await raw_request(
            h.port, "GET", f"{h.path(owner, repo)}/info/refs?service=git-upload-pack",
            headers=auth(key, url, now=int(time.time()) - 120),
        )  # fmt: skip
        assert stale.status == 401

        # The owner and the maintainers read.
        for reader in (key, maintainer_key):
            cloned, head = await clone_refs(git, url, fresh_dir(tmp_path, "clone"), key=reader)
            assert cloned == {"refs/heads/main": c1}
            assert head == "refs/heads/main"
        # Anyone else with a valid token is told there is no such repository (404, so the
        # names of private repositories do not leak), for reads and for the push
        # advertisement, which lists the refs too.
        refused = await git.run(
            "clone", url, str(fresh_dir(tmp_path, "stranger")), key=stranger, check=False
        )
        assert refused.returncode != 0
        for method, target in (
            ("GET", f"{h.path(owner, repo)}/info/refs?service=git-upload-pack"),
            ("POST", f"{h.path(owner, repo)}/git-upload-pack"),
            ("GET", f"{h.path(owner, repo)}/info/refs?service=git-receive-pack"),
        ):
            response = await raw_request(h.port, method, target, headers=auth(stranger, url))
            assert response.status == 404, (target, response)
            assert c1.encode() not in response.body


async def test_npub_alias(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> None:
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        key = new_key()
        repo = "aliased"
        git = Git(tmp_path / "home")
        owner, url, work = await setup_repo(h, git, tmp_path, key, repo)
        c1 = await git.commit(work, "README", "hi\n", "first")
        await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=url)

        alias = f"http://{HOST}:{h.port}/{hex_to_npub(owner)}/{repo}.git"
        cloned, head = await clone_refs(git, alias, fresh_dir(tmp_path, "alias"))
        assert cloned == {"refs/heads/main": c1}
        assert head == "refs/heads/main"

        # Pushing through the alias works with a token signed for the alias URL.
        c2 = await git.commit(work, "README", "again\n", "second")
        await git.run("push", "-q", alias, "main", cwd=work, key=key, url=alias)
        assert (await h.manifest(owner, repo)).refs == {"refs/heads/main": c2}
        # A token for the /git/ URL is not a token for the alias.
        path = f"/{hex_to_npub(owner)}/{repo}.git/info/refs?service=git-receive-pack"
        response = await raw_request(h.port, "GET", path, headers=auth(key, url))
        assert response.status == 401

        # Another owner's npub does not reach this repo.
        stranger = hex_to_npub(pubkey_hex(new_key()))
        response = await raw_request(
            h.port, "GET", f"/{stranger}/{repo}.git/info/refs?service=git-upload-pack"
        )
        assert response.status == 404
