"""Review decisions: `storage/reviews.jsonl`, one JSON object per line, append-only (CONTRACT section 3).

    {"schema_version": 1, "run_id", "checkpoint_id" (null = the whole run), "decision"
     (accept | reject | needs-work), "note", "by", "at" (ISO 8601 UTC)}

A record is appended whole or not at all (`fsutil.append_line`: one `write` of the whole line on an
O_APPEND descriptor under a lock, the count checked, fsynced; a torn tail left by a crash is ended
with a newline first, so a new record is never glued to it; a failed write is taken back and raised
as ReviewNotRecorded, naming the file and the cause). Nothing else ever rewrites the file, and
evaluation and reports only read it, so re-evaluating loses no review. The reader splits on "\n"
only, skips and reports (never crashes on) a torn or foreign line, keeps every whole record around
it, and recovers a whole record that an older writer glued onto a torn one.
A checkpoint whose latest applicable decision (its own, or the run's when newer) is `reject` gets
REVIEW.REJECTED (info).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lora_pipeline.findings import Finding
from lora_pipeline.fsutil import append_line
from lora_pipeline.storage import Storage

log = logging.getLogger(__name__)

DECISIONS = ("accept", "reject", "needs-work")


class ReviewError(ValueError):
    """A review that cannot be recorded (bad decision, empty note); one line."""


class ReviewNotRecorded(Exception):
    """Writing the review failed (full disk, I/O error, ...): nothing of it was kept; one line naming
    the file and the cause."""


@dataclass
class ReviewLog:
    """What `reviews.jsonl` holds: the readable reviews in file order, and one line per problem
    (`line N: ...`) for each torn, corrupt or foreign line skipped."""

    path: Path
    reviews: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line, for a warning: how many lines were skipped and the first of them."""
        n = len(self.problems)
        return f"{self.path}: {n} unreadable line{'s' if n != 1 else ''} skipped ({self.problems[0]})" if n else ""


def append_review(storage_root: str | os.PathLike, run_id: str, checkpoint_id: str | None, decision: str,
                  note: str, by: str | None = None) -> dict[str, Any]:
    if decision not in DECISIONS:
        raise ReviewError(f"decision {decision!r}: must be one of {', '.join(DECISIONS)}")
    if not note or not note.strip():
        raise ReviewError("--note: must not be empty")
    entry = {"schema_version": 1, "run_id": run_id, "checkpoint_id": checkpoint_id, "decision": decision,
             "note": note.strip(), "by": by or _user(), "at": datetime.now(UTC).isoformat(timespec="seconds")}
    path = Storage(Path(storage_root)).reviews
    line = (json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        append_line(path, line)
    except OSError as e:
        raise ReviewNotRecorded(f"{path}: review not recorded ({e.strerror or e})") from None
    return entry


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in the environment
        return "unknown"


def read_reviews(storage_root: str | os.PathLike, run_id: str | None = None) -> list[dict[str, Any]]:
    """Every readable review (of `run_id` when given), in file order; skipped lines are logged."""
    review_log = read_review_log(storage_root)
    if review_log.problems:
        log.warning("%s", review_log.summary())
    return [r for r in review_log.reviews if run_id is None or r.get("run_id") == run_id]


def read_review_log(storage_root: str | os.PathLike) -> ReviewLog:
    """The whole log, with a `line N: why` problem for each line that is not a whole review."""
    path = Storage(Path(storage_root)).reviews
    out = ReviewLog(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return out
    except OSError as e:
        out.problems.append(f"unreadable ({e.strerror or e})")
        return out
    lines = data.split(b"\n")  # "\n" only: a note may hold U+2028 or NEL, which splitlines() would cut
    for no, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        review = _parse(raw)
        if review is not None:
            out.reviews.append(review)
            continue
        torn = "torn record (no newline)" if no == len(lines) else "torn or corrupt line"
        glued = _glued_review(raw)
        if glued is not None:
            out.reviews.append(glued)
            out.problems.append(f"line {no}: {torn}, the whole record after it recovered")
        else:
            out.problems.append(f"line {no}: {torn if _parse_json(raw) is None else 'not a review'}")
    return out


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both
        return None


def _parse(raw: bytes) -> dict[str, Any] | None:
    d = _parse_json(raw)
    return d if isinstance(d, dict) and d.get("decision") in DECISIONS else None


def _glued_review(raw: bytes, tries: int = 32) -> dict[str, Any] | None:
    """A whole review written after a torn one on the same line (by a writer older than append_line)."""
    start = 0
    for _ in range(tries):
        start = raw.find(b'{"', start + 1)
        if start < 0:
            return None
        if (d := _parse(raw[start:])) is not None:
            return d
    return None


def reviews_for(reviews: list[dict[str, Any]], run_id: str, checkpoint_id: str) -> list[dict[str, Any]]:
    """The reviews that apply to one checkpoint: its own and the run-wide ones, in file order."""
    return [r for r in reviews if r.get("run_id") == run_id and r.get("checkpoint_id") in (None, checkpoint_id)]


def standing(applicable: list[dict[str, Any]]) -> str | None:
    """The latest applicable decision in words ("rejected by ana", "accepted by bo", ...), shown beside
    every verdict: a reviewer's word does not change the verdict's rule, but nobody should read `ok`
    without it."""
    if not applicable:
        return None
    last = applicable[-1]
    word = {"reject": "rejected", "accept": "accepted", "needs-work": "needs work"}.get(last.get("decision"),
                                                                                       str(last.get("decision")))
    scope = "" if last.get("checkpoint_id") else " (whole run)"
    return f"{word} by {last.get('by') or 'a reviewer'}{scope}"


def rejected_finding(applicable: list[dict[str, Any]], subject: str) -> Finding | None:
    if not applicable or applicable[-1]["decision"] != "reject":
        return None
    last = applicable[-1]
    scope = "this checkpoint" if last.get("checkpoint_id") else "the whole run"
    return Finding("REVIEW.REJECTED", subject, f"{last.get('by')} rejected {scope} on {last.get('at')}: "
                   f"{last.get('note')}", {k: last.get(k) for k in ("checkpoint_id", "decision", "note", "by", "at")})
