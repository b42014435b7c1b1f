"""The relay-signed 30618 of a repository comes to match its pointer without a new push,
whatever happened between the pointer CAS and the 30618 write (DESIGN invariant 11).

Real relay, real git, real Postgres and the filesystem store. The faults: a state that a
slower writer stored last with an older manifest (no fault injection needed: it is stored
directly), a pointer moved without any state emitted (as a pod killed right after its CAS
leaves it), a 30618 step that fails after the CAS (a Postgres loss at that moment cannot be
produced on demand: the relay's RefStates.converge is made to raise, and the test says
so), and a CAS whose answer is lost after the store applied it (an ObjectStore wrapper
that applies the write, then raises, as a dropped S3 answer would).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from relay.git import model
from relay.git.fsstore import FilesystemStore
from relay.git.objectstore import GitObjects, TransportError, Won
from relay.git.push import cas_or_read_back
from relay.git.refstate import build_ref_state
from relay.keys import pubkey_hex
from relay.store.db import DatabaseError
from tests.git.gitclient import Git
from tests.git.hosting import (
    RECONCILE_SECONDS,
    Hosted,
    converged,
    hosted_relay,
    newest_state,
    setup_repo,
    stored_states,
)
from tests.helpers import connect, new_key


@asynccontextmanager
async def reconciling_relay(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, repo: str
) -> AsyncIterator[tuple[Hosted, Git, str, str, Path, Any]]:
    """A relay that reconciles every RECONCILE_SECONDS, with `repo` pushed once (its state
    agreeing): (hosted, git, owner, url, work tree, key)."""
    async with hosted_relay(
        "filesystem", nursery, db_url, tmp_path / "data",
        git_reconcile_seconds=RECONCILE_SECONDS,
    ) as h:  # fmt: skip
        git = Git(tmp_path / "home")
        key = new_key()
        owner, url, work = await setup_repo(h, git, tmp_path, key, repo)
        await git.commit(work, "README", "one\n", "first")
        await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=url)
        await converged(h, owner, repo)  # emitted right after the push's answer
        yield h, git, owner, url, work, key


async def store_state(h: Hosted, repo: str, manifest: model.Manifest, created_at: int) -> None:
    """A relay-signed state stored as a slow writer would have: its content is older than
    the pointer, its created_at the newest."""
    assert h.relay.app is not None
    state = build_ref_state(
        h.relay.app.key, repo_id=repo, head=manifest.head, refs=manifest.refs,
        actor=pubkey_hex(h.relay.app.key), created_at=created_at,
    )  # fmt: skip
    async with connect(h.port) as client:
        assert (await client.publish(state))[2] is True


async def test_a_stale_state_stored_last_is_overtaken(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """A slower writer stored an older manifest's state last, with the newest created_at
    (two pushes' states in one second tie, and the lower id wins): the newest state says
    what the pointer no longer holds. It is overtaken, strictly later."""
    async with reconciling_relay(nursery, db_url, tmp_path, "stale") as (h, _, owner, _, _, _):
        stale = model.Manifest(head="refs/heads/main", refs={"refs/heads/main": "1" * 40})
        future = int(time.time()) + 30
        await store_state(h, "stale", stale, future)
        await converged(h, owner, "stale")
        newest = await newest_state(h, "stale")
        assert newest is not None and newest.created_at == future + 1


async def test_the_reconciler_emits_for_a_pointer_moved_without_a_state(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """A pod killed right after its CAS: the pointer moved, no 30618 says so. The
    reconciler (at start-up and periodically, any pod) catches up without a new push."""
    async with reconciling_relay(nursery, db_url, tmp_path, "moved") as (h, _, owner, _, _, _):
        key = model.pointer_key(h.community_id, owner, "moved")
        token, digest = await h.pointer(owner, "moved")  # type: ignore[misc]
        current = await h.objects.get_manifest(digest)
        moved = model.Manifest(
            head=current.head,
            refs={**current.refs, "refs/tags/v1": current.refs["refs/heads/main"]},
            packs=current.packs,
            parent=digest,
        )  # fmt: skip
        new_digest = await h.objects.put_manifest(moved)
        assert isinstance(await h.objects.cas_pointer(key, new_digest, token), Won)
        await converged(h, owner, "moved")
        [state] = await stored_states(h, "moved")
        assert ["refs/tags/v1", current.refs["refs/heads/main"]] in state["tags"]


async def test_a_push_is_answered_whatever_its_30618_step_does(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with reconciling_relay(nursery, db_url, tmp_path, "answered") as pushed:
        h, git, owner, url, work, key = pushed
        assert h.relay.app is not None
        states = h.relay.app.ref_states
        calls: list[str] = []

        async def lost(*args: Any) -> bool:  # Postgres lost right after the CAS (injected)
            calls.append("converge")
            raise DatabaseError("connection lost")

        with monkeypatch.context() as patch:
            patch.setattr(states, "converge", lost)
            c2 = await git.commit(work, "README", "two\n", "second")
            await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=url)
            assert calls  # the push went through its 30618 step, which failed
            assert (await h.manifest(owner, "answered")).refs == {"refs/heads/main": c2}
        await converged(h, owner, "answered")


class AnswerLost:
    """An ObjectStore whose pointer writes are applied and then answered with an error,
    as a store whose answer the network dropped (injected: no real store does it on
    demand)."""

    def __init__(self, inner: FilesystemStore) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def put(self, key: str, data: bytes, if_match: str | None) -> Any:
        await self.inner.put(key, data, if_match)
        raise TransportError("the answer was lost")


async def test_a_cas_whose_answer_is_lost_is_read_back(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "objects")
    objects = GitObjects(store)
    key = model.pointer_key(1, "ab" * 32, "lost")
    first = await objects.put_manifest(model.EMPTY_MANIFEST)
    won = await cas_or_read_back(GitObjects(AnswerLost(store)), key, first, None)  # type: ignore[arg-type]
    assert (await objects.read_pointer(key))[1] == first  # type: ignore[index]
    assert won.token == (await objects.read_pointer(key))[0]  # type: ignore[union-attr,index]
    # A write that did not happen stays a failure: the pointer names another manifest.
    other = await objects.put_manifest(model.Manifest(refs={"refs/heads/x": "2" * 40}))

    class NotApplied(AnswerLost):
        async def put(self, key: str, data: bytes, if_match: str | None) -> Any:
            raise TransportError("no answer")

    with pytest.raises(TransportError):
        await cas_or_read_back(GitObjects(NotApplied(store)), key, other, "stale")  # type: ignore[arg-type]
