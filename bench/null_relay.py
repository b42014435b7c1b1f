"""A do-nothing NIP-01 relay to calibrate the harness itself.

It answers every EVENT with ``["OK", id, true, ""]`` without verifying or storing
it, and every REQ with ``limit`` copies of one canned event followed by EOSE. The
numbers `bench.nostr_load` reaches against it are the ceiling of the harness (plus
this trivial Python relay) on the machine, not a relay result::

    python -m bench.null_relay --port 47999 --duration 120 &
    python -m bench.nostr_load ingest --url ws://127.0.0.1:47999 --connections 1 --events 20000

It binds to 127.0.0.1 only and exits by itself after ``--duration`` seconds.
"""

from __future__ import annotations

import argparse
import sys

import orjson
import trio
import trio_websocket

CANNED = orjson.dumps(
    {
        "id": "00" * 32,
        "pubkey": "11" * 32,
        "created_at": 1,
        "kind": 1,
        "tags": [["t", "bench-0"]],
        "content": "x" * 40,
        "sig": "22" * 64,
    }
).decode()


async def handle(request: trio_websocket.WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            try:
                msg = orjson.loads(await ws.get_message())
            except orjson.JSONDecodeError:
                continue
            if not isinstance(msg, list) or len(msg) < 2:
                continue
            if msg[0] == "EVENT" and isinstance(msg[1], dict):
                reply = orjson.dumps(["OK", msg[1].get("id", ""), True, ""]).decode()
                await ws.send_message(reply)
            elif msg[0] == "REQ":
                sub = orjson.dumps(msg[1]).decode()
                first = msg[2] if len(msg) > 2 and isinstance(msg[2], dict) else {}
                limit = min(int(first.get("limit", 500)), 100_000)
                frame = f'["EVENT",{sub},{CANNED}]'
                for _ in range(limit):
                    await ws.send_message(frame)
                await ws.send_message(f'["EOSE",{sub}]')
    except trio_websocket.ConnectionClosed:
        pass


async def serve(port: int, duration: float) -> None:
    with trio.move_on_after(duration):
        await trio_websocket.serve_websocket(handle, "127.0.0.1", port, ssl_context=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.null_relay", description=__doc__)
    parser.add_argument("--port", type=int, default=47999)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds to run")
    args = parser.parse_args(argv)
    print(f"null relay on ws://127.0.0.1:{args.port}/ for {args.duration:.0f} s", flush=True)
    trio.run(serve, args.port, args.duration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
