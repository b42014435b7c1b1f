"""Driving the real `git` binary against the relay, with a clean configuration."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import trio
from coincurve import PrivateKey

from relay.events.model import Event
from relay.git.nip98 import make_token
from tests.helpers import announcement, connect


class Git:
    """git with its own HOME and no system config; optional NIP-98 identity."""

    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": "Tester",
            "GIT_AUTHOR_EMAIL": "tester@example.invalid",
            "GIT_COMMITTER_NAME": "Tester",
            "GIT_COMMITTER_EMAIL": "tester@example.invalid",
            "LC_ALL": "C",
        }

    async def run(
        self, *args: str, cwd: Path | None = None, key: PrivateKey | None = None,
        url: str | None = None, check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
        options: list[str] = ["-c", "init.defaultBranch=main", "-c", "protocol.version=0"]
        if key is not None and url is not None:
            options += ["-c", f"http.extraHeader=Authorization: {make_token(key, url)}"]
        result = await trio.run_process(
            ["git", *options, *args],
            cwd=cwd or self.home,
            env=self.env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"git {' '.join(args)} failed ({result.returncode}):\n"
                + result.stderr.decode(errors="replace")
            )
        return result

    async def commit(self, repo: Path, name: str, content: str, message: str) -> str:
        (repo / name).write_text(content)
        await self.run("add", name, cwd=repo)
        await self.run("commit", "-q", "-m", message, cwd=repo)
        return (await self.run("rev-parse", "HEAD", cwd=repo)).stdout.decode().strip()


async def announce(port: int, key: PrivateKey, repo: str, host: str = "127.0.0.1",
                   extra_tags: list[list[str]] | None = None) -> Event:  # fmt: skip
    event = announcement(key, repo, host, extra_tags)
    async with connect(port, host) as client:
        answer = await client.publish(event)
    assert answer[2] is True, answer
    return event
