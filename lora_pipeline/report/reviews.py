"""Review decisions: `storage/reviews.jsonl`, one JSON object per line, append-only (CONTRACT section 3).

    {"schema_version": 1, "run_id", "checkpoint_id" (null = the whole run), "decision"
     (accept | reject | needs-work), "note", "by", "at" (ISO 8601 UTC)}

A line is written with one `write` on a file opened for appending, then flushed and fsynced; nothing
ever rewrites the file, and evaluation and reports only read it, so re-evaluating loses no review.
A checkpoint whose latest applicable decision (its own, or the run's when newer) is `reject` gets
REVIEW.REJECTED (info).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lora_pipeline.findings import Finding
from lora_pipeline.storage import Storage

DECISIONS = ("accept", "reject", "needs-work")


class ReviewError(ValueError):
    """A review that cannot be recorded (bad decision, empty note); one line."""


def append_review(storage_root: str | os.PathLike, run_id: str, checkpoint_id: str | None, decision: str,
                  note: str, by: str | None = None) -> dict[str, Any]:
    if decision not in DECISIONS:
        raise ReviewError(f"decision {decision!r}: must be one of {', '.join(DECISIONS)}")
    if not note or not note.strip():
        raise ReviewError("--note: must not be empty")
    entry = {"schema_version": 1, "run_id": run_id, "checkpoint_id": checkpoint_id, "decision": decision,
             "note": note.strip(), "by": by or _user(), "at": datetime.now(UTC).isoformat(timespec="seconds")}
    path = Storage(Path(storage_root)).reviews
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return entry


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in the environment
        return "unknown"


def read_reviews(storage_root: str | os.PathLike, run_id: str | None = None) -> list[dict[str, Any]]:
    """Every readable review (of `run_id` when given), in file order; a torn or foreign line is skipped."""
    path = Storage(Path(storage_root)).reviews
    if not path.is_file():
        return []
    out = []
    for line in path.read_text("utf-8", errors="replace").splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if isinstance(d, dict) and d.get("decision") in DECISIONS and (run_id is None or d.get("run_id") == run_id):
            out.append(d)
    return out


def reviews_for(reviews: list[dict[str, Any]], run_id: str, checkpoint_id: str) -> list[dict[str, Any]]:
    """The reviews that apply to one checkpoint: its own and the run-wide ones, in file order."""
    return [r for r in reviews if r.get("run_id") == run_id and r.get("checkpoint_id") in (None, checkpoint_id)]


def rejected_finding(applicable: list[dict[str, Any]], subject: str) -> Finding | None:
    if not applicable or applicable[-1]["decision"] != "reject":
        return None
    last = applicable[-1]
    scope = "this checkpoint" if last.get("checkpoint_id") else "the whole run"
    return Finding("REVIEW.REJECTED", subject, f"{last.get('by')} rejected {scope} on {last.get('at')}: "
                   f"{last.get('note')}", {k: last.get(k) for k in ("checkpoint_id", "decision", "note", "by", "at")})
