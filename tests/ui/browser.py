"""Headless Debian Chromium for tests: screenshots and rendered DOM of real pages."""

from __future__ import annotations

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
