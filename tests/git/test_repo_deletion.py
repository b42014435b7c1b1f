"""Deleting a repository while the object store refuses to remove its pointer.

The deletion (NIP-09) is accepted and the name released; the pointer stays (the store said
no; the failure is logged). Its owner must not be locked out: announcing the repository
again adopts the pointer, and the repository is back as it was. The refusal is injected (a
store that refuses one DELETE on demand): the test says so.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from relay.events import kinds
from relay.git.objectstore import BackendError
from tests.git.gitclient import Git
from tests.git.hosting import clone_refs, fresh_dir, hosted_relay, setup_repo
from tests.helpers import announcement, connect, make_event, new_key


async def test_a_repo_whose_pointer_could_not_be_removed_can_be_announced_again(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        key = new_key()
        git = Git(tmp_path / "home")
        owner, url, work = await setup_repo(h, git, tmp_path, key, "kept")
        c1 = await git.commit(work, "README", "one\n", "first")
        await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=url)
        assert h.relay.app is not None
        store = h.relay.app.objects.store

        async def refuse(*args: Any) -> None:  # the store refuses the DELETE (injected)
            raise BackendError("403 AccessDenied")

        deletion = make_event(
            key, kind=kinds.DELETION, content="",
            tags=[["a", f"{kinds.REPO_ANNOUNCEMENT}:{owner}:kept"]],
            created_at=int(time.time()) + 1,
        )  # fmt: skip
        with monkeypatch.context() as patch:
            patch.setattr(store, "delete", refuse)
            async with connect(h.port) as client:
                assert (await client.publish(deletion))[2] is True
        assert await h.pointer(owner, "kept") is not None  # the store kept it

        # The owner announces it again (newer than the deletion, as NIP-09 asks).
        again = announcement(key, "kept", created_at=deletion.created_at + 1)
        async with connect(h.port) as client:
            assert await client.publish(again) == ["OK", again.id, True, ""]
        cloned, head = await clone_refs(git, url, fresh_dir(tmp_path, "again"))
        assert cloned == {"refs/heads/main": c1}
        assert head == "refs/heads/main"
