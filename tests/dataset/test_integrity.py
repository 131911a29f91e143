"""Stored snapshot objects are checked against their content address (hash, not size) under
`checks.full_verify`: an object overwritten in place with same-size bytes is found, named, and
rewritten from the source when the source still holds those bytes."""

import os
import stat

from lora_pipeline.dataset.integrity import verify_object, verify_snapshot_objects
from lora_pipeline.dataset.snapshot import object_path, take_snapshot
from tests.dataset.helpers import plain_dataset


def _overwrite_same_size(path):
    data = path.read_bytes()
    os.chmod(path, 0o644)
    path.write_bytes(bytes(b ^ 0xFF for b in data[:16]) + data[16:])  # same size, other bytes
    os.chmod(path, 0o444)
    assert path.stat().st_size == len(data)


def _first_image(res):
    rel = sorted(k for k in res.info.files if k.endswith(".png"))[0]
    return rel, res.info.files[rel]


def test_same_size_overwrite_is_found_named_and_restored_by_full_verify(tmp_path):
    ds = plain_dataset(tmp_path / "ds", n=5)
    res = take_snapshot(tmp_path / "st", "chairs", ds)
    rel, sha = _first_image(res)
    obj = object_path(tmp_path / "st", sha)
    _overwrite_same_size(obj)

    quick = take_snapshot(tmp_path / "st", "chairs", ds)  # the everyday path: sizes only, no finding
    assert quick.findings == [] and quick.integrity is None
    assert verify_object(tmp_path / "st", sha).status == "changed"

    res = take_snapshot(tmp_path / "st", "chairs", ds, full_verify=True)
    assert [f.code for f in res.findings] == ["PROVENANCE.INCOMPLETE"]
    f = res.findings[0]
    assert str(obj) in f.message and f.subject == "dataset chairs"
    (item,) = f.evidence["objects"]
    assert item["object"] == str(obj) and item["sha256"] == sha and item["status"] == "changed"
    assert item["files"] == [f"{res.snapshot_id}:{rel}"] and item["repaired_from_source"] is True
    assert f.severity == "warn"  # every changed object was restored from the unchanged source
    assert obj.read_bytes() == (ds / rel).read_bytes()  # rewritten from the source bytes
    assert not obj.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert take_snapshot(tmp_path / "st", "chairs", ds, full_verify=True).findings == []


def test_changed_object_the_source_no_longer_holds_stays_an_error(tmp_path):
    ds = plain_dataset(tmp_path / "ds", n=5)
    res = take_snapshot(tmp_path / "st", "chairs", ds)
    rel, sha = _first_image(res)
    obj = object_path(tmp_path / "st", sha)
    _overwrite_same_size(obj)
    (ds / rel).unlink()
    (ds / rel.replace(".png", ".txt")).unlink()  # the source moved on: only the old snapshot names the object
    res2 = take_snapshot(tmp_path / "st", "chairs", ds, full_verify=True)
    (f,) = res2.findings
    assert f.code == "PROVENANCE.INCOMPLETE" and f.severity == "error"
    assert f.evidence["not_repaired"] == 1 and f.evidence["objects"][0]["object"] == str(obj)
    assert f.evidence["objects"][0]["files"] == [f"{res.snapshot_id}:{rel}"]


def test_planted_symlink_fifo_and_missing_objects_are_reported_not_followed(tmp_path):
    ds = plain_dataset(tmp_path / "ds", n=4)
    res = take_snapshot(tmp_path / "st", "chairs", ds)
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
    assert verify_object(tmp_path / "st", "../../etc/passwd").status == "unreadable"
