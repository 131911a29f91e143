"""The operational contract: phase timings, heartbeat files, error classification, stale workers.

Heartbeats: one JSON file per in-flight render, `<renders_dir>/.inflight/<arm>__<prompt>-<seed>.json`
({pid, host, started, updated, phase, step, output}), rewritten atomically at each phase change and
at most every `HEARTBEAT_EVERY_S` during denoising, removed when the render ends (written or failed
with a finding). `scan_heartbeats` reports OPERATIONAL.WORKER_LOST for a heartbeat whose output does
not exist and whose process is gone: on the same host at once (pid and its start time checked, so a
reused pid does not count as alive); on another host when older than `stale_after_s` (staleness alone
decides there). The launcher (assets/run_health.py) uses `lost_heartbeats` to tell a run whose
worker died from one still rendering. A lost render redone since is history: `mark_recovered` makes
its finding info.

Errors: `torch.OutOfMemoryError` (== torch.cuda.OutOfMemoryError) and host allocation failures
(`MemoryError`, or a RuntimeError from the CPU allocator) -> OPERATIONAL.OOM with the phase; never
retried at lower settings. Anything else -> OPERATIONAL.RENDER_FAILED with the phase.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_pipeline.findings import Finding

HEARTBEAT_DIR = ".inflight"
HEARTBEAT_EVERY_S = 1.0
STALE_AFTER_S = 300.0
SLOW_WARMUP_RATIO = 3.0
_HOST_OOM = re.compile(r"DefaultCPUAllocator: can't allocate memory|not enough memory|Cannot allocate memory",
                       re.IGNORECASE)


def classify_error(exc: BaseException) -> str:
    """'oom' (device), 'host_oom' or 'failed'."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return "oom"
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and _HOST_OOM.search(str(exc))):
        return "host_oom"
    return "failed"


def error_finding(exc: BaseException, phase: str, subject: str, where: dict[str, Any]) -> Finding:
    kind = classify_error(exc)
    first = (str(exc).splitlines() or [""])[0][:300]
    ev = {**where, "phase": phase, "error": type(exc).__name__, "message": first}
    if kind != "failed":
        return Finding("OPERATIONAL.OOM", subject,
                       f"Out of {'device' if kind == 'oom' else 'host'} memory in the {phase} phase "
                       "(not retried at lower settings).", {**ev, "memory": "device" if kind == "oom" else "host"})
    return Finding("OPERATIONAL.RENDER_FAILED", subject, f"The render failed in the {phase} phase: "
                   f"{type(exc).__name__}: {first}", ev)


class PhaseClock:
    """Times named phases; `on_change(phase, seconds_of_previous)` fires as each phase ends."""

    def __init__(self, on_change: Callable[[str, str, float], None] | None = None) -> None:
        self.phase = "start"
        self.timings: dict[str, float] = {}
        self._t = time.perf_counter()
        self._on_change = on_change

    def enter(self, phase: str) -> None:
        if phase == self.phase:
            return
        now = time.perf_counter()
        spent = now - self._t
        self.timings[self.phase] = self.timings.get(self.phase, 0.0) + spent
        prev, self.phase, self._t = self.phase, phase, now
        if self._on_change:
            self._on_change(prev, phase, spent)

    def stop(self) -> dict[str, float]:
        self.enter("done")
        return {k: round(v, 6) for k, v in self.timings.items() if k not in ("start", "done")}


class Heartbeat:
    def __init__(self, renders_dir: Path, name: str, output: Path) -> None:
        self.path = Path(renders_dir) / HEARTBEAT_DIR / f"{name}.json"
        self.started = time.time()
        self.output = output
        self._last = 0.0

    def beat(self, phase: str, step: int | None = None, force: bool = True) -> None:
        now = time.time()
        if not force and now - self._last < HEARTBEAT_EVERY_S:
            return
        self._last = now
        # Replaced whole (temporary file + rename: never read half-written) but not fsynced: a heartbeat
        # only matters while this process lives, and three or four per render each paid a disk sync.
        data = json.dumps({"pid": os.getpid(), "pid_start": process_start(os.getpid()), "host": socket.gethostname(),
                           "started": self.started, "updated": now, "phase": phase, "step": step,
                           "output": str(self.output)})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(data)
        os.replace(tmp, self.path)

    def done(self) -> None:
        self.path.unlink(missing_ok=True)


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), to tell a reused pid apart;
    None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after the command name, which may hold spaces
    return fields[19] if len(fields) > 19 else None


def process_alive(pid: int, start: str | None = None) -> bool:
    """True while process `pid` on this host runs (and, with `start`, is still the same process)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if start:
        now = process_start(pid)
        return now is None or now == str(start)
    return True


def lost_heartbeats(renders_dir: Path, stale_after_s: float = STALE_AFTER_S, now: float | None = None,
                    since: float | None = None) -> list[dict[str, Any]]:
    """The heartbeats in `renders_dir` whose render is lost, each as its JSON plus `file` (the
    heartbeat's path) and `age_s`: no output written and, on this host, no live process (at once,
    whatever the age); on another host (the pid cannot be checked there) older than `stale_after_s`.
    With `since`, only heartbeats of renders started at or after it (one run's own)."""
    folder = Path(renders_dir) / HEARTBEAT_DIR
    if not folder.is_dir():
        return []
    now = time.time() if now is None else now
    here = socket.gethostname()
    out = []
    for hb in sorted(folder.glob("*.json")):
        try:
            d = json.loads(hb.read_text())
            updated, pid, host = float(d["updated"]), int(d["pid"]), str(d.get("host", ""))
        except FileNotFoundError:
            continue  # the render just ended
        except (OSError, ValueError, KeyError, TypeError):
            try:
                d, updated, pid, host = {}, hb.stat().st_mtime, -1, ""
            except OSError:
                continue
        if since is not None and float(d.get("started", updated)) < since:
            continue
        output = Path(d["output"]) if d.get("output") else None
        if output is not None and output.exists():
            continue
        if host == here and pid > 0:
            if process_alive(pid, d.get("pid_start")):
                continue
        elif now - updated < stale_after_s:
            continue
        out.append({**d, "pid": pid, "host": host, "file": str(hb), "age_s": round(now - updated, 1)})
    return out


def scan_heartbeats(renders_dir: Path, subject: str, stale_after_s: float = STALE_AFTER_S,
                    now: float | None = None, remove: bool = True) -> list[Finding]:
    """OPERATIONAL.WORKER_LOST for each lost render (`lost_heartbeats`); their heartbeats removed."""
    out = []
    for d in lost_heartbeats(renders_dir, stale_after_s, now):
        where = f"pid {d['pid']} on {d['host'] or 'an unknown host'}"
        out.append(Finding("OPERATIONAL.WORKER_LOST", subject,
                           f"A render's worker ({where}) is gone: its heartbeat stopped {d['age_s']:.0f}s ago in "
                           f"phase {d.get('phase', '?')}, with no output.",
                           {"heartbeat": Path(d["file"]).name, "pid": d["pid"], "host": d["host"],
                            "phase": d.get("phase"), "step": d.get("step"), "age_s": d["age_s"],
                            "output": str(d.get("output") or "")}))
        if remove:
            Path(d["file"]).unlink(missing_ok=True)
    return out


def mark_recovered(findings: list[Finding]) -> None:
    """A lost worker whose render was redone since is history, not a fault: its WORKER_LOST becomes info."""
    for f in findings:
        if f.code == "OPERATIONAL.WORKER_LOST" and Path(f.evidence.get("output", "")).is_file():
            f.severity, f.evidence["recovered"] = "info", True


def slow_warmup(first_s: float | None, steady: list[float], subject: str) -> list[Finding]:
    """OPERATIONAL.SLOW_WARMUP (info) when the first call took > SLOW_WARMUP_RATIO x the steady median."""
    if first_s is None or len(steady) < 2:
        return []
    med = sorted(steady)[len(steady) // 2]
    if med > 0 and first_s > SLOW_WARMUP_RATIO * med:
        return [Finding("OPERATIONAL.SLOW_WARMUP", subject,
                        f"The first render took {first_s:.2f}s, {first_s / med:.1f}x the steady state ({med:.2f}s).",
                        {"first_s": round(first_s, 4), "steady_median_s": round(med, 4),
                         "ratio": round(first_s / med, 2)})]
    return []
