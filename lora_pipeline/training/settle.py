"""The one-shot settle re-check (`lora-pipeline evaluate`), without Dagster.

The sensor decides "written completely" across ticks: size and mtime unchanged between two ticks, or
unchanged for `checks.checkpoint_settle_seconds`. A one-shot command has no next tick, so a run folder
copied a moment ago would be evaluated by nothing. Instead it looks at its young files twice: stat
every pending file, wait once (`checks.checkpoint_recheck_seconds`) for all of them together, stat
again. A file whose header is complete and whose size and mtime held counts as complete now; any
other is left out, with the reason (`Left`), for the caller to report.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lora_pipeline.training.checkpoints import header_complete

CHANGED = "changed"  # size or mtime moved during the re-check
HEADER = "header_incomplete"  # young, and the file does not end where its header says
TRUNCATED = "truncated"  # header incomplete and unchanged for the settle time: it will not complete


@dataclass
class Pending:
    """A checkpoint file not known complete after the first look, with what that look saw."""

    run_id: str
    path: Path
    rel: str  # relative to the run folder
    size: int
    mtime_ns: int


@dataclass
class Left:
    """A file left out of this evaluation and why (CHANGED, HEADER or TRUNCATED)."""

    run_id: str
    path: Path
    rel: str
    why: str
    detail: str

    def line(self) -> str:
        return f"{self.path}: {self.detail}"


def pending_of(run_id: str, path: Path, rel: str, st: os.stat_result) -> Pending:
    return Pending(run_id, path, rel, st.st_size, st.st_mtime_ns)


def recheck(pending: list[Pending], seconds: float, settle_seconds: float,
            sleep: Callable[[float], None] = time.sleep) -> tuple[list[Pending], list[Left]]:
    """(complete now, left out). One wait for all files, and only when one of them may still settle:
    an old file with an incomplete header is truncated, not being written, and needs no second look."""
    now = time.time()
    old = {id(p) for p in pending if now - p.mtime_ns / 1e9 >= settle_seconds}
    if len(old) < len(pending):
        sleep(seconds)
    done, left = [], []
    for p in pending:
        try:
            st = p.path.stat()
        except OSError:
            continue  # gone (renamed by the trainer): nothing to evaluate or to report
        moved = (st.st_size, st.st_mtime_ns) != (p.size, p.mtime_ns)
        if moved:
            left.append(Left(p.run_id, p.path, p.rel, CHANGED,
                             f"still being written (size/mtime changed during a {seconds:g} s re-check)"))
        elif not header_complete(p.path):
            truncated = id(p) in old
            left.append(Left(p.run_id, p.path, p.rel, TRUNCATED if truncated else HEADER,
                             f"truncated (header incomplete, unchanged for {settle_seconds:g} s or more)"
                             if truncated else
                             "still being written (header incomplete: the file is shorter than its header says)"))
        else:
            done.append(p)
    return done, left
