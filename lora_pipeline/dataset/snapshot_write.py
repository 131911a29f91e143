"""Taking a dataset snapshot: scan the source folder, store its new files in a pack, and write the
snapshot folder once for each new content. The layout in `storage`, and the readers of what is stored,
are in lora_pipeline.dataset.snapshot.

A snapshot folder is written under a temporary name and renamed whole, then never changed: the
same content gives the same `snapshot_id` (lora_pipeline.dataset.scan.content_id) and writes nothing.
With `full_verify` every stored object of the dataset's snapshots is re-hashed against its name first
(lora_pipeline.dataset.integrity), a changed one is rewritten from the source when it still holds those
bytes, and `SnapshotResult.findings` names each changed object (PROVENANCE.INCOMPLETE).

Kept apart from the readers: only `take_snapshot` writes snapshot folders, packs and latest.json, and
only it knows how snapshot.json is written (`_json`, which `_load_unchanged` relies on).
"""

from __future__ import annotations

import json
import operator
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from lora_pipeline.dataset.images import DEFAULT_MAX_PIXELS
from lora_pipeline.dataset.integrity import Integrity, VerifyingObjectStore, verify_snapshot_objects
from lora_pipeline.dataset.layout import DatasetError, DatasetListing
from lora_pipeline.dataset.pack import INDEX_FILE, ObjectIndex, ObjectStore
from lora_pipeline.dataset.scan import Scan, gc_paused, scan_dataset
from lora_pipeline.dataset.snapshot import SnapshotInfo, last_scan_cache, load_snapshot, snapshot_info
from lora_pipeline.dataset.statcache import STAT_CACHE_KEY, stat_cache_doc
from lora_pipeline.findings import Finding
from lora_pipeline.fsutil import atomic_write_text
from lora_pipeline.storage import Storage

SCHEMA_VERSION = 1
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_SHA256 = operator.itemgetter(2)  # FileStat.sha256


@dataclass
class SnapshotResult:
    info: SnapshotInfo
    created: bool  # False: a snapshot with this content already existed
    scan: Scan
    previous_id: str | None  # the latest snapshot before this one
    # full_verify only: stored objects of this dataset's snapshots that no longer hash to their name
    # (lora_pipeline.dataset.integrity); `findings` holds the one finding naming them
    integrity: Integrity | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def snapshot_id(self) -> str:
        return self.info.snapshot_id


def _check_name(dataset: str) -> None:
    if not _SAFE_NAME.match(dataset) or dataset in (".", ".."):
        raise DatasetError(f"dataset name {dataset!r}: use letters, digits, '.', '_' or '-'")


def _load_unchanged(storage: Storage, dataset: str, sid: str, scan: Scan) -> SnapshotInfo | None:
    """`load_snapshot` of the snapshot whose content id the scan has, without decoding its file list
    again: the same id is the same (relative path, sha256) list, the scan's. snapshot.json is written
    one key per line, the file list last (`_write_snapshot`); any other shape is read in full."""
    folder = storage.snapshot_dir(dataset, sid)
    try:
        text = (folder / "snapshot.json").read_text("utf-8")
    except (OSError, ValueError):
        return None
    head, sep, tail = text.rpartition('\n "files": ')
    data = None
    if sep and head.endswith(",") and tail.endswith("\n}\n") and tail.find("\n", 0, len(tail) - 3) < 0:
        try:
            data = json.loads(head[:-1] + "\n}")  # the keys before the file list
        except ValueError:
            data = None
    if not isinstance(data, dict) or data.get("snapshot_id") != sid or "files" in data:
        return load_snapshot(storage.root, dataset, sid)
    if not (folder / "manifest.parquet").is_file():
        return None
    info = snapshot_info(dataset, folder, data)
    info.files = dict(zip(scan.files, map(_SHA256, scan.files.values()), strict=True))
    return info


def take_snapshot(storage_root: str | os.PathLike, dataset: str, source_root: str | os.PathLike, *,
                  full_verify: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                  workers: int | None = None) -> SnapshotResult:
    """Snapshot the folder: store new files, write the manifest if this content is new."""
    with gc_paused():
        return _take_snapshot(storage_root, dataset, source_root, full_verify=full_verify,
                              max_pixels=max_pixels, workers=workers)


def _take_snapshot(storage_root: str | os.PathLike, dataset: str, source_root: str | os.PathLike, *,
                   full_verify: bool, max_pixels: int, workers: int | None) -> SnapshotResult:
    _check_name(dataset)
    storage = Storage(Path(storage_root))
    cache, previous_id = last_scan_cache(storage, dataset, with_manifest=True)
    integrity, store = _store(storage, dataset, full_verify, previous_id)
    known: list[str] = []  # the id known_id saw: when the scan stops there, its files did not change since
    try:
        # a re-snapshot of unchanged content needs no manifest: only stats and stored hashes
        scan = scan_dataset(source_root, cache=cache, full_verify=full_verify, store=store,
                            max_pixels=max_pixels, workers=workers, known_id=lambda sid: known.append(sid)
                            or (storage.snapshot_dir(dataset, sid) / "snapshot.json").is_file())
        sid = known[-1] if scan.frame is None and known else scan.content_id
        folder = storage.snapshot_dir(dataset, sid)
        created = False
        info = _load_unchanged(storage, dataset, sid, scan) if scan.frame is None \
            else load_snapshot(storage.root, dataset, sid)
        if info is None:
            if scan.frame is None:  # a snapshot folder is there but unreadable: build the manifest in full
                scan = scan_dataset(source_root, cache=cache, full_verify=full_verify,
                                    store=store, max_pixels=max_pixels, workers=workers)
            doc = _write_snapshot(folder, dataset, sid, scan, store)
            created = True
            if doc is not None:  # what was just written, without reading it back
                info = snapshot_info(dataset, folder, doc)
                info._frame = scan.frame
            else:  # a concurrent writer of the same id renamed its folder first
                info = load_snapshot(storage.root, dataset, sid)
        else:  # this content is snapshotted: what had to be stored again (it was missing) goes loose
            store.spill()
    finally:
        store.discard()
    if info is None:
        raise DatasetError(f"{folder}: snapshot folder exists but is unreadable; move it aside and retry")
    if scan.frame is None:  # unchanged content: the manifest and listing are the stored ones
        scan.frame = info.manifest()
        scan.listing = DatasetListing(root=scan.root, orphan_captions=info.orphan_captions,
                                      refused_symlinks=info.refused_symlinks,
                                      metadata_decode_errors=info.metadata_decode_errors, files=sorted(scan.files))
    if previous_id != sid or cache.files != scan.files:
        atomic_write_text(storage.snapshots_of(dataset) / "latest.json", _json({
            "schema_version": SCHEMA_VERSION, "dataset": dataset, "snapshot_id": sid,
            "source_root": str(scan.root), "scanned_at_ns": scan.scanned_at_ns,
            STAT_CACHE_KEY: stat_cache_doc(scan.files)}))
    result = SnapshotResult(info, created, scan, previous_id)
    if integrity is not None:
        integrity.note_repairs(storage.root, store.rewritten)
        finding = integrity.finding()
        result.integrity, result.findings = integrity, [finding] if finding else []
    return result


def _store(storage: Storage, dataset: str, full_verify: bool,
           previous_id: str | None) -> tuple[Integrity | None, ObjectStore]:
    """The object store of a snapshot (most objects are found in the previous snapshot's index); with
    `full_verify`, every object of the dataset's snapshots is re-hashed first and a changed one counts
    as absent (rewritten from the source when it holds it)."""
    def prefer() -> ObjectIndex:
        if not (isinstance(previous_id, str) and _SAFE_NAME.match(previous_id)):
            return ObjectIndex()
        return ObjectIndex.of_snapshot(storage.snapshot_dir(dataset, previous_id))

    if not full_verify:
        return None, ObjectStore(storage.root, prefer)
    integrity = verify_snapshot_objects(storage.root, dataset)
    bad = {p.sha256 for p in integrity.problems}
    return integrity, VerifyingObjectStore(storage.root, prefer, verified=integrity.good, bad=bad)


def _write_snapshot(folder: Path, dataset: str, sid: str, scan: Scan, store: ObjectStore) -> dict | None:
    """The pack first (fsynced, renamed), then the snapshot folder naming it, written whole and renamed.
    Returns the snapshot.json document, or None when a concurrent writer's folder took the name."""
    assert scan.frame is not None
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{sid}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    written = False
    try:
        store.commit(sid)
        store.index_frame((st.sha256, st.size) for st in scan.files.values()).write_parquet(tmp / INDEX_FILE)
        scan.frame.write_parquet(tmp / "manifest.parquet")
        doc = {
            "schema_version": SCHEMA_VERSION, "dataset": dataset, "snapshot_id": sid,
            "fingerprint": sid, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "source_root": str(scan.root), "scanned_at_ns": scan.scanned_at_ns,
            "counts": {"images": scan.frame.height, "files": len(scan.files),
                       "orphan_captions": len(scan.listing.orphan_captions),
                       "refused_symlinks": len(scan.listing.refused_symlinks)},
            "orphan_captions": scan.listing.orphan_captions,
            "refused_symlinks": scan.listing.refused_symlinks,
            "metadata_decode_errors": scan.listing.metadata_decode_errors,
            "files": {k: v.to_list() for k, v in sorted(scan.files.items())},
        }
        (tmp / "snapshot.json").write_text(_json(doc), "utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            os.chmod(f, 0o444)
        try:
            os.rename(tmp, folder)
            written = True
        except OSError:
            if not (folder / "snapshot.json").is_file():  # not a concurrent writer of the same id
                raise
        return doc if written else None
    finally:
        if not written:  # no snapshot names this pack
            store.remove_committed()
        if tmp.exists():
            for f in tmp.iterdir():
                os.chmod(f, 0o644)
            shutil.rmtree(tmp, ignore_errors=True)


def _json(doc: dict) -> str:
    """One key per line, each value on one line (the C encoder: `indent` would use the slow Python one)."""
    items = [f" {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in doc.items()]
    return "{\n" + ",\n".join(items) + "\n}\n"
