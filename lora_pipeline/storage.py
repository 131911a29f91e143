"""The layout of `storage` (CONTRACT section 3), in one place. Everything that reads or writes under
the storage root asks this module for the path.

    objects/packs/<snapshot_id>-<hex>.pack          content-addressed store: packed objects (read-only;
                                                    indexed by snapshots/<dataset>/<id>/objects.parquet)
    objects/<sha[:2]>/<sha>                         loose objects (older workspaces, restored files)
    snapshots/<dataset>/<snapshot_id>/manifest.parquet (+ snapshot.json)
    runs/<run_id>/run.json                          the ingested, normalised run record
    checkpoints/<run_id>/<checkpoint_id>/analysis.json
    renders/<run_id>/<checkpoint_id>/<arm>/<prompt_index>-<seed>.png (+ .json sidecar)
    reports/<run_id>/<checkpoint_id>/report.json|html, reports/<run_id>/report.json|html
    reviews.jsonl                                   append-only review decisions
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
# A checkpoint partition key is Dagster's string form of the two-dimensional key (checkpoint, run):
# `<checkpoint_id>|<run_id>` (dimensions in name order). `|` is outside both id alphabets, so it splits
# unambiguously. Keys of the earlier one-dimensional layout (`<run_id>~<checkpoint_id>`) still split.
PARTITION_SEP = "|"
LEGACY_PARTITION_SEP = "~"


def run_id_for(folder_name: str) -> str:
    """CONTRACT section 3: the run folder's name with characters outside [A-Za-z0-9._-] -> `_`."""
    return _UNSAFE.sub("_", folder_name)


def checkpoint_id_for(step: int | None, epoch: int | None, stem: str) -> str:
    """CONTRACT section 3: `step-<8 digits>`, else `epoch-<6 digits>`, else the file's stem."""
    if step is not None:
        return f"step-{step:08d}"
    if epoch is not None:
        return f"epoch-{epoch:06d}"
    return _UNSAFE.sub("_", stem)


def checkpoint_partition_key(run_id: str, checkpoint_id: str) -> str:
    return f"{checkpoint_id}{PARTITION_SEP}{run_id}"


def split_checkpoint_partition_key(key: str) -> tuple[str, str]:
    """(run_id, checkpoint_id) of a checkpoint partition key (either layout)."""
    checkpoint_id, sep, run_id = str(key).partition(PARTITION_SEP)
    if not sep:
        run_id, sep, checkpoint_id = str(key).partition(LEGACY_PARTITION_SEP)
    if not sep or not run_id or not checkpoint_id:
        raise ValueError(f"not a checkpoint partition key: {key!r}")
    return run_id, checkpoint_id


@dataclass(frozen=True)
class Storage:
    root: Path

    def object(self, sha256: str) -> Path:
        return self.root / "objects" / sha256[:2] / sha256

    def snapshot_dir(self, dataset: str, snapshot_id: str) -> Path:
        return self.root / "snapshots" / dataset / snapshot_id

    def snapshots_of(self, dataset: str) -> Path:
        return self.root / "snapshots" / dataset

    def run_record(self, run_id: str) -> Path:
        return self.root / "runs" / run_id / "run.json"

    def checkpoint_analysis(self, run_id: str, checkpoint_id: str) -> Path:
        return self.root / "checkpoints" / run_id / checkpoint_id / "analysis.json"

    def renders_dir(self, run_id: str, checkpoint_id: str) -> Path:
        return self.root / "renders" / run_id / checkpoint_id

    def checkpoint_report_dir(self, run_id: str, checkpoint_id: str) -> Path:
        return self.root / "reports" / run_id / checkpoint_id

    def run_report_dir(self, run_id: str) -> Path:
        return self.root / "reports" / run_id

    @property
    def reviews(self) -> Path:
        return self.root / "reviews.jsonl"
