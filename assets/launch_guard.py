"""What keeps a launch safe on a shared instance, without a daemon:

- `LaunchLock`: one launch at a time per instance folder (`<DAGSTER_HOME>/lora_pipeline.launch.lock`,
  an OS file lock, released by the kernel when its process dies, however it dies). A second launch
  says once who holds it (pid, host, since when) and waits; Ctrl-C or SIGTERM end the wait at once.
  The lock file records the holder and the run it is claiming pool slots for, so the next holder can
  free the claim of a launch killed while waiting for a slot (that claim has no run record yet).
  Launches from other hosts on a shared (Postgres) instance are not serialized by it: pools and the
  run health checks (assets/run_health.py) cover them.
- `Signals`: SIGINT and SIGTERM raise `Interrupted` (exit 130 / 143) in our own code. During a Dagster
  run Dagster installs its own handlers (it captures the signal and raises it only inside a step's
  compute, or never when no compute follows); a wakeup fd sees every signal regardless, and
  `Signals.check()` after each run turns a signal Dagster swallowed into `Interrupted`.
- `launcher_tags()`: host, pid and process start time, recorded on every run the launcher starts, so
  a later launch can tell a run whose process is gone from one still working.
- `add_partitions`: dynamic partitions added only where missing, a concurrent add of the same key
  (a sensor, another host) tolerated.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import dagster as dg

from lora_pipeline.render.ops import process_start

LOCK_FILE = "lora_pipeline.launch.lock"
HOST_TAG, PID_TAG, PID_START_TAG = "lora_pipeline/host", "lora_pipeline/pid", "lora_pipeline/pid_start"
ASSETS_TAG = "lora_pipeline/assets"  # the assets a launcher run materializes, for messages
OBSERVED_BY_TAG = "lora_pipeline/observed_by"  # on the source observations a launch reports itself
LAUNCH_TAG = "lora_pipeline/launcher"  # on every run the launcher executes in its own process
Say = Callable[[str], None]


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: the launch stops at once; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signal.Signals(signum).name)


def launcher_tags() -> dict[str, str]:
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()),
            PID_START_TAG: process_start(os.getpid()) or ""}


def holder_text(rec: dict[str, Any]) -> str:
    since = time.strftime("%H:%M:%S", time.localtime(rec["since"])) if rec.get("since") else "?"
    return f"pid {rec.get('pid', '?')} on host {rec.get('host', '?')}, since {since}"


class LaunchLock:
    def __init__(self, home: Path, say: Say) -> None:
        self.path = Path(home) / LOCK_FILE
        self.say = say
        self.fd: int | None = None
        self.record: dict[str, Any] = {}
        self.previous: dict[str, Any] = {}  # what the last holder left (a dead holder's claim, if any)

    def _read(self) -> dict[str, Any]:
        try:
            data = os.pread(self.fd, 65536, 0) if self.fd is not None else self.path.read_bytes()
            rec = json.loads(data.decode() or "{}")
            return rec if isinstance(rec, dict) else {}
        except (OSError, ValueError):
            return {}

    def __enter__(self) -> LaunchLock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read()
                self.say(f"waiting: another launch holds the instance in {self.path.parent} "
                         f"({holder_text(holder)}); this one starts when it ends (Ctrl-C stops it)")
                fcntl.flock(self.fd, fcntl.LOCK_EX)  # blocks; a signal handler's exception ends it
        except BaseException:
            os.close(self.fd)
            self.fd = None
            raise
        self.previous = self._read()
        self.record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "claiming": None}
        self._write()
        return self

    def note(self, **fields: Any) -> None:
        self.record.update(fields)
        self._write()

    def _write(self) -> None:
        data = json.dumps(self.record).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def __exit__(self, *exc: object) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.record["claiming"] = None
            self._write()
        os.close(self.fd)  # releases the lock
        self.fd = None


class Signals:
    """SIGINT/SIGTERM -> `Interrupted` while active (main thread only; elsewhere a no-op)."""

    def __init__(self) -> None:
        self.active = threading.current_thread() is threading.main_thread()
        self._old: dict[int, Any] = {}
        self._old_fd = -1
        self._r: socket.socket | None = None
        self._w: socket.socket | None = None

    @staticmethod
    def _raise(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    def __enter__(self) -> Signals:
        if not self.active:
            return self
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._old_fd = signal.set_wakeup_fd(self._w.fileno(), warn_on_full_buffer=False)
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.getsignal(s)
            signal.signal(s, self._raise)
        return self

    def check(self) -> None:
        """Raise `Interrupted` if SIGINT or SIGTERM arrived since the last check (e.g. during a run)."""
        if not self.active or self._r is None:
            return
        got = b""
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while chunk := self._r.recv(512):
                got += chunk
        for signum in (signal.SIGTERM, signal.SIGINT):
            if bytes([signum]) in got:
                raise Interrupted(signum)

    def __exit__(self, *exc: object) -> None:
        if not self.active:
            return
        for s, handler in self._old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        signal.set_wakeup_fd(self._old_fd)
        for sock in (self._r, self._w):
            if sock is not None:
                sock.close()


def add_partitions(instance: dg.DagsterInstance, name: str, keys: Iterable[str]) -> list[str]:
    """Add the dynamic partitions of `name` that are missing; idempotent, and a concurrent add of the
    same keys (a sensor, another host) is no error. Returns the keys this call added."""
    keys = list(dict.fromkeys(keys))
    missing = [k for k in keys if not instance.has_dynamic_partition(name, k)]
    if not missing:
        return []
    try:
        instance.add_dynamic_partitions(name, missing)
        return missing
    except Exception:  # noqa: BLE001 - a unique-key race (IntegrityError of sqlite or Postgres): re-read
        have = set(instance.get_dynamic_partitions(name))
        rest = [k for k in missing if k not in have]
        for k in rest:  # one at a time: each either lands or was added meanwhile
            try:
                instance.add_dynamic_partitions(name, [k])
            except Exception:  # noqa: BLE001
                if not instance.has_dynamic_partition(name, k):
                    raise
        return rest


def open_instance(home: Path) -> dg.DagsterInstance:
    before = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        return dg.DagsterInstance.get()
    finally:
        if before is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = before
