"""The pre-receive hook git runs during a push: it asks the relay to decide.

It reads `old new ref` lines, works out for each update whether old is an ancestor of
new (inside git's quarantine, where the pushed objects are), sends the updates over the
push's private unix socket, and exits 0 only when the relay allows the push. Any error
declines it. Kept to the standard library: it starts once per push, as a script, with
neither site-packages nor the relay package on its path.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

ZERO = {"0" * 40, "0" * 64}
SOCKET_ENV = "PUSH_POLICY_SOCKET"


def is_ancestor(old: str, new: str) -> bool | None:
    if old in ZERO or new in ZERO:
        return None
    result = subprocess.run(
        ["git", "merge-base", "--is-ancestor", old, new], capture_output=True, check=False
    )
    return result.returncode == 0


def main() -> int:
    path = os.environ.get(SOCKET_ENV)
    if not path:
        print("push declined: the relay hook socket is not set", file=sys.stderr)
        return 1
    updates = []
    for line in sys.stdin.read().splitlines():
        old, new, ref = line.split(" ", 2)
        updates.append({"old": old, "new": new, "ref": ref, "is_ancestor": is_ancestor(old, new)})
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(30)
            conn.connect(path)
            conn.sendall(json.dumps({"updates": updates}).encode() + b"\n")
            conn.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        decision = json.loads(answer)
    except (OSError, ValueError) as exc:
        print(f"push declined: the relay did not answer ({exc})", file=sys.stderr)
        return 1
    for denial in decision.get("denials", []):
        ref, reason = denial.get("ref", ""), denial.get("reason", "")
        print(f"push declined: {ref}: {reason}", file=sys.stderr)
    return 0 if decision.get("allowed") is True else 1


if __name__ == "__main__":
    sys.exit(main())
