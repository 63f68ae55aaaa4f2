"""Headless Chromium driven over the Chrome DevTools Protocol, for the UI tests.

The same Chromium the catalog test runs (``chromium --headless``), started with a remote
debugging port; one page is driven through its DevTools WebSocket with ``websocket-client``:
navigate, evaluate JavaScript in the page (read the DOM, click), wait for a condition, take a
PNG screenshot. Everything has a timeout; :meth:`Browser.close` ends the browser's process group.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
]


class BrowserError(RuntimeError):
    """The browser did not start, a DevTools call failed, or a wait timed out."""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium with one page (``start`` it, then ``goto``/``eval``/``click``)."""

    def __init__(self, profile: Path, timeout_s: float = 60) -> None:
        self.profile = profile
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self._ws: Any = None
        self._ids = itertools.count(1)

    def start(self) -> Browser:
        import websocket

        exe = chromium()
        if exe is None:
            raise BrowserError("Chromium is not installed: ./dev test installs it")
        self.proc = subprocess.Popen(
            [exe, *FLAGS, "--remote-debugging-port=0", f"--user-data-dir={self.profile}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        port = None
        deadline = time.monotonic() + self.timeout_s
        assert self.proc.stderr is not None
        while port is None:
            line = self.proc.stderr.readline()
            match = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if match:
                port = int(match.group(1))
            elif (not line and self.proc.poll() is not None) or time.monotonic() > deadline:
                raise BrowserError(f"Chromium did not open its DevTools port: {line!r}")
        req = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(req, timeout=30) as resp:
            target = json.loads(resp.read())
        self._ws = websocket.create_connection(
            target["webSocketDebuggerUrl"], timeout=self.timeout_s, suppress_origin=True
        )
        self.call("Page.enable")
        self.call("Runtime.enable")
        return self

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its ``result`` (events that arrive meanwhile are dropped)."""
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait("document.readyState === 'complete'", what=f"{url} to load")

    def wait(self, expression: str, what: str, timeout_s: float | None = None) -> Any:
        """Poll ``expression`` until truthy (its value); BrowserError naming ``what`` after."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            with contextlib.suppress(BrowserError):
                value = self.eval(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {what}")
            time.sleep(0.25)

    def text(self) -> str:
        return str(self.eval("document.body ? document.body.innerText : ''"))

    def click_button(self, label: str) -> None:
        """Click the first enabled button whose text is ``label`` (BrowserError if none)."""
        script = (
            "(() => { const b = [...document.querySelectorAll('button')].find("
            f"x => x.innerText.trim() === {json.dumps(label)} && !x.disabled);"
            " if (!b) return false; b.click(); return true; })()"
        )
        if not self.eval(script):
            raise BrowserError(f"no enabled button {label!r} on {self.eval('location.href')}")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
