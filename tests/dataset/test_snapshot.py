"""Snapshots: content-addressed, immutable, idempotent; drift between the folder and the snapshot."""

import os
import shutil
import stat
import time

import polars as pl
import pytest

from lora_pipeline.dataset.integrity import read_object
from lora_pipeline.dataset.schema import validate_manifest
from lora_pipeline.dataset.snapshot import (
    find_snapshot_matching,
    latest_snapshot,
    list_snapshots,
    object_location,
    source_drift,
    source_fingerprint,
)
from lora_pipeline.dataset.snapshot_write import take_snapshot
from tests.dataset.helpers import pair, plain_dataset

CONTRACT_COLUMNS = {"path", "sha256", "width", "height", "caption", "caption_sha256", "phash"}


def _age(root, seconds=60):
    """Set every file's mtime in the past, as for a dataset written before the snapshot."""
    past = time.time() - seconds
    for p in root.rglob("*"):
        os.utime(p, (past, past))


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_snapshot_writes_manifest_and_read_only_objects(tmp_path):
    ds = plain_dataset(tmp_path / "ds", n=5)
    res = take_snapshot(tmp_path / "st", "chairs", ds)
    assert res.created and res.previous_id is None
    folder = tmp_path / "st/snapshots/chairs" / res.snapshot_id
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.parquet", "objects.parquet", "snapshot.json"]
    m = pl.read_parquet(folder / "manifest.parquet")
    assert set(m.columns) >= CONTRACT_COLUMNS and m.height == 5
    validate_manifest(m)
    row = m.row(0, named=True)
    assert (row["width"], row["height"], row["caption"]) == (32, 32, "a photo of sks_chair, object number 0 on a table")
    (pack,) = (tmp_path / "st/objects/packs").iterdir()  # every image and caption in one pack file
    assert pack.name.startswith(res.snapshot_id + "-") and pack.suffix == ".pack"
    assert not pack.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    for rel, sha in res.info.files.items():
        assert read_object(tmp_path / "st", sha, res.info) == (ds / rel).read_bytes()
        assert object_location(tmp_path / "st", sha, res.info).file == pack
    assert sorted(p.name for p in (tmp_path / "st/objects").iterdir()) == ["packs"]  # no loose object
    assert not list((tmp_path / "st").rglob("*.tmp"))


def test_manifest_model_rejects_a_bad_frame(tmp_path):
    import pandera.errors

    ds = plain_dataset(tmp_path / "ds", n=2)
    m = take_snapshot(tmp_path / "st", "chairs", ds).info.manifest()
    with pytest.raises(pandera.errors.SchemaError):
        validate_manifest(m.with_columns(pl.lit("nothex").alias("sha256")))
    with pytest.raises(pandera.errors.SchemaError):
        validate_manifest(pl.concat([m, m]))  # duplicate paths


def test_same_content_same_id_and_nothing_new_copied(tmp_path):
    ds = plain_dataset(tmp_path / "ds", n=5)
    first = take_snapshot(tmp_path / "st", "chairs", ds)
    objects_before = _tree(tmp_path / "st/objects")
    again = take_snapshot(tmp_path / "st", "chairs", ds)
    assert again.snapshot_id == first.snapshot_id and not again.created and again.scan.stored == 0
    # The same content elsewhere, with other mtimes, under another dataset name: same id, no new object.
    copy = tmp_path / "elsewhere"
    shutil.copytree(ds, copy)
    _age(copy, 3600)
    other = take_snapshot(tmp_path / "st", "chairs-copy", copy)
    assert other.snapshot_id == first.snapshot_id and other.scan.stored == 0
    assert _tree(tmp_path / "st/objects") == objects_before
    assert [s.snapshot_id for s in list_snapshots(tmp_path / "st", "chairs")] == [first.snapshot_id]


def test_resnapshot_reuses_hashes_when_size_and_mtime_are_unchanged(tmp_path):
    ds = plain_dataset(tmp_path / "ds", n=4)
    _age(ds)
    first = take_snapshot(tmp_path / "st", "chairs", ds)
    assert first.scan.hashed == 8 and first.scan.reused == 0
    again = take_snapshot(tmp_path / "st", "chairs", ds)
    assert again.scan.hashed == 0 and again.scan.reused == 8
    # Same size, same mtime, other bytes: trusted without full verification, caught with it.
    cap = ds / "img_001.txt"
    st = cap.stat()
    cap.write_text(cap.read_text().replace("number", "NUMBER"))
    os.utime(cap, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert take_snapshot(tmp_path / "st", "chairs", ds).snapshot_id == first.snapshot_id
    verified = take_snapshot(tmp_path / "st", "chairs", ds, full_verify=True)
    assert verified.snapshot_id != first.snapshot_id and verified.scan.hashed == 8


def test_source_change_lists_exactly_the_changed_files(tmp_path):
    ds = plain_dataset(tmp_path / "ds", n=6)
    _age(ds)
    snap = take_snapshot(tmp_path / "st", "chairs", ds)
    clean = source_drift(tmp_path / "st", "chairs", ds)
    assert not clean.changed and clean.finding() is None and clean.fingerprint == snap.snapshot_id
    (ds / "img_001.txt").write_text("a photo of sks_chair, edited")
    (ds / "img_002.png").unlink()
    (ds / "img_002.txt").unlink()
    pair(ds, "new", "a photo of sks_chair, new", seed=77)
    drift = source_drift(tmp_path / "st", "chairs", ds)
    assert drift.added == ["new.png", "new.txt"]
    assert drift.removed == ["img_002.png", "img_002.txt"]
    assert drift.modified == ["img_001.txt"]
    f = drift.finding()
    assert f.code == "DATASET.SOURCE_CHANGED" and f.evidence["count"] == 5
    assert source_fingerprint(tmp_path / "st", "chairs", ds) == drift.fingerprint != snap.snapshot_id
    resnap = take_snapshot(tmp_path / "st", "chairs", ds)
    assert resnap.snapshot_id == drift.fingerprint and resnap.previous_id == snap.snapshot_id
    assert not source_drift(tmp_path / "st", "chairs", ds).changed


def test_editing_the_source_never_changes_an_existing_snapshot(tmp_path):
    ds = plain_dataset(tmp_path / "ds", n=4)
    snap = take_snapshot(tmp_path / "st", "chairs", ds).info
    before = _tree(tmp_path / "st")
    stored = {sha: read_object(tmp_path / "st", sha, snap) for sha in snap.files.values()}
    with open(ds / "img_000.png", "r+b") as f:  # in place, same inode
        f.seek(10)
        f.write(b"\0\0\0\0")
    (ds / "img_001.txt").write_text("rewritten")
    (ds / "img_002.png").unlink()
    take_snapshot(tmp_path / "st", "chairs", ds)
    after = _tree(tmp_path / "st")
    for rel, data in before.items():
        if not rel.endswith("latest.json"):
            assert after[rel] == data, rel
    for sha, data in stored.items():
        assert read_object(tmp_path / "st", sha, snap) == data
    assert len(list_snapshots(tmp_path / "st", "chairs")) == 2
    assert len(list((tmp_path / "st/objects/packs").iterdir())) == 2  # the second holds only the new bytes


def test_public_api_for_training_ingestion(tmp_path):
    ds = plain_dataset(tmp_path / "ds", n=3)
    s1 = take_snapshot(tmp_path / "st", "chairs", ds).info
    (ds / "img_000.txt").write_text("changed")
    s2 = take_snapshot(tmp_path / "st", "chairs", ds).info
    snaps = list_snapshots(tmp_path / "st", "chairs")
    assert {s.snapshot_id for s in snaps} == {s1.snapshot_id, s2.snapshot_id}
    assert all(s.created_at and s.files for s in snaps)
    assert latest_snapshot(tmp_path / "st", "chairs").snapshot_id == s2.snapshot_id
    want = {"img_000.png": s1.files["img_000.png"], "img_000.txt": s1.files["img_000.txt"]}
    assert find_snapshot_matching(tmp_path / "st", "chairs", want).snapshot_id == s1.snapshot_id
    assert find_snapshot_matching(tmp_path / "st", None, want).snapshot_id == s1.snapshot_id
    images = {k: v for k, v in s2.files.items() if k.endswith(".png")}
    assert find_snapshot_matching(tmp_path / "st", "chairs", images, exact=True) is not None
    by_sha = {"renamed.png": s1.files["img_000.txt"]}
    assert find_snapshot_matching(tmp_path / "st", "chairs", by_sha, match_by="sha").snapshot_id == s1.snapshot_id
    assert find_snapshot_matching(tmp_path / "st", "chairs", {"img_000.png": "0" * 64}) is None


def test_bad_dataset_name_is_refused(tmp_path):
    from lora_pipeline.dataset.layout import DatasetError

    ds = plain_dataset(tmp_path / "ds", n=1)
    with pytest.raises(DatasetError, match="dataset name"):
        take_snapshot(tmp_path / "st", "../escape", ds)
