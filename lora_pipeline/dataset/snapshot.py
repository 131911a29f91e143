"""Dataset snapshots in `storage` (CONTRACT section 3) and source drift.

    objects/packs/<snapshot_id>-<16 hex>.pack     every image, caption and metadata file a snapshot
                                                  stored first, packed (lora_pipeline.dataset.pack),
                                                  read-only, shared across snapshots and datasets
    objects/<sha[:2]>/<sha>                       loose objects (snapshots taken before packs; objects
                                                  restored by full_verify)
    snapshots/<dataset>/<snapshot_id>/manifest.parquet   one row per image (lora_pipeline.dataset.schema)
    snapshots/<dataset>/<snapshot_id>/objects.parquet    where each object of the snapshot lies: sha256,
                                                  pack, offset, length (absent: every object loose)
    snapshots/<dataset>/<snapshot_id>/snapshot.json      source root, fingerprint, file list with
                                                  size/mtime/sha256, orphan captions, refused symlinks
    snapshots/<dataset>/latest.json               the latest snapshot of the dataset + the stat cache
                                                  of the last scan (the only file rewritten in place)

Written by lora_pipeline.dataset.snapshot_write (`take_snapshot`); this module reads what is stored
and compares a source folder with it.

Public API for other layers (training ingestion, trace):

- `take_snapshot(storage_root, dataset, source_root, full_verify=False) -> SnapshotResult`
  (lora_pipeline.dataset.snapshot_write); with `full_verify` every stored object of the dataset's
  snapshots is re-hashed against its name first (lora_pipeline.dataset.integrity), a changed one is
  rewritten from the source when it still holds those bytes, and `.findings` names each changed
  object (PROVENANCE.INCOMPLETE).
- `list_snapshots(storage_root, dataset) -> list[SnapshotInfo]`, oldest first; each has
  `snapshot_id`, `created_at` (ISO UTC), `path`, `source_root`, `files` (relative path -> sha256
  of every image, caption and metadata file) and `objects()` (where each is stored, an ObjectIndex).
- `latest_snapshot(storage_root, dataset) -> SnapshotInfo | None`
- `find_snapshot_matching(storage_root, dataset, files, exact=False) -> SnapshotInfo | None`: the
  newest snapshot (of `dataset`, or of any dataset when None) holding every given relative path with
  the given sha256 (`exact=True`: the same set of image files, no more). With `match_by="sha"` only
  the sha256 values are compared (for a trainer that copied or renamed the files).
- `source_drift(storage_root, dataset, source_root) -> Drift`: added / removed / modified files of
  the folder against the latest snapshot, as a `DATASET.SOURCE_CHANGED` finding via `.finding()`.
- `source_fingerprint(storage_root, dataset, source_root) -> str`: the content id the folder would
  get now (hashes only files whose size or mtime changed since the last scan).
- `current_scan(storage_root, dataset, source_root) -> Scan`: the folder's files now (size, mtime,
  sha256), with the same stat cache.
- `object_location(storage_root, sha256, snapshot=None) -> StoredObject | None`: where a stored file
  lies (`file`, `offset`, `length`, `display`), as `snapshot` (a SnapshotInfo) names it, else anywhere.
- `read_object(storage_root, sha256, snapshot=None) -> bytes` (lora_pipeline.dataset.integrity): a
  stored file's bytes, checked against its sha256; `verify_object` re-hashes it.
- `object_path(storage_root, sha256) -> Path`: the loose file of an object (snapshots taken before
  packs); a packed object has no file of its own: use `object_location`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from lora_pipeline.dataset.layout import DatasetError  # noqa: F401 - raised by current_scan (scan_dataset)
from lora_pipeline.dataset.pack import ObjectIndex, StoredObject, object_location  # noqa: F401
from lora_pipeline.dataset.scan import Scan, StatCache, cache_from, gc_paused, scan_dataset
from lora_pipeline.dataset.statcache import read_stat_cache
from lora_pipeline.findings import Finding
from lora_pipeline.storage import Storage

MAX_EXAMPLES = 20


@dataclass
class SnapshotInfo:
    dataset: str
    snapshot_id: str
    created_at: str
    path: Path  # the snapshot folder
    source_root: str
    files: dict[str, str]  # relative path -> sha256
    orphan_captions: list[str] = field(default_factory=list)
    refused_symlinks: list[str] = field(default_factory=list)
    metadata_decode_errors: list[str] = field(default_factory=list)
    _objects: ObjectIndex | None = field(default=None, repr=False, compare=False)
    _frame: pl.DataFrame | None = field(default=None, repr=False, compare=False)  # the manifest, when in memory

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.parquet"

    def objects(self) -> ObjectIndex:
        """Where each stored file of this snapshot lies (read once)."""
        if self._objects is None:
            self._objects = ObjectIndex.of_snapshot(self.path)
        return self._objects

    def manifest(self) -> pl.DataFrame:
        if self._frame is not None:  # the snapshot was just written from this frame
            return self._frame.clone()
        return pl.read_parquet(self.manifest_path)


@dataclass
class Drift:
    dataset: str
    snapshot_id: str | None
    fingerprint: str  # content id of the folder now
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.modified)

    def finding(self) -> Finding | None:
        if not self.changed:
            return None
        n = len(self.added) + len(self.removed) + len(self.modified)
        return Finding(
            "DATASET.SOURCE_CHANGED", f"dataset {self.dataset}",
            f"The source folder changed after snapshot {self.snapshot_id}: {len(self.added)} added, "
            f"{len(self.removed)} removed, {len(self.modified)} modified.",
            {"count": n, "snapshot_id": self.snapshot_id, "fingerprint": self.fingerprint,
             "added": self.added[:MAX_EXAMPLES], "removed": self.removed[:MAX_EXAMPLES],
             "modified": self.modified[:MAX_EXAMPLES], "added_count": len(self.added),
             "removed_count": len(self.removed), "modified_count": len(self.modified)})


def object_path(storage_root: str | os.PathLike, sha256: str) -> Path:
    """The loose file of an object (snapshots taken before packs, objects restored by full_verify)."""
    return Storage(Path(storage_root)).object(sha256)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def snapshot_info(dataset: str, folder: Path, data: dict) -> SnapshotInfo:
    """The SnapshotInfo of a snapshot.json document (`data`) in `folder`."""
    return SnapshotInfo(
        dataset=dataset, snapshot_id=data["snapshot_id"], created_at=data.get("created_at", ""),
        path=folder, source_root=data.get("source_root", ""),
        files={k: v[2] for k, v in data.get("files", {}).items()},
        orphan_captions=list(data.get("orphan_captions", [])),
        refused_symlinks=list(data.get("refused_symlinks", [])),
        metadata_decode_errors=list(data.get("metadata_decode_errors", [])))


def load_snapshot(storage_root: str | os.PathLike, dataset: str, snapshot_id: str) -> SnapshotInfo | None:
    folder = Storage(Path(storage_root)).snapshot_dir(dataset, snapshot_id)
    data = _read_json(folder / "snapshot.json")
    if not data or data.get("snapshot_id") != snapshot_id or not (folder / "manifest.parquet").is_file():
        return None
    return snapshot_info(dataset, folder, data)


def list_snapshots(storage_root: str | os.PathLike, dataset: str) -> list[SnapshotInfo]:
    """Every complete snapshot of `dataset`, oldest first."""
    base = Storage(Path(storage_root)).snapshots_of(dataset)
    if not base.is_dir():
        return []
    out = []
    for d in base.iterdir():
        if d.is_dir() and not d.name.startswith("."):
            info = load_snapshot(storage_root, dataset, d.name)
            if info is not None:
                out.append(info)
    return sorted(out, key=lambda i: (i.created_at, i.snapshot_id))


def latest_snapshot(storage_root: str | os.PathLike, dataset: str) -> SnapshotInfo | None:
    data = _read_json(Storage(Path(storage_root)).snapshots_of(dataset) / "latest.json")
    if data and isinstance(data.get("snapshot_id"), str):
        info = load_snapshot(storage_root, dataset, data["snapshot_id"])
        if info is not None:
            return info
    snaps = list_snapshots(storage_root, dataset)
    return snaps[-1] if snaps else None


def find_snapshot_matching(storage_root: str | os.PathLike, dataset: str | None, files: dict[str, str],
                           exact: bool = False, match_by: str = "path") -> SnapshotInfo | None:
    """The newest snapshot holding every given file (see the module docstring)."""
    base = Storage(Path(storage_root)).root / "snapshots"
    names = [dataset] if dataset else sorted(p.name for p in base.iterdir() if p.is_dir()) \
        if base.is_dir() else []
    candidates = [s for n in names for s in list_snapshots(storage_root, n)]
    for snap in sorted(candidates, key=lambda i: i.created_at, reverse=True):
        if match_by == "sha":
            have = set(snap.files.values())
            if set(files.values()) <= have and (not exact or _image_shas(snap) == set(files.values())):
                return snap
        elif all(snap.files.get(k) == v for k, v in files.items()) and (
                not exact or _image_paths(snap) == set(files)):
            return snap
    return None


def _image_paths(snap: SnapshotInfo) -> set[str]:
    from lora_pipeline.dataset.layout import IMAGE_EXTENSIONS

    return {k for k in snap.files if os.path.splitext(k)[1].lower() in IMAGE_EXTENSIONS}


def _image_shas(snap: SnapshotInfo) -> set[str]:
    return {snap.files[k] for k in _image_paths(snap)}


def last_scan_cache(storage: Storage, dataset: str, with_manifest: bool) -> tuple[StatCache, str | None]:
    """The stat cache of the last scan of `dataset` (empty when there is none or it is unreadable)."""
    data = _read_json(storage.snapshots_of(dataset) / "latest.json")
    if not data:
        return StatCache(), None
    try:
        files = read_stat_cache(data)
        sid = data.get("snapshot_id")
        mpath = storage.snapshot_dir(dataset, sid) / "manifest.parquet" if isinstance(sid, str) else None

        def manifest() -> pl.DataFrame | None:
            try:
                return pl.read_parquet(mpath) if with_manifest and mpath and mpath.is_file() else None
            except (OSError, pl.exceptions.PolarsError):
                return None

        return cache_from(files, int(data.get("scanned_at_ns", 0)), manifest), sid
    except (ValueError, TypeError, IndexError):
        return StatCache(), None


def _current(storage: Storage, dataset: str, source_root: str | os.PathLike,
             full_verify: bool) -> Scan:
    with gc_paused():
        cache, _ = last_scan_cache(storage, dataset, with_manifest=False)
        return scan_dataset(source_root, cache=cache, full_verify=full_verify, probe_images=False)


def current_scan(storage_root: str | os.PathLike, dataset: str, source_root: str | os.PathLike,
                 full_verify: bool = False) -> Scan:
    """The folder as it is now (files with size, mtime, sha256), hashing only the files whose size
    or mtime changed since the last scan of this dataset."""
    return _current(Storage(Path(storage_root)), dataset, source_root, full_verify)


def source_fingerprint(storage_root: str | os.PathLike, dataset: str, source_root: str | os.PathLike,
                       full_verify: bool = False) -> str:
    """The content id the folder has now (equal to the snapshot id it would get)."""
    return _current(Storage(Path(storage_root)), dataset, source_root, full_verify).content_id


def source_drift(storage_root: str | os.PathLike, dataset: str, source_root: str | os.PathLike,
                 full_verify: bool = False) -> Drift:
    """What changed in the folder since the latest snapshot (everything is 'added' without one)."""
    storage = Storage(Path(storage_root))
    now = _current(storage, dataset, source_root, full_verify)
    snap = latest_snapshot(storage.root, dataset)
    current = {k: v.sha256 for k, v in now.files.items()}
    before = snap.files if snap else {}
    return Drift(
        dataset=dataset, snapshot_id=snap.snapshot_id if snap else None, fingerprint=now.content_id,
        added=sorted(set(current) - set(before)), removed=sorted(set(before) - set(current)),
        modified=sorted(k for k in set(current) & set(before) if current[k] != before[k]))
