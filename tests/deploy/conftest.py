"""A real, throwaway PostgreSQL server for the instance-storage test.

Uses $LORA_PIPELINE_TEST_PG when set; otherwise starts a private cluster with the machine's
PostgreSQL binaries (installed by .ci/run) on a free loopback port, and stops it afterwards.
Without PostgreSQL the test is skipped locally, but fails under CI, where it must run.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    if os.environ.get("LORA_PIPELINE_TEST_PG"):
        yield os.environ["LORA_PIPELINE_TEST_PG"]
        return
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries not found: .ci/run must install the postgresql package")
        pytest.skip("PostgreSQL is not installed here (.ci/run installs it)")
    # pytest's temp folders are private to root; the server runs as another user, so use its own.
    base = Path(tempfile.mkdtemp(prefix="lora-pg-"))
    data = base / "data"
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as the postgres user
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def run(*cmd: str) -> None:
        out = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            pytest.fail(f"{cmd[0]} failed: {out.stderr.strip() or out.stdout.strip()}")

    run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    run(pg_ctl, "-D", str(data), "-w", "-l", str(base / "server.log"),
        "-o", f"-p {port} -h 127.0.0.1 -k {base} -c fsync=off", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True,
                       timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url():
    """A real, throwaway Redis broker (Debian's redis-server, installed by .ci/run) on a free loopback
    port, no persistence, stopped afterwards. Skipped locally without redis-server; fails under CI."""
    import time

    server = shutil.which("redis-server")
    if not server:
        if os.environ.get("CI"):
            pytest.fail("redis-server not found: .ci/run must install the redis-server package")
        pytest.skip("redis-server is not installed here (.ci/run installs it: apt-get install redis-server)")
    base = Path(tempfile.mkdtemp(prefix="lora-redis-"))
    port = _free_port()
    log = base / "redis.log"
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(base), "--save", "",
                             "--appendonly", "no", "--logfile", str(log), "--daemonize", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:  # ready when it answers PING on its port
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start: {log.read_text()[-2000:] if log.exists() else ''}")
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)
