"""CORS on the relay's port: every answer (git, NIP-11, probes, 404s, refusals) carries the
CORS headers, OPTIONS on any path of a known host is a preflight answer (204), and a real
browser (headless Chromium) on another origin reads a hosted repository over smart HTTP,
POSTs upload-pack after its preflight and reads an error's status and headers."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import html
import re
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from coincurve import PrivateKey

from relay.git import pktline
from relay.git.nip98 import make_token
from relay.git.push import Conflict
from relay.protocol.bech32 import hex_to_npub
from tests.browser import headless_chromium
from tests.git.gitclient import Git, announce
from tests.git.hosting import HOST, Hosted, Response, hosted_relay, raw_request
from tests.helpers import RelayUnderTest, new_key

CORS = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "GET, POST, OPTIONS",
    "access-control-allow-headers": (
        "Authorization, Content-Type, Git-Protocol, Accept, Content-Encoding, X-Requested-With"
    ),
}
EXPOSED = {"www-authenticate", "retry-after"}
UPLOAD_INFO = "/info/refs?service=git-upload-pack"
BROWSER_SECONDS = 60.0


def assert_cors(response: Response, status: int) -> None:
    assert response.status == status, (response.status, response.body[:200])
    for name, value in CORS.items():
        assert response.headers.get(name) == value, (status, name, response.headers)
    exposed = response.headers.get("access-control-expose-headers", "")
    names = {h.strip().lower() for h in exposed.split(",")}
    assert EXPOSED.issubset(names), (status, exposed)


def parse_response(data: bytes) -> Response:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(int(status_line.split()[1]), headers, body)


async def exchange(port: int, data: bytes) -> Response:
    """Send `data` as it is, read the answer to EOF."""
    stream = await trio.open_tcp_stream(HOST, port)
    answer = b""
    async with stream:
        await stream.send_all(data)
        with trio.fail_after(15):
            while chunk := await stream.receive_some(65536):
                answer += chunk
    return parse_response(answer)


# -- every answer ----------------------------------------------------------------------------


async def test_every_http_answer_carries_the_cors_headers(relay: RelayUnderTest) -> None:
    port = relay.port
    assert_cors(await raw_request(port, "GET", "/healthz"), 200)
    assert_cors(await raw_request(port, "GET", "/readyz"), 200)
    assert_cors(await raw_request(port, "GET", "/metrics"), 200)
    nip11 = [("Accept", "application/nostr+json")]
    assert_cors(await raw_request(port, "GET", "/", headers=nip11), 200)
    assert_cors(await raw_request(port, "GET", "/"), 404)
    assert_cors(await raw_request(port, "GET", "/nope", headers=nip11), 404)
    assert_cors(await raw_request(port, "GET", "/", host="nowhere.test", headers=nip11), 404)
    # Refusals of the request head itself, before any route.
    assert_cors(await raw_request(port, "GET", "/ not a target"), 400)
    assert_cors(await raw_request(port, "GET", "/", headers=[("X-Big", "a" * 20_000)]), 431)
    # A websocket upgrade the relay refuses is an HTTP answer like any other.
    upgrade = [("Upgrade", "websocket"), ("Connection", "Upgrade")]
    old = [*upgrade, ("Sec-WebSocket-Version", "8"), ("Sec-WebSocket-Key", "a" * 24)]
    assert_cors(await raw_request(port, "GET", "/", headers=old), 426)


async def test_a_slow_request_head_gets_408_with_the_cors_headers(
    relay: RelayUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("relay.http.HEAD_TIMEOUT_SECONDS", 0.3)
    response = await exchange(relay.port, f"GET / HTTP/1.1\r\nHost: {HOST}\r\n".encode())
    assert_cors(response, 408)


async def test_options_on_any_path_of_a_known_host_is_a_preflight_answer(
    relay: RelayUnderTest,
) -> None:
    owner = "ab" * 32
    npub = hex_to_npub(owner)
    preflight = [
        ("Origin", "http://elsewhere.test"),
        ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "content-type, authorization, git-protocol"),
    ]
    for path in (
        "/",
        "/nope",
        "/healthz",
        f"/git/{owner}/demo/info/refs",
        f"/git/{owner}/demo.git{UPLOAD_INFO}",
        f"/git/{owner}/demo.git/git-receive-pack",
        f"/{npub}/demo.git/info/refs",
        f"/{npub}/demo.git/git-upload-pack",
    ):
        response = await raw_request(relay.port, "OPTIONS", path, headers=preflight)
        assert_cors(response, 204)
        assert response.headers.get("access-control-max-age") == "86400", path
        assert response.body == b"", path
    unknown = await raw_request(
        relay.port, "OPTIONS", f"/{npub}/demo.git/git-upload-pack", host="nowhere.test",
        headers=preflight,
    )  # fmt: skip
    assert_cors(unknown, 404)
    assert "access-control-max-age" not in unknown.headers


# -- git answers -----------------------------------------------------------------------------


async def pushed(h: Hosted, tmp_path: Path, repo: str = "demo") -> tuple[PrivateKey, str, str]:
    """Announce `repo` and push one commit with stock git; (key, owner, commit)."""
    git = Git(tmp_path / "home")
    key = new_key()
    owner = (await announce(h.port, key, repo)).pubkey
    url = h.url(owner, repo)
    work = tmp_path / "work"
    await git.run("init", "-q", str(work))
    commit = await git.commit(work, "README", "hello\n", "first")
    await git.run("push", "-q", url, "main", cwd=work, key=key, url=url)
    return key, owner, commit


def authorization(key: PrivateKey, url: str) -> list[tuple[str, str]]:
    return [("Authorization", make_token(key, url))]


_PACK_HEAD = b"PACK" + (2).to_bytes(4, "big") + (0).to_bytes(4, "big")
EMPTY_PACK = _PACK_HEAD + hashlib.sha1(_PACK_HEAD).digest()  # what git sends for known objects


def want(commit: str) -> bytes:
    """A minimal upload-pack request: one want, a flush, done."""
    return pktline.encode(f"want {commit}\n".encode()) + pktline.FLUSH + pktline.encode(b"done\n")


async def test_git_answers_carry_the_cors_headers(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with hosted_relay(
        "filesystem", nursery, db_url, tmp_path / "data",
        git_max_processes=1, git_public_read=False,
    ) as h:  # fmt: skip
        key, owner, commit = await pushed(h, tmp_path)
        path, url = h.path(owner, "demo"), h.url(owner, "demo")
        auth = authorization(key, url)
        npub_path = f"/{hex_to_npub(owner)}/demo.git"
        npub_auth = authorization(key, f"http://{HOST}:{h.port}{npub_path}")
        info = await raw_request(h.port, "GET", f"{npub_path}{UPLOAD_INFO}", headers=npub_auth)
        assert_cors(info, 200)
        fetched = await raw_request(
            h.port, "POST", f"{path}/git-upload-pack", body=want(commit),
            headers=[*auth, ("Content-Type", "application/x-git-upload-pack-request")],
        )  # fmt: skip
        assert_cors(fetched, 200)  # a chunked answer
        assert fetched.body.startswith(b"0008NAK\nPACK")
        unauthorized = await raw_request(h.port, "GET", f"{path}{UPLOAD_INFO}")
        assert_cors(unauthorized, 401)
        assert unauthorized.headers["www-authenticate"].startswith("Nostr")
        missing = f"/git/{owner}/nothing.git"
        missing_auth = authorization(key, f"http://{HOST}:{h.port}{missing}")
        assert_cors(
            await raw_request(h.port, "GET", f"{missing}{UPLOAD_INFO}", headers=missing_auth),
            404,
        )
        assert_cors(await raw_request(h.port, "GET", f"/git/{owner}/..{UPLOAD_INFO}"), 400)
        assert_cors(await raw_request(h.port, "PUT", f"{path}{UPLOAD_INFO}"), 405)
        bomb = gzip.compress(b"\0" * (17 << 20), compresslevel=9)
        too_large = await raw_request(
            h.port, "POST", f"{path}/git-upload-pack", body=bomb,
            headers=[*auth, ("Content-Encoding", "gzip")],
        )  # fmt: skip
        assert_cors(too_large, 413)

        # The pointer moved while the push ran: a report-status refusing the ref, as git
        # prints it (with CORS, like every answer).
        async def lost_race(*args: object) -> Conflict:
            return Conflict()

        monkeypatch.setattr("relay.git.receive.commit", lost_race)
        create = f"{'0' * 40} {commit} refs/heads/other\0report-status"
        conflict = await raw_request(
            h.port, "POST", f"{path}/git-receive-pack",
            body=pktline.encode(create.encode()) + pktline.FLUSH + EMPTY_PACK,
            headers=[*auth, ("Content-Type", "application/x-git-receive-pack-request")],
        )  # fmt: skip
        assert_cors(conflict, 200)
        assert b"ng refs/heads/other another push won the race" in conflict.body

        # Every git slot taken: 503 with a Retry-After a page can read.
        assert h.relay.app is not None and h.relay.app.git is not None
        slots = h.relay.app.git.processes
        holder = object()
        slots.acquire_on_behalf_of_nowait(holder)
        try:
            busy = await raw_request(h.port, "GET", f"{path}{UPLOAD_INFO}", headers=auth)
        finally:
            slots.release_on_behalf_of(holder)
        assert_cors(busy, 503)
        assert busy.headers["retry-after"].isdigit()


# -- a real browser --------------------------------------------------------------------------

PAGE = """<!doctype html>
<html><head><title>pending</title></head><body><pre id="out">pending</pre><script>
const config = CONFIG;
const repo = config.relay + config.repo;

function prefix(buffer) {
  return Array.from(new Uint8Array(buffer).slice(0, 32), (b) => String.fromCharCode(b)).join("");
}

async function attempt(url, init) {
  try {
    const r = await fetch(url, init);
    return {
      status: r.status,
      type: r.headers.get("Content-Type"),
      auth: r.headers.get("WWW-Authenticate"),
      body: prefix(await r.arrayBuffer()),
    };
  } catch (e) {
    return {error: String(e)};
  }
}

(async () => {
  const out = {};
  const refs = "/info/refs?service=git-upload-pack";
  // A NIP-98 Authorization header makes every one of these a preflighted request.
  out.refs = await attempt(repo + refs, {headers: {"Authorization": config.auth}});
  out.fetch = await attempt(repo + "/git-upload-pack", {
    method: "POST",
    headers: {
      "Authorization": config.auth,
      "Content-Type": "application/x-git-upload-pack-request",
    },
    body: config.want,
  });
  out.missing = await attempt(config.relay + config.missing + refs, {
    headers: {"Authorization": config.missingAuth},
  });
  // A simple request: no preflight, an error the page reads with its exposed header.
  out.anonymous = await attempt(repo + refs);
  document.getElementById("out").textContent = JSON.stringify(out);
  document.title = "done";
})();
</script></body></html>
"""


async def serve_page(nursery: trio.Nursery, page: bytes) -> int:
    """A tiny HTTP server on another loopback port (another origin) answering `page` to
    GET / and 404 to anything else; its port."""

    async def answer(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async with stream:
                head = b""
                with trio.move_on_after(10):
                    while b"\r\n\r\n" not in head and len(head) < 65536:
                        chunk = await stream.receive_some(4096)
                        if not chunk:
                            return
                        head += chunk
                found = head.startswith((b"GET / ", b"GET /index.html "))
                body = page if found else b"not found\n"
                status = "200 OK" if found else "404 Not Found"
                kind = "text/html; charset=utf-8" if found else "text/plain"
                await stream.send_all(
                    f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )

    listeners = await nursery.start(partial(trio.serve_tcp, answer, 0, host=HOST))
    return int(listeners[0].socket.getsockname()[1])


def chromium_command(profile: Path, url: str) -> list[str]:
    return [*headless_chromium(profile), "--virtual-time-budget=15000", "--dump-dom", url]


async def run_page(tmp_path: Path, url: str) -> dict[str, Any]:
    """Load `url` in headless Chromium; the outcomes its script wrote into the DOM."""
    command = chromium_command(tmp_path / "chromium-profile", url)
    with trio.fail_after(BROWSER_SECONDS):
        result = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
    errors = result.stderr.decode(errors="replace")[-2000:]
    assert result.returncode == 0, f"chromium failed ({result.returncode}):\n{errors}"
    dom = result.stdout.decode()
    found = re.search(r'<pre id="out">(.*?)</pre>', dom, re.DOTALL)
    assert found is not None, dom
    text = html.unescape(found.group(1))
    assert text != "pending", f"the page's script did not finish:\n{dom}\n{errors}"
    outcomes: dict[str, Any] = orjson.loads(text)
    return outcomes


async def test_a_browser_on_another_origin_clones_and_reads_errors(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """Reads are private here, so the page sends a NIP-98 token, as a browser git client
    would for a private repository."""
    async with hosted_relay(
        "filesystem", nursery, db_url, tmp_path / "data", git_public_read=False
    ) as h:
        key, owner, commit = await pushed(h, tmp_path)
        relay = f"http://{HOST}:{h.port}"
        npub = hex_to_npub(owner)
        config = {
            "relay": relay,
            "repo": f"/{npub}/demo.git",
            "auth": make_token(key, f"{relay}/{npub}/demo.git"),
            "missing": f"/{npub}/nothing.git",
            "missingAuth": make_token(key, f"{relay}/{npub}/nothing.git"),
            "want": want(commit).decode(),
        }
        page = PAGE.replace("CONFIG", orjson.dumps(config).decode()).encode()
        page_port = await serve_page(nursery, page)
        assert page_port != h.port
        out = await run_page(tmp_path, f"http://{HOST}:{page_port}/")

    # A CORS failure is a network error to the page: fetch throws, no status at all.
    assert not [name for name, outcome in out.items() if "error" in outcome], out
    assert out["refs"]["status"] == 200, out
    assert out["refs"]["type"] == "application/x-git-upload-pack-advertisement", out
    assert out["refs"]["body"].startswith("001e# service=git-upload-pack\n"), out
    # A POST with this Content-Type is sent only after a preflight OPTIONS succeeded.
    assert out["fetch"]["status"] == 200, out
    assert out["fetch"]["type"] == "application/x-git-upload-pack-result", out
    assert out["fetch"]["body"].startswith("0008NAK\nPACK"), out
    assert out["missing"]["status"] == 404, out
    assert out["missing"]["body"].startswith("repository not found"), out
    assert out["anonymous"]["status"] == 401, out
    assert (out["anonymous"]["auth"] or "").startswith("Nostr"), out
