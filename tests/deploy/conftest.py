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
