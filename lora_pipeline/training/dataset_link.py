"""Linking a run to the dataset it trained on (issue 4, item 3).

1. The run declares a snapshot id: it is looked up in storage (any dataset); unknown ->
   DATASET.NOT_SNAPSHOTTED.
2. Otherwise the run's dataset path (or kohya's `ss_dataset_dirs` folder names) is matched to a
   configured dataset; the folder's files unchanged since training started are compared with the
   snapshots (lora_pipeline.dataset.snapshot): none matches -> DATASET.NOT_SNAPSHOTTED; files
   modified after training started -> DATASET.SOURCE_CHANGED.

The dataset layer is used through its public API only (`list_snapshots`, `load_snapshot`,
`find_snapshot_matching`, `current_scan`), so this module is the one place to change if it moves.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from lora_pipeline.config import Config
from lora_pipeline.findings import Finding
from lora_pipeline.training.record import RunRecord

MAX_LISTED = 20


def _snapshot_api():
    from lora_pipeline.dataset import snapshot

    return snapshot


def _match_configured(record: RunRecord, config: Config, dirs: list[str]) -> tuple[str | None, str | None]:
    """The configured dataset the run's dataset path (or ss_dataset_dirs names) points at, and the
    path relative to that dataset's folder (None when matched by folder names)."""
    declared = record.dataset.path
    if declared:
        p = Path(declared).expanduser()
        p = p if p.is_absolute() else Path(record.folder) / p
        p = Path(os.path.realpath(p))
        for name, ds in sorted(config.datasets.items()):
            root = Path(os.path.realpath(ds.path))
            if p == root or p.is_relative_to(root):
                return name, p.relative_to(root).as_posix()
    for name, ds in sorted(config.datasets.items()):
        root = Path(ds.path)
        try:
            sub = {d.name for d in root.iterdir() if d.is_dir()} if root.is_dir() else set()
        except OSError:
            sub = set()
        if any(d == root.name or d in sub for d in dirs):
            return name, None
    return None, None


def _image_set(files: dict) -> set[str]:
    from lora_pipeline.dataset.layout import IMAGE_EXTENSIONS

    return {k for k in files if os.path.splitext(k)[1].lower() in IMAGE_EXTENSIONS}


def _images(files: dict) -> int:
    return len(_image_set(files))


def _iso_ns(iso: str | None) -> int | None:
    if not iso:
        return None
    try:
        return int(datetime.fromisoformat(iso).timestamp() * 1e9)
    except ValueError:
        return None


def link_dataset(record: RunRecord, config: Config, dirs: list[str]) -> dict[str, Any]:
    """Fill record.dataset (name, snapshot_id) and add dataset findings. Returns what was found."""
    snap_api = _snapshot_api()
    storage = Path(config.storage)
    subject = f"run {record.run_id}"
    sid = record.dataset.snapshot_id
    if sid:
        names = set(config.datasets)
        base = storage / "snapshots"
        if base.is_dir():
            names |= {p.name for p in base.iterdir() if p.is_dir()}
        for name in sorted(names):
            info = snap_api.load_snapshot(storage, name, sid)
            if info is not None:
                record.dataset.name = name
                return {"snapshot_id": sid, "dataset": name, "by": "declared snapshot id",
                        "images": _images(info.files)}
        record.findings.append(Finding(
            "DATASET.NOT_SNAPSHOTTED", subject,
            f"The run declares dataset snapshot {sid}, which is not in storage.",
            {"snapshot_id": sid, "dataset_path": record.dataset.path, "searched": sorted(names)}))
        return {"snapshot_id": sid, "by": "declared snapshot id", "found": False}
    name, rel = _match_configured(record, config, dirs)
    if name is None:
        if record.dataset.path or dirs:
            record.findings.append(Finding(
                "DATASET.NOT_SNAPSHOTTED", subject,
                "The run's dataset is not a configured dataset, so no snapshot can match it.",
                {"dataset_path": record.dataset.path, "dataset_dirs": dirs,
                 "configured": {k: str(v.path) for k, v in config.datasets.items()}}))
        return {"by": "path", "found": False}
    record.dataset.name, record.dataset.rel = name, rel
    root = config.datasets[name].path
    try:
        # Reuses the hashes of files whose size and mtime are unchanged since the last scan.
        scan = snap_api.current_scan(storage, name, root, config.checks.full_verify)
    except snap_api.DatasetError as e:
        record.findings.append(Finding("DATASET.NOT_SNAPSHOTTED", subject,
                                       f"Dataset {name} cannot be read to match a snapshot: {e}",
                                       {"dataset": name, "error": str(e)}))
        return {"dataset": name, "found": False}
    started_ns = _iso_ns(record.started_at)
    changed = sorted(k for k, st in scan.files.items() if started_ns is not None and st.mtime_ns > started_ns)
    unchanged = {k: st.sha256 for k, st in scan.files.items() if k not in changed}
    snap = snap_api.find_snapshot_matching(storage, name, unchanged)
    if snap is not None and not changed and _image_set(snap.files) != _image_set(scan.files):
        snap = None  # the snapshot holds every file, but the folder has images it lacks (or vice versa)
    images = _images(scan.files)
    if changed:
        record.findings.append(Finding(
            "DATASET.SOURCE_CHANGED", subject,
            f"{len(changed)} file(s) of dataset {name} were modified after training started "
            f"({record.started_at}); the run trained on content that is no longer in the folder.",
            {"dataset": name, "started_at": record.started_at, "changed": changed[:MAX_LISTED],
             "changed_count": len(changed), "matched_snapshot": snap.snapshot_id if snap else None}))
    if snap is None:
        record.findings.append(Finding(
            "DATASET.NOT_SNAPSHOTTED", subject,
            f"No snapshot of dataset {name} matches the folder's content as of training start.",
            {"dataset": name, "dataset_path": str(root), "files_compared": len(unchanged),
             "snapshots": [s.snapshot_id for s in snap_api.list_snapshots(storage, name)],
             "started_at": record.started_at}))
        return {"dataset": name, "by": "path", "found": False, "images": images}
    record.dataset.snapshot_id = snap.snapshot_id
    return {"dataset": name, "snapshot_id": snap.snapshot_id, "by": "path and content", "images": images}
