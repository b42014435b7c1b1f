"""A fault at every object-store call of a push leaves the repository consistent.

The push path's counterpart of tests/integration/test_announce_cancellation.py. A real relay,
real git, Postgres and the filesystem store; the one fake is a wrapper of the relay's object
store that fails call number N of a push (no real store fails an exact call on demand):
either refusing it ("error", a 5xx or a dropped connection before the store acted) or
applying it and then losing its answer ("lost-answer"). For every N, once the reconciler has
run: the pointer names a valid manifest whose packs are all there, a clone gives exactly its
refs, the relay-signed 30618 says the same, git's exit status told the truth (a push git
calls failed changed nothing), and the next push goes through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from relay.git import model
from relay.git.objectstore import BackendError, ObjectStore, TransportError
from tests.git.gitclient import Git
from tests.git.hosting import (
    RECONCILE_SECONDS,
    Hosted,
    clone_refs,
    converged,
    fresh_dir,
    hosted_relay,
    setup_repo,
)
from tests.helpers import new_key


class FailOne:
    """The store as it is, except that the `occurrence`-th `method` call on a key under
    `prefix` fails the way `mode` says."""

    def __init__(
        self, inner: ObjectStore, method: str, prefix: str, occurrence: int, mode: str
    ) -> None:
        self.inner = inner
        self.target = (method, prefix)
        self.occurrence = occurrence
        self.mode = mode
        self.seen = 0
        self.fired = False

    async def _call(self, method: str, key: str, call: Callable[[], Awaitable[Any]]) -> Any:
        if (method, key[: len(self.target[1])]) == self.target and not self.fired:
            self.seen += 1
            if self.seen == self.occurrence:
                self.fired = True
                if self.mode == "error":
                    raise BackendError("injected: the store refused the call")
                await call()
                raise TransportError("injected: the store acted, its answer was lost")
        return await call()

    async def get(self, key: str, max_bytes: int | None = None) -> Any:
        return await self._call("get", key, lambda: self.inner.get(key, max_bytes))

    async def put(self, key: str, body: bytes, if_match: str | None) -> Any:
        return await self._call("put", key, lambda: self.inner.put(key, body, if_match))

    async def delete(self, key: str) -> None:
        await self._call("delete", key, lambda: self.inner.delete(key))

    async def aclose(self) -> None:
        await self.inner.aclose()


POINTER, MANIFEST, PACK, IDX = "repos/", model.MANIFESTS, model.PACKS, model.IDX
# Every store call of a push, in order: the GET info/refs hydrate reads the pointer and
# the manifest (1st), the POST hydrate reads them again (2nd) with the packs and their idx,
# publishing writes the pack, its idx, the manifest and the pointer (the CAS), and the
# 30618 step after the answer reads the pointer and manifest (3rd, and 4th to confirm).
CALLS = [
    *(("get", POINTER, n) for n in (1, 2, 3, 4)),
    *(("get", MANIFEST, n) for n in (1, 2, 3, 4)),
    ("get", PACK, 1),
    ("get", IDX, 1),
    ("put", PACK, 1),
    ("put", IDX, 1),
    ("put", MANIFEST, 1),
    ("put", POINTER, 1),
]


async def assert_consistent(
    h: Hosted, git: Git, tmp_path: Path, owner: str, repo: str
) -> dict[str, str]:
    """The pointer, its manifest, its packs, a clone and the 30618 agree; the refs."""
    manifest = await h.manifest(owner, repo)
    for pack in manifest.packs:
        assert await h.objects.store.get(pack) is not None, f"{pack} is missing"
    cloned, _ = await clone_refs(git, h.url(owner, repo), fresh_dir(tmp_path, "check"))
    assert cloned == manifest.refs
    await converged(h, owner, repo)
    return manifest.refs


async def settled(h: Hosted, owner: str, repo: str) -> None:
    """Wait until the 30618 step that follows a push's answer (or the reconciler, if the
    fault hit that step) is done with the store."""
    assert h.relay.app is not None
    await converged(h, owner, repo)
    with trio.fail_after(10):
        while h.relay.app.ref_states.busy:
            await trio.sleep(0.02)


@pytest.mark.parametrize("mode", ["error", "lost-answer"])
async def test_a_fault_at_every_store_call_of_a_push_leaves_it_consistent(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, mode: str
) -> None:
    async with hosted_relay(
        "filesystem", nursery, db_url, tmp_path / "data",
        git_reconcile_seconds=RECONCILE_SECONDS, git_pack_cache_bytes=0,
    ) as h:  # fmt: skip
        assert h.relay.app is not None
        objects = h.relay.app.objects
        honest = objects.store
        key = new_key()
        git = Git(tmp_path / "home")
        owner, url, work = await setup_repo(h, git, tmp_path, key, "faults")
        await git.commit(work, "f0", "0\n", "baseline")
        await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=url)
        await settled(h, owner, "faults")
        refs = await assert_consistent(h, git, tmp_path, owner, "faults")

        outcomes: list[bool] = []
        for at, (method, prefix, occurrence) in enumerate(CALLS, 1):
            commit = await git.commit(work, f"f{at}", f"{at}\n", f"push {at}")
            faulty = FailOne(honest, method, prefix, occurrence, mode)
            objects.store = faulty
            try:
                result = await git.run(
                    "push", "-q", "origin", "main", cwd=work, key=key, url=url, check=False
                )
                await settled(h, owner, "faults")  # the 30618 step uses the store too
            finally:
                objects.store = honest
            where = (method, prefix, occurrence, result.stderr.decode(errors="replace"))
            if method == "put":  # every push writes each once: the fault fired
                assert faulty.fired, where
            after = await assert_consistent(h, git, tmp_path, owner, "faults")
            if result.returncode == 0:
                assert after == {"refs/heads/main": commit}, where
            else:  # what git calls a failure changed nothing
                assert after == refs, where
                await git.run("reset", "-q", "--hard", "HEAD~1", cwd=work)
            refs = after
            outcomes.append(result.returncode == 0)
        # Some faults fail the push, some do not touch it (after its answer): both happen.
        assert not all(outcomes) and any(outcomes), outcomes
        # And the repository takes a push as ever.
        last = await git.commit(work, "last", "last\n", "last")
        await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=url)
        assert (await assert_consistent(h, git, tmp_path, owner, "faults")) == {
            "refs/heads/main": last
        }
