"""The last steps of `trace`: the run's dataset snapshot -> its source files and their stored copies.

The snapshot is named by the run record (storage), but its ids are still checked against the id
alphabet and the snapshots storage holds. A source file is read only when the snapshot's source folder
lies inside a configured dataset folder and the file inside that source folder (symlinks resolved);
a stored copy is re-hashed against its content address (lora_pipeline.dataset.integrity), and a
changed one is a PROVENANCE.INCOMPLETE finding naming the object.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_pipeline.dataset.integrity import Integrity, verify_object
from lora_pipeline.report.trace_files import LIMITS, FileProblem, Roots, read_json, resolve_in, valid_id
from lora_pipeline.storage import Storage

_OBJECT_STATUS = {"ok": "ok", "changed": "mismatch", "missing": "missing", "unreadable": "unverifiable"}


def trace_snapshot(storage: Storage, roots: Roots, record: Any, checks: Any,
                   runs: Callable[[str, str | None], str | None]) -> tuple[dict[str, Any], list[dict[str, Any]], list]:
    """(snapshot info, source files, findings as dicts)."""
    from lora_pipeline.dataset.snapshot import load_snapshot

    name, sid = record.dataset.name, record.dataset.snapshot_id
    info: dict[str, Any] = {"dataset": name, "snapshot_id": sid}
    if not (name and sid):
        return {**info, "missing": "the run is not linked to a dataset snapshot"}, [], []
    if not (valid_id(name) and valid_id(sid)):
        reason = f"the run record names dataset {name!r} snapshot {sid!r}: not valid ids"
        checks.add("dataset snapshot", "unverifiable", reason=reason)
        return {**info, "missing": reason}, [], []
    folder = storage.snapshot_dir(name, sid)
    snap = None
    try:
        try:
            known = sid in os.listdir(storage.snapshots_of(name))
        except OSError:
            known = False
        if known:
            read_json(folder / "snapshot.json", [roots.storage], "storage")  # a regular file within limits
            snap = load_snapshot(storage.root, name, sid)
        reason = "the snapshot is not in storage" if snap is None else ""
    except FileProblem as e:
        reason = e.reason
    except Exception as e:  # noqa: BLE001 - a damaged snapshot.json is reported, not raised
        reason = f"{folder / 'snapshot.json'}: unreadable ({type(e).__name__})"
    if snap is None:
        checks.add("dataset snapshot", "unverifiable", folder, reason=reason)
        return {**info, "missing": reason}, [], []
    checks.add("dataset snapshot", "ok", folder)
    info.update({"created_at": snap.created_at, "folder": str(snap.path), "manifest": str(snap.manifest_path),
                 "source_root": snap.source_root, "files": len(snap.files),
                 "dagster": {"asset": "dataset_snapshot", "partition": name,
                             "run_id": runs("dataset_snapshot", name)}})
    src_root, src_problem = _source_root(roots, snap.source_root)
    integrity = Integrity(name)
    files = []
    for rel, sha in sorted(snap.files.items()):
        path = os.path.join(str(src_root or snap.source_root), rel) if isinstance(rel, str) else None
        if src_problem:
            item = checks.add(f"source file {rel}", "unverifiable", path, sha, reason=src_problem)
        else:
            item = checks.file(f"source file {rel}", path, sha, [src_root], f"the snapshot's source folder {src_root}",
                               LIMITS["source"])
        obj = verify_object(storage.root, sha, LIMITS["source"], snapshot=snap)
        integrity.checked += 1
        if obj.status != "ok":
            integrity.problems.append(obj)
            integrity.files.setdefault(obj.sha256, []).append(f"{sid}:{rel}")
        stored = checks.add(f"stored copy of {rel}", _OBJECT_STATUS[obj.status], obj.path or None, sha, obj.now,
                            reason=obj.reason if obj.status != "ok" else "")
        files.append({"relative_path": rel, "path": item["path"], "sha256": sha, "status": item["status"],
                      "sha256_now": item["now"], "reason": item["reason"], "stored_copy": stored["path"],
                      "stored_copy_status": stored["status"], "stored_copy_sha256_now": obj.now})
    finding = integrity.finding()
    return info, files, [finding.to_dict()] if finding else []


def _source_root(roots: Roots, source_root: Any) -> tuple[Path | None, str]:
    """The snapshot's source folder, resolved, when it lies inside a configured dataset folder."""
    try:
        real = resolve_in(source_root, list(roots.datasets.values()), "the configured dataset folders")
    except FileProblem as e:
        return None, f"the snapshot's source folder: {e.reason}"
    if not real.is_dir():
        return None, f"the snapshot's source folder {real} is not a folder"
    return real, ""
