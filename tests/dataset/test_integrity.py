"""Stored snapshot objects are checked against their content address (hash, not size) under
`checks.full_verify`, packed or loose (a workspace written before packs): an object overwritten in
place with same-size bytes is found, named, and rewritten from the source when the source still holds
those bytes."""

import os
import stat

import polars as pl
import pytest

from lora_pipeline.dataset.integrity import ObjectError, read_object, verify_object, verify_snapshot_objects
from lora_pipeline.dataset.snapshot import latest_snapshot, object_location, object_path
from lora_pipeline.dataset.snapshot_write import take_snapshot
from tests.dataset.helpers import overwrite_stored, plain_dataset, to_legacy_layout


def _first_image(res):
    rel = sorted(k for k in res.info.files if k.endswith(".png"))[0]
    return rel, res.info.files[rel]


def _snapshot(tmp_path, layout, n=5):
    ds = plain_dataset(tmp_path / "ds", n=n)
    res = take_snapshot(tmp_path / "st", "chairs", ds)
    if layout == "loose":
        to_legacy_layout(tmp_path / "st")
    return ds, res, latest_snapshot(tmp_path / "st", "chairs")


@pytest.mark.parametrize("layout", ["packed", "loose"])
def test_same_size_overwrite_is_found_named_and_restored_by_full_verify(tmp_path, layout):
    st = tmp_path / "st"
    ds, res, info = _snapshot(tmp_path, layout)
    rel, sha = _first_image(res)
    loc = overwrite_stored(st, sha, info)
    assert (loc.file.suffix == ".pack") == (layout == "packed")

    quick = take_snapshot(st, "chairs", ds)  # the everyday path: sizes only, no finding
    assert quick.findings == [] and quick.integrity is None and not quick.created
    assert verify_object(st, sha, snapshot=info).status == "changed"
    with pytest.raises(ObjectError, match="no longer hash to its name"):
        read_object(st, sha, info)

    res = take_snapshot(st, "chairs", ds, full_verify=True)
    assert [f.code for f in res.findings] == ["PROVENANCE.INCOMPLETE"]
    f = res.findings[0]
    assert loc.display in f.message and f.subject == "dataset chairs"
    (item,) = f.evidence["objects"]
    assert item["object"] == loc.display and item["sha256"] == sha and item["status"] == "changed"
    assert item["files"] == [f"{res.snapshot_id}:{rel}"] and item["repaired_from_source"] is True
    assert f.severity == "warn"  # every changed object was restored from the unchanged source
    restored = object_path(st, sha)  # rewritten from the source bytes, as a read-only loose object
    assert restored.read_bytes() == (ds / rel).read_bytes()
    assert not restored.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert read_object(st, sha, info) == (ds / rel).read_bytes()  # the snapshot reads the intact copy
    assert verify_object(st, sha, snapshot=info).status == "ok"
    assert take_snapshot(st, "chairs", ds, full_verify=True).findings == []


@pytest.mark.parametrize("layout", ["packed", "loose"])
def test_changed_object_the_source_no_longer_holds_stays_an_error(tmp_path, layout):
    st = tmp_path / "st"
    ds, res, info = _snapshot(tmp_path, layout)
    rel, sha = _first_image(res)
    loc = overwrite_stored(st, sha, info)
    (ds / rel).unlink()
    (ds / rel.replace(".png", ".txt")).unlink()  # the source moved on: only the old snapshot names the object
    res2 = take_snapshot(st, "chairs", ds, full_verify=True)
    (f,) = res2.findings
    assert f.code == "PROVENANCE.INCOMPLETE" and f.severity == "error"
    assert f.evidence["not_repaired"] == 1 and f.evidence["objects"][0]["object"] == loc.display
    assert f.evidence["objects"][0]["files"] == [f"{res.snapshot_id}:{rel}"]
    assert f.evidence["checked"] == len(set(res.info.files.values()))


def test_planted_symlink_fifo_and_missing_loose_objects_are_reported_not_followed(tmp_path):
    _, res, _ = _snapshot(tmp_path, "loose", n=4)
    shas = sorted(set(res.info.files.values()))
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    link, fifo, gone = (object_path(tmp_path / "st", s) for s in shas[:3])
    for p in (link, fifo, gone):
        p.unlink()
    link.symlink_to(outside)
    os.mkfifo(fifo)  # opening it for reading would block: it must never be opened
    states = {s.sha256: s for s in verify_snapshot_objects(tmp_path / "st", "chairs").problems}
    assert states[shas[0]].status == "unreadable" and "symlink" in states[shas[0]].reason
    assert states[shas[1]].status == "unreadable" and "regular" in states[shas[1]].reason
    assert states[shas[2]].status == "missing"
    assert len(states) == 3
    assert verify_object(tmp_path / "st", "../../etc/passwd").status == "unreadable"


@pytest.mark.parametrize("kind", ["symlink", "fifo", "missing", "truncated"])
def test_a_planted_or_lost_pack_is_reported_not_followed(tmp_path, kind):
    _, res, info = _snapshot(tmp_path, "packed", n=3)
    (pack,) = (tmp_path / "st/objects/packs").iterdir()
    data = pack.read_bytes()
    pack.unlink()
    if kind == "symlink":
        (tmp_path / "outside.pack").write_bytes(data)  # the same bytes, outside the store: still refused
        pack.symlink_to(tmp_path / "outside.pack")
    elif kind == "fifo":
        os.mkfifo(pack)
    elif kind == "truncated":
        pack.write_bytes(data[:len(data) // 2])
    problems = verify_snapshot_objects(tmp_path / "st", "chairs").problems
    want = {"symlink": ("unreadable", "symlink"), "fifo": ("unreadable", "regular"),
            "missing": ("missing", "pack is not in the store"), "truncated": ("missing", "the pack ends at byte")}[kind]
    if kind == "truncated":  # the objects in the first half are intact
        assert 0 < len(problems) < len(set(res.info.files.values()))
    else:
        assert len(problems) == len(set(res.info.files.values()))
    assert all(p.status == want[0] and want[1] in p.reason for p in problems), problems[0]
    with pytest.raises(ObjectError):
        read_object(tmp_path / "st", problems[0].sha256, info)


@pytest.mark.parametrize("tamper", ["escape", "garbage", "past-the-end"])
def test_a_tampered_object_index_is_unreadable_and_never_leaves_the_store(tmp_path, tamper):
    ds, res, info = _snapshot(tmp_path, "packed", n=3)
    index = info.path / "objects.parquet"
    df = pl.read_parquet(index)
    os.chmod(index, 0o644)
    if tamper == "escape":
        df.with_columns(pl.lit("../../../../outside.pack").alias("pack")).write_parquet(index)
    elif tamper == "garbage":
        index.write_bytes(b"not parquet")
    else:
        df.with_columns(pl.col("offset") + 10_000_000).write_parquet(index)
    _, sha = _first_image(res)
    state = verify_object(tmp_path / "st", sha, snapshot=latest_snapshot(tmp_path / "st", "chairs"))
    if tamper == "past-the-end":
        assert state.status == "missing" and "the pack ends at byte" in state.reason
    else:
        assert state.status == "unreadable" and "malformed object index" in state.reason
    # A new snapshot does not trust that index: it stores what it cannot find again, intact.
    (ds / "img_000.txt").write_text("a photo of sks_chair, edited")
    new = take_snapshot(tmp_path / "st", "chairs", ds)
    assert new.created
    for rel, s in new.info.files.items():
        assert read_object(tmp_path / "st", s, new.info) == (ds / rel).read_bytes()
        assert ".." not in str(object_location(tmp_path / "st", s, new.info).file)
