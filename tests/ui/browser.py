"""Headless Debian Chromium for tests: screenshots and rendered DOM of real pages."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=20000"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    if os.environ.get("CI"):
        pytest.fail("Debian chromium is not installed: .ci/run must install it")
    pytest.skip("chromium is not installed here (.ci/run installs it)")


def _run(args: list[str], timeout: int = 90) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        return subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              timeout=timeout)


def screenshot(url: str, name: str, size: str = "1400,1000") -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / name
    out.unlink(missing_ok=True)
    _run([f"--window-size={size}", f"--screenshot={out}", url])
    assert out.is_file() and out.stat().st_size > 10_000, f"no screenshot of {url}"
    return out


def rendered_dom(url: str) -> str:
    return _run(["--dump-dom", url]).stdout.decode("utf-8", "replace")


class Tab:
    """One page of a real headless Chromium, driven over the DevTools protocol on a pipe
    (`--remote-debugging-pipe`: JSON messages ending in NUL on fds 3 and 4, no websocket package):
    evaluate JavaScript in the page as it is, and screenshot it."""

    def __init__(self, width: int = 1400, height: int = 1000) -> None:
        self.width, self.height, self._id, self._buf = width, height, 0, b""

    def __enter__(self) -> Tab:
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds() -> None:  # in the child: the pipe ends on fds 3 (commands in) and 4 (replies out)
            os.dup2(to_chrome_r, 100), os.dup2(from_chrome_w, 101)
            os.dup2(100, 3), os.dup2(101, 4)

        self._proc = subprocess.Popen(
            [chromium(), *[f for f in FLAGS if not f.startswith("--virtual-time")], "--remote-debugging-pipe",
             f"--user-data-dir={self._profile.name}", f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(3, 4), preexec_fn=fds)
        os.close(to_chrome_r), os.close(from_chrome_w)
        target = self._send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self._session = self._send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                   session=False)["sessionId"]
        self._send("Emulation.setDeviceMetricsOverride",
                   {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(OSError, TimeoutError, RuntimeError):
            self._send("Browser.close", session=False, timeout=5)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._to_chrome), os.close(self._from_chrome)
        self._profile.cleanup()

    def _send(self, method: str, params: dict | None = None, session: bool = True, timeout: float = 60) -> dict:
        import json
        import select
        import time

        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self._session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result") or {}
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer {method} in {timeout}s")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk

    def goto(self, url: str) -> None:
        self._send("Page.navigate", {"url": url})

    def eval(self, expression: str):
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        r = self._send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}: {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 90):
        """Poll a JavaScript expression until it is truthy (one that throws, as on a page still loading,
        counts as not yet); its value."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            try:
                value, error = self.eval(expression), None
            except RuntimeError as e:
                value, error = None, e
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"not true within {timeout}s: {expression[:200]} ({error or value!r})")
            time.sleep(0.5)

    def screenshot(self, name: str) -> Path:
        """A PNG of the viewport, in test-artifacts/."""
        import base64

        ARTIFACTS.mkdir(exist_ok=True)
        out = ARTIFACTS / name
        out.write_bytes(base64.b64decode(self._send("Page.captureScreenshot", {"format": "png"})["data"]))
        return out
