"""The operational contract: phase timings, heartbeat files, error classification, stale workers.

Heartbeats: one JSON file per in-flight render, `<renders_dir>/.inflight/<arm>__<prompt>-<seed>.json`
({pid, host, started, updated, phase, step, output}), rewritten atomically at each phase change and
at most every `HEARTBEAT_EVERY_S` during denoising, removed when the render ends (written or failed
with a finding). `scan_heartbeats` reports OPERATIONAL.WORKER_LOST for a heartbeat older than
`stale_after_s` whose output does not exist and whose process is not alive (checked on the same host;
on another host staleness alone decides).

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
from lora_pipeline.fsutil import atomic_write_json

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
        atomic_write_json(self.path, {"pid": os.getpid(), "host": socket.gethostname(), "started": self.started,
                                      "updated": now, "phase": phase, "step": step, "output": str(self.output)})

    def done(self) -> None:
        self.path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scan_heartbeats(renders_dir: Path, subject: str, stale_after_s: float = STALE_AFTER_S,
                    now: float | None = None, remove: bool = True) -> list[Finding]:
    """OPERATIONAL.WORKER_LOST for each stale heartbeat with no output and no live process."""
    folder = Path(renders_dir) / HEARTBEAT_DIR
    if not folder.is_dir():
        return []
    now = time.time() if now is None else now
    out = []
    for hb in sorted(folder.glob("*.json")):
        try:
            d = json.loads(hb.read_text())
            updated, pid, host = float(d["updated"]), int(d["pid"]), str(d.get("host", ""))
        except (OSError, ValueError, KeyError, TypeError):
            d, updated, pid, host = {}, hb.stat().st_mtime, -1, ""
        age = now - updated
        if age < stale_after_s:
            continue
        output = Path(d.get("output", "")) if d.get("output") else None
        if output is not None and output.exists():
            continue
        same_host = host == socket.gethostname()
        if same_host and pid > 0 and _pid_alive(pid):
            continue
        out.append(Finding("OPERATIONAL.WORKER_LOST", subject,
                           f"A render heartbeat went stale {age:.0f}s ago in phase {d.get('phase', '?')} "
                           "with no output and no live process.",
                           {"heartbeat": hb.name, "pid": pid, "host": host, "phase": d.get("phase"),
                            "step": d.get("step"), "age_s": round(age, 1), "output": str(output or "")}))
        if remove:
            hb.unlink(missing_ok=True)
    return out


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
