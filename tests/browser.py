"""A small test-only driver for headless Chromium over the Chrome DevTools Protocol.

`open_browser` starts Chromium with a throwaway profile, attaches to a fresh page over the
browser's DevTools websocket (flattened sessions) and yields a `Browser` that can navigate,
evaluate JavaScript, read text, take screenshots and resize the viewport. It records console
messages, uncaught exceptions, browser log entries and the status and headers of the last
main-document response, so tests can assert that no script ran and nothing went wrong.
Chromium resolves no host names except 127.0.0.1, so pages cannot reach the internet.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import math
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

COMMAND_TIMEOUT = 30.0
START_TIMEOUT = 30.0
MAX_MESSAGE_SIZE = 64 * 1024 * 1024
# Chromium reports a 4xx/5xx response with an empty body as a failed navigation, although
# the page (Chromium's own error page) loads; a test wants to see the status, not an error.
_HTTP_STATUS_ERROR = "net::ERR_HTTP_RESPONSE_CODE_FAILURE"

Json = dict[str, Any]


class Browser:
    """One page of a running headless Chromium, driven over a flattened CDP session."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, trio.MemorySendChannel[Json]] = {}
        self._subscribers: dict[str, list[trio.MemorySendChannel[Json]]] = {}
        self._session: str | None = None
        self._frame_id: str | None = None
        self._closed = False
        self.console: list[str] = []
        self.exceptions: list[str] = []
        self.log: list[str] = []
        self.last_status: int | None = None
        self.last_headers: dict[str, str] = {}

    async def goto(self, url: str, timeout: float = COMMAND_TIMEOUT) -> None:
        """Navigate the page to `url` and wait for its load event."""
        self.last_status, self.last_headers = None, {}
        send, receive = trio.open_memory_channel[Json](math.inf)
        self._subscribers.setdefault("Page.loadEventFired", []).append(send)
        try:
            with trio.fail_after(timeout):
                result = await self._command("Page.navigate", url=url)
                error = result.get("errorText")
                if error and error != _HTTP_STATUS_ERROR:
                    raise AssertionError(f"navigation to {url} failed: {error}")
                await receive.receive()
        finally:
            self._subscribers["Page.loadEventFired"].remove(send)

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of `expression` in the page, awaiting it if it is a promise."""
        result = await self._command(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {_describe(result['exceptionDetails'])}")
        return result["result"].get("value")

    async def text(self, selector: str) -> str | None:
        """The innerText of the first element matching `selector`, or None."""
        found = await self.evaluate(
            f"(() => {{ const e = document.querySelector({orjson.dumps(selector).decode()});"
            " return e ? e.innerText : null; })()"
        )
        return None if found is None else str(found)

    async def click(self, selector: str) -> None:
        """Click the middle of the first element matching `selector` with the mouse, as a
        person does (a user gesture, which the clipboard asks for)."""
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({orjson.dumps(selector).decode()});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        if box is None:
            raise AssertionError(f"nothing to click: {selector}")
        for kind in ("mousePressed", "mouseReleased"):
            await self._command(
                "Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left",
                clickCount=1,
            )  # fmt: skip

    async def title(self) -> str:
        return str(await self.evaluate("document.title"))

    async def screenshot(self, path: Path) -> None:
        """A PNG of the viewport, written to `path`."""
        result = await self._command("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(result["data"]))

    async def set_viewport(self, width: int, height: int, mobile: bool = False) -> None:
        await self._command(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=2 if mobile else 1,
            mobile=mobile,
        )

    async def _command(self, method: str, **params: Any) -> Json:
        """Send one CDP command and return its result; a CDP error raises AssertionError."""
        if self._closed:
            raise AssertionError(f"{method}: the browser connection is closed")
        message_id = next(self._ids)
        message: Json = {"id": message_id, "method": method, "params": params}
        if self._session is not None:  # once attached, everything goes to the page
            message["sessionId"] = self._session
        send, receive = trio.open_memory_channel[Json](1)
        self._pending[message_id] = send
        try:
            with trio.fail_after(COMMAND_TIMEOUT):
                try:
                    await self._ws.send_message(orjson.dumps(message).decode())
                    response = await receive.receive()
                except (ConnectionClosed, trio.EndOfChannel):
                    raise AssertionError(f"{method}: the browser connection closed") from None
        finally:
            del self._pending[message_id]
        if "error" in response:
            raise AssertionError(f"{method} failed: {response['error']}")
        result: Json = response.get("result", {})
        return result

    async def _attach(self) -> None:
        # Copy buttons write to the clipboard; tests read it back.
        await self._command(
            "Browser.grantPermissions",
            permissions=["clipboardReadWrite", "clipboardSanitizedWrite"],
        )
        created = await self._command("Target.createTarget", url="about:blank")
        attached = await self._command(
            "Target.attachToTarget", targetId=created["targetId"], flatten=True
        )
        self._session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            await self._command(f"{domain}.enable")
        tree = await self._command("Page.getFrameTree")
        self._frame_id = tree["frameTree"]["frame"]["id"]

    async def _read(self) -> None:
        """Route responses to their commands and record or forward events, until closed."""
        try:
            while True:
                message: Json = orjson.loads(await self._ws.get_message())
                if "id" in message:
                    channel = self._pending.get(message["id"])
                    if channel is not None:
                        channel.send_nowait(message)
                elif message.get("sessionId") == self._session:
                    self._event(message["method"], message.get("params", {}))
        except ConnectionClosed:
            pass
        finally:
            self._closed = True
            for channel in self._pending.values():
                channel.close()

    def _event(self, method: str, params: Json) -> None:
        if method == "Runtime.consoleAPICalled":
            self.console.append(" ".join(_remote_text(arg) for arg in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            self.exceptions.append(_describe(params["exceptionDetails"]))
        elif method == "Log.entryAdded":
            entry = params["entry"]
            self.log.append(f"{entry['level']}: {entry['text']}")
        elif (
            method == "Network.responseReceived"
            and params.get("type") == "Document"
            and params.get("frameId") == self._frame_id
        ):
            response = params["response"]
            self.last_status = int(response["status"])
            self.last_headers = {k.lower(): str(v) for k, v in response["headers"].items()}
        for channel in self._subscribers.get(method, []):
            channel.send_nowait(params)


def _remote_text(value: Json) -> str:
    if "value" in value:
        v = value["value"]
        return v if isinstance(v, str) else orjson.dumps(v).decode()
    return str(value.get("description", value.get("type", "?")))


def _describe(details: Json) -> str:
    exception = details.get("exception") or {}
    return str(exception.get("description") or details.get("text", "unknown exception"))


def headless_chromium(profile: Path) -> list[str]:
    """Debian's chromium, headless, with a throwaway profile, nothing of its own on the
    network, and no name resolved but 127.0.0.1: every page the tests load is on loopback."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not installed: run scripts/test, which installs it")
    return [
        executable,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ]


@asynccontextmanager
async def open_browser(
    profile: Path, *, width: int = 1280, height: int = 900
) -> AsyncIterator[Browser]:
    """Run headless Chromium with `profile` as its user data dir and yield its page."""
    args = [
        *headless_chromium(profile),
        "--remote-debugging-port=0",
        "--remote-allow-origins=*",
        f"--window-size={width},{height}",
        "about:blank",
    ]
    profile.mkdir(parents=True, exist_ok=True)
    port_file = profile / "DevToolsActivePort"
    port_file.unlink(missing_ok=True)
    log_path = profile / "chromium.log"
    with log_path.open("wb") as log:
        # A session of its own, so the whole process group (renderers, zygotes) can be ended.
        process = await trio.lowlevel.open_process(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    try:
        with trio.fail_after(START_TIMEOUT):
            while not (lines := _read_lines(port_file)):
                if process.poll() is not None:
                    pytest.fail(f"chromium exited early: {log_path.read_text()[-2000:]}")
                await trio.sleep(0.05)
        url = f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        async with open_websocket_url(url, max_message_size=MAX_MESSAGE_SIZE) as ws:
            try:
                async with trio.open_nursery() as nursery:
                    browser = Browser(ws)
                    nursery.start_soon(browser._read)
                    await browser._attach()
                    # Headless --window-size leaves room for window decorations: pin the viewport.
                    await browser.set_viewport(width, height)
                    yield browser
                    nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                if len(group.exceptions) == 1:  # the test's own error, not wrapped
                    raise group.exceptions[0] from None
                raise
    finally:
        with trio.CancelScope(shield=True):
            await _stop(process)


def _read_lines(path: Path) -> list[str] | None:
    """Port and browser websocket path, once Chromium has written both."""
    try:
        lines = path.read_text().split()
    except FileNotFoundError:
        return None
    return lines if len(lines) >= 2 else None


async def _stop(process: trio.Process) -> None:
    """SIGTERM Chromium, which then ends its helpers, SIGKILL whatever is left, and reap it."""
    process.terminate()
    with trio.move_on_after(5):
        await process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # stragglers too, if the main process is gone
    await process.wait()
