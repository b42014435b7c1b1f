"""Run the `nostr-relay` package from PyPI as a benchmark peer on loopback.

    python -m bench.peer install   # venv under bench/.peer/venv + pip install nostr-relay
    python -m bench.peer start     # installs if needed, fresh sqlite db, prints the ws:// URL
    python -m bench.peer url       # prints the URL of the running peer
    python -m bench.peer status
    python -m bench.peer stop

Everything lives under bench/.peer/ (gitignored): the venv, config.yaml, the sqlite
database, relay.log and state.json (pid and port of the running server).

The config keys come from the installed package (nostr_relay/config.py, config.yaml,
rate_limiter.py, validators.py, storage/db.py, version 1.14):

* storage: sqlite via ``sqlalchemy.url`` (relative to the working directory, which is
  bench/.peer/), the shipped validators (size, signature, recency, hellthread) and the
  shipped concurrency (``num_concurrent_adds: 2``, ``num_concurrent_reqs: 10``);
* rate limits: off -- the package only rate-limits when a ``rate_limits`` key exists,
  and this config has none;
* size limits relaxed: ``max_event_size`` (content bytes) 64 KiB instead of 4 KiB,
  ``max_limit`` (events per REQ) 100000, ``subscription_limit`` 1000,
  ``oldest_event`` 10 years;
* logging at WARNING: the package logs every stored event at INFO otherwise;
* served by ``nostr-relay -c config.yaml serve`` (gunicorn + one uvicorn worker)
  bound to 127.0.0.1 on a free port.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import venv
from pathlib import Path

PACKAGE = "nostr-relay==1.14"
PEER_DIR = Path(__file__).resolve().parent / ".peer"
VENV_DIR = PEER_DIR / "venv"
CONFIG = PEER_DIR / "config.yaml"
STATE = PEER_DIR / "state.json"
LOG = PEER_DIR / "relay.log"
DB_NAME = "nostr.sqlite3"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 40.0  # gunicorn's graceful_timeout is 30 s

CONFIG_TEMPLATE = """\
# Written by bench/peer.py -- benchmark peer config for nostr-relay (PyPI).
DEBUG: false
relay_name: nostr-relay benchmark peer
relay_description: nostr-relay from PyPI, run by bench/peer.py
sysop_pubkey: ""
sysop_contact: ""

storage:
  # relative to the server's working directory, bench/.peer/
  sqlalchemy.url: sqlite+aiosqlite:///{db_name}
  num_concurrent_reqs: 10
  num_concurrent_adds: 2
  validators:
    - nostr_relay.validators.is_not_too_large
    - nostr_relay.validators.is_signed
    - nostr_relay.validators.is_recent
    - nostr_relay.validators.is_not_hellthread

verification:
  nip05_verification: disabled
  expiration: 2592000
  update_frequency: 3600

gunicorn:
  bind: 127.0.0.1:{port}
  workers: 1
  loglevel: warning
  reload: false

authentication:
  enabled: false

# No "rate_limits" key: nostr-relay then uses its NullRateLimiter.
message_timeout: 1800
subscription_limit: 1000
max_limit: 100000
max_event_size: 65536
oldest_event: 315360000
hellthread_limit: 100

logging:
  version: 1
  formatters:
    simple:
      format: "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
  handlers:
    console:
      class: logging.StreamHandler
      level: DEBUG
      formatter: simple
      stream: ext://sys.stdout
  loggers:
    nostr_relay:
      level: WARNING
      handlers: [console]
      propagate: false
  root:
    level: WARNING
    handlers: [console]
"""


class PeerError(Exception):
    pass


def relay_exe() -> Path:
    return VENV_DIR / "bin" / "nostr-relay"


def install(spec: str = PACKAGE) -> None:
    if relay_exe().exists():
        return
    PEER_DIR.mkdir(parents=True, exist_ok=True)
    print(f"creating venv in {VENV_DIR} and installing {spec}", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(VENV_DIR)
    pip = [str(VENV_DIR / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, spec], check=True)
    if not relay_exe().exists():
        raise PeerError(f"pip install {spec} did not provide {relay_exe()}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_state() -> dict[str, int | str] | None:
    try:
        data = json.loads(STATE.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_state() -> dict[str, int | str] | None:
    state = read_state()
    if state is None:
        return None
    if not pid_alive(int(state["pid"])):
        STATE.unlink(missing_ok=True)
        return None
    return state


def nip11_ready(port: int) -> bool:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/", headers={"Accept": "application/nostr+json"}
    )
    # An empty ProxyHandler: never route this loopback probe through an http_proxy.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=2) as response:
            return bool(json.loads(response.read()).get("supported_nips"))
    except (OSError, ValueError):
        return False


def log_tail(lines: int = 30) -> str:
    try:
        return "\n".join(LOG.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(port: int | None, keep_data: bool) -> str:
    state = running_state()
    if state is not None:
        raise PeerError(f"already running: pid {state['pid']} at {state['url']}")
    install()
    if not keep_data:
        for suffix in ("", "-wal", "-shm"):
            (PEER_DIR / f"{DB_NAME}{suffix}").unlink(missing_ok=True)
    port = port or free_port()
    CONFIG.write_text(CONFIG_TEMPLATE.format(db_name=DB_NAME, port=port))
    with LOG.open("ab") as log:
        proc = subprocess.Popen(
            [str(relay_exe()), "-c", str(CONFIG), "serve"],
            cwd=PEER_DIR,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() signals only this tree
        )
    url = f"ws://127.0.0.1:{port}/"
    STATE.write_text(json.dumps({"pid": proc.pid, "port": port, "url": url}))
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            STATE.unlink(missing_ok=True)
            raise PeerError(f"nostr-relay exited with {proc.returncode}:\n{log_tail()}")
        if nip11_ready(port):
            return url
        time.sleep(0.25)
    stop()
    raise PeerError(f"nostr-relay did not answer within {START_TIMEOUT:.0f} s:\n{log_tail()}")


def stop() -> bool:
    state = read_state()
    if state is None:
        return False
    pid = int(state["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and pid_alive(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    STATE.unlink(missing_ok=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peer", description="nostr-relay (PyPI) benchmark peer"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_install = sub.add_parser("install", help="create bench/.peer/venv and pip install")
    p_install.add_argument("--spec", default=PACKAGE, help=f"pip requirement (default {PACKAGE})")
    p_start = sub.add_parser("start", help="start on 127.0.0.1 and print its ws:// URL")
    p_start.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    p_start.add_argument(
        "--keep-data", action="store_true", help="keep the existing sqlite database"
    )
    sub.add_parser("stop", help="stop the running peer")
    sub.add_parser("status", help="say whether the peer runs")
    sub.add_parser("url", help="print the URL of the running peer")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            install(args.spec)
        elif args.command == "start":
            print(start(args.port, args.keep_data))
        elif args.command == "stop":
            print("stopped" if stop() else "not running")
        elif args.command in ("status", "url"):
            state = running_state()
            if state is None:
                print("not running", file=sys.stderr)
                return 1
            if args.command == "url":
                print(state["url"])
            else:
                print(f"running: pid {state['pid']} at {state['url']}")
    except (PeerError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
