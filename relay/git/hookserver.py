"""The relay's side of the pre-receive hook (`hook.py`): install it, answer it.

During a push git runs the hook, which sends the ref updates over a unix socket private to
the push; the relay decides with `policy` and answers allowed or the denials. The decision
is also kept, so the push is published only when the relay itself said yes (a hook that
was never asked, or was bypassed, allows nothing).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import trio

from relay.git import hook as hook_module
from relay.git import policy
from relay.git.hook import SOCKET_ENV

MAX_HOOK_MESSAGE_BYTES = 4 * 1024 * 1024
# The hook is standard library only, so it runs isolated (-I) and without site (-S):
# a third of the interpreter's start-up, once per push.
HOOK_COMMAND = shlex.join([sys.executable, "-I", "-S", str(Path(hook_module.__file__))])

Decide = Callable[[list[policy.RefUpdate]], list[policy.Denial]]


@dataclass
class HookServer:
    socket_path: Path
    decide: Decide
    decisions: list[list[policy.Denial]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """What git's environment needs for the hook to find this server."""
        return {SOCKET_ENV: str(self.socket_path)}

    @property
    def allowed(self) -> bool:
        """The hook asked, and the relay allowed every update it was asked about."""
        return bool(self.decisions) and not self.decisions[0]

    async def serve(self, listener: trio.SocketListener) -> None:
        async with listener:
            while True:
                conn = await listener.accept()
                async with conn:
                    data = b""
                    while chunk := await conn.receive_some(65536):
                        data += chunk
                        if len(data) > MAX_HOOK_MESSAGE_BYTES:
                            break
                    denials, reply = answer(data, self.decide)
                    self.decisions.append(denials)
                    await conn.send_all(reply)


def answer(message: bytes, decide: Decide) -> tuple[list[policy.Denial], bytes]:
    """The denials for one hook message, and the reply the hook reads (sans-IO)."""
    try:
        updates = [
            policy.RefUpdate(u["old"], u["new"], u["ref"], u.get("is_ancestor"))
            for u in orjson.loads(message)["updates"]
        ]
        denials = decide(updates)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        denials = [policy.Denial("", "malformed hook message")]
    reply = {
        "allowed": not denials,
        "denials": [{"ref": d.ref, "reason": d.reason} for d in denials],
    }
    return denials, orjson.dumps(reply)


def install_hook(repo: Path) -> None:
    """Make git in the bare repository `repo` run the relay's pre-receive hook."""
    hooks = repo / "hooks"
    hooks.mkdir(exist_ok=True)
    hook = hooks / "pre-receive"
    hook.write_text(f"#!/bin/sh\nexec {HOOK_COMMAND}\n")
    hook.chmod(0o755)


@asynccontextmanager
async def hook_server(repo: Path, decide: Decide) -> AsyncIterator[HookServer]:
    """The hook installed in `repo` and answered while the block runs (git runs inside
    it); the socket lives beside the repository, in the request's scratch directory."""
    install_hook(repo)
    server = HookServer(repo.parent / "hook.sock", decide)
    async with trio.open_nursery() as nursery:
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(str(server.socket_path))
        sock.listen(4)
        nursery.start_soon(server.serve, trio.SocketListener(sock))
        yield server
        nursery.cancel_scope.cancel()
