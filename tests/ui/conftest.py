"""The demo world, built once by the real `lora-pipeline demo`, and a real `dagster-webserver`
serving its instance on a free loopback port. Processes are always cleaned up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory):
    """(demo workspace dir, env) after `lora-pipeline demo --dir ...` ran to completion."""
    root = tmp_path_factory.mktemp("demo-world") / "demo"
    env = {**os.environ, "LORA_PIPELINE_DEMO_DIR": str(root), "DAGSTER_HOME": str(root / ".dagster")}
    env.pop("LORA_PIPELINE_CONFIG", None)
    out = subprocess.run([str(BIN / "lora-pipeline"), "demo", "--dir", str(root)], env=env, cwd=tmp_path_factory.getbasetemp(),
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return root, env, out.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def webserver(demo_world):
    root, env, _ = demo_world
    port = _free_port()
    proc = subprocess.Popen([str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/server_info", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"dagster-webserver did not start: {proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
