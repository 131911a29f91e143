"""Checkpoint delta norms, computed where something needs them, not at ingestion.

Ingestion reads every checkpoint once for its hash, header and a NaN/Inf/all-zero scan of the raw
bits (lora/inspect.py, the light pass); it no longer forms the r x r Gram products that give each
module's ||delta W||, which cost as much CPU as the hash itself (docs/benchmarks.md, "Training
ingestion"). A checkpoint's norm is computed once per file content:

- by its `lora_checkpoint` step (assets/training.py `analyse_partition`), which analyses the file in
  full (the hash is not recomputed: the file index has it for the file's size+mtime);
- otherwise by the first thing that needs it: the reports (`with_norms`, called when a checkpoint or
  run report loads the run record), or ingestion itself when two files claim the same step with the
  same size and different bytes (the same-weights alias check, training/ingest.py `_checkpoints`).

The norm is cached by file hash in `storage/runs/<run_id>/norms/<sha256>.json`, `{"sha256",
"total_delta_norm"}` (null when not finite), written atomically (concurrent steps write the same
content); a cache: a missing or unreadable one is recomputed.

`with_norms(config, record)` fills the run record's `CheckpointRecord.total_delta_norm` (in memory:
run.json, written by ingestion, keeps null), replaces the run's norm findings
(TRAINING.WEIGHTS_EXPLODING, the training half of TRAINING.OVERTRAINING_SUSPECTED: training/checks.py
`norm_findings`) with those of these norms, and writes `storage/runs/<run_id>/delta_norm.png` with the
points it shows in `delta_norms.json` beside it (what the report pages read: report/html_common.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lora_pipeline.config import Config
from lora_pipeline.fsutil import atomic_write_bytes, atomic_write_json
from lora_pipeline.lora.safetensors_file import LoraFileError
from lora_pipeline.storage import Storage
from lora_pipeline.training import curves
from lora_pipeline.training.checkpoints import FileIndex, analyse_checkpoint
from lora_pipeline.training.checks import is_norm_finding, norm_findings
from lora_pipeline.training.record import CheckpointRecord, RunRecord

CURVE_FILE = "delta_norm.png"
POINTS_FILE = "delta_norms.json"
# a bad file costs its norm, never the caller (ingest.py lets no such file through, but the file may
# have changed or vanished since)
_ERRORS = (LoraFileError, OSError, ValueError, TypeError, IndexError, KeyError, ArithmeticError, RecursionError)


def finite(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def run_dir(storage_root: str | Path, run_id: str) -> Path:
    return Storage(Path(storage_root)).run_record(run_id).parent


def _cache_path(storage_root: str | Path, run_id: str, sha256: str) -> Path:
    return run_dir(storage_root, run_id) / "norms" / f"{sha256}.json"


def cached_norm(storage_root: str | Path, run_id: str, sha256: str) -> tuple[bool, float | None]:
    """(known, norm) of the file with this hash, from the cache alone."""
    if not sha256:
        return False, None
    try:
        doc = json.loads(_cache_path(storage_root, run_id, sha256).read_text("utf-8"))
    except (OSError, ValueError):
        return False, None
    if not isinstance(doc, dict) or doc.get("sha256") != sha256 or "total_delta_norm" not in doc:
        return False, None
    return True, finite(doc["total_delta_norm"])


def store_norm(storage_root: str | Path, run_id: str, analysis: dict[str, Any]) -> None:
    """Cache the norm of a full analysis (one with delta norms) under its file's hash."""
    sha = analysis.get("sha256")
    if not analysis.get("norms", True) or not isinstance(sha, str) or len(sha) != 64:
        return
    atomic_write_json(_cache_path(storage_root, run_id, sha),
                      {"sha256": sha, "total_delta_norm": finite(analysis.get("total_delta_norm"))})


def checkpoint_norm(storage_root: str | Path, run_id: str, path: str | Path, sha256: str, *,
                    index: FileIndex | None = None, folder: str | Path | None = None,
                    full_verify: bool = False) -> float | None:
    """The total delta norm of the file at `path` whose hash was `sha256`: cached, else computed (and
    cached). With the run's file `index`, a file unchanged since ingestion is not hashed again. None
    when not finite, unreadable, or when the file no longer has that hash."""
    known, norm = cached_norm(storage_root, run_id, sha256)
    if known:
        return norm
    path = Path(path)
    try:
        rel = path.relative_to(folder).as_posix() if folder is not None else None
    except ValueError:
        rel = None
    try:
        if index is not None and rel is not None:
            a = index.analysis(rel, path, full_verify, norms=True)
        else:
            a = analyse_checkpoint(path, norms=True)
    except _ERRORS:
        return None
    store_norm(storage_root, run_id, a)
    return finite(a.get("total_delta_norm")) if a.get("sha256") == sha256 else None


def curve_points(checkpoints: list[CheckpointRecord]) -> list[tuple[float, float]]:
    """(step, or position when the step is unknown; norm) of the checkpoints with a norm."""
    return [(float(c.step if c.step is not None else i), c.total_delta_norm)
            for i, c in enumerate(checkpoints) if c.total_delta_norm is not None]


def with_norms(config: Config, record: RunRecord, *, compute: bool = True, write: bool = True) -> RunRecord:
    """`record` (changed in place and returned) with every checkpoint's delta norm and the norm
    findings; `compute=False` takes only cached norms (a checkpoint without one has none);
    `write`: delta_norm.png and delta_norms.json beside run.json (module docstring)."""
    from lora_pipeline.training.ingest import index_path

    index: FileIndex | None = None
    for ck in record.checkpoints:
        known, norm = cached_norm(config.storage, record.run_id, ck.sha256)
        if not known and compute:
            if index is None:
                index = FileIndex(index_path(config.storage, record.run_id))
            norm = checkpoint_norm(config.storage, record.run_id, ck.path, ck.sha256, index=index,
                                   folder=record.folder, full_verify=config.checks.full_verify)
        ck.total_delta_norm = norm
    record.findings = [f for f in record.findings if not is_norm_finding(f)] + norm_findings(record, config.checks)
    if write:
        write_curve(config.storage, record)
    return record


def write_curve(storage_root: str | Path, record: RunRecord) -> Path:
    """delta_norm.png of the record's norms, and the points it shows (delta_norms.json), atomically."""
    folder = run_dir(storage_root, record.run_id)
    atomic_write_json(folder / POINTS_FILE, {"schema_version": 1, "run_id": record.run_id, "checkpoints": [
        {"checkpoint_id": c.checkpoint_id, "step": c.step, "sha256": c.sha256, "total_delta_norm": c.total_delta_norm}
        for c in record.checkpoints]})
    return atomic_write_bytes(folder / CURVE_FILE, curves.delta_norm_curve(curve_points(record.checkpoints)))


def stored_points(storage_root: str | Path, run_id: str) -> list[tuple[float, float]]:
    """The points of the run's last written delta_norm.png ([] when none was written)."""
    try:
        doc = json.loads((run_dir(storage_root, run_id) / POINTS_FILE).read_text("utf-8"))
        cks = doc["checkpoints"]
        return [(float(c["step"] if c.get("step") is not None else i), float(c["total_delta_norm"]))
                for i, c in enumerate(cks) if finite(c.get("total_delta_norm")) is not None]
    except (OSError, ValueError, KeyError, TypeError):
        return []
