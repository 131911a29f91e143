"""The packed object store (issue 16): one pack file per snapshot holding the files it stored first,
an object index per snapshot, every object read back checked against its sha256; workspaces written
before packs (one loose file per object) stay readable."""

import hashlib
import os
import shutil
import stat
import struct

import polars as pl
import pytest

from lora_pipeline.dataset.integrity import read_object, verify_object, verify_snapshot_objects
from lora_pipeline.dataset.pack import HEADER, MAGIC
from lora_pipeline.dataset.snapshot import (
    latest_snapshot,
    list_snapshots,
    object_location,
    object_path,
    source_drift,
    source_fingerprint,
)
from lora_pipeline.dataset.snapshot_write import take_snapshot
from tests.dataset.helpers import pair, plain_dataset, to_legacy_layout


def _packs(st):
    d = st / "objects" / "packs"
    return sorted(d.iterdir()) if d.is_dir() else []


def _entries(pack):
    """(sha256, offset, length) of every object in a pack, read from the pack alone."""
    data = pack.read_bytes()
    assert data[:len(MAGIC)] == MAGIC
    out, pos = [], len(MAGIC)
    while pos < len(data):
        raw, length = HEADER.unpack_from(data, pos)
        body = data[pos + HEADER.size:pos + HEADER.size + length]
        assert hashlib.sha256(body).digest() == raw  # every object is its content address
        out.append((raw.hex(), pos + HEADER.size, length))
        pos += HEADER.size + length
    assert pos == len(data)
    return out


def test_one_pack_describes_itself_and_matches_the_index(tmp_path):
    ds = plain_dataset(tmp_path / "ds", n=6)
    shutil.copy(ds / "img_000.png", ds / "copy.png")  # same bytes twice: stored once
    (ds / "copy.txt").write_text("a copy of sks_chair")
    res = take_snapshot(tmp_path / "st", "chairs", ds)
    (pack,) = _packs(tmp_path / "st")
    assert not pack.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    index = pl.read_parquet(res.info.path / "objects.parquet")
    assert index.columns == ["sha256", "pack", "offset", "length"]
    assert index["sha256"].to_list() == sorted(set(res.info.files.values()))  # one row per object
    assert set(index["pack"]) == {pack.name}
    assert sorted(_entries(pack)) == sorted(index.select("sha256", "offset", "length").iter_rows())
    assert len(_entries(pack)) == len(res.info.files) - 1 == res.scan.stored


def test_a_resnapshot_packs_only_the_new_files_and_references_the_rest(tmp_path):
    st = tmp_path / "st"
    ds = plain_dataset(tmp_path / "ds", n=5)
    first = take_snapshot(st, "chairs", ds)
    (pack1,) = _packs(st)
    before = pack1.read_bytes()
    pair(ds, "new", "a photo of sks_chair, new", seed=77)
    second = take_snapshot(st, "chairs", ds)
    assert second.created and second.scan.stored == 2
    pack2 = next(p for p in _packs(st) if p != pack1)
    assert pack2.name.startswith(second.snapshot_id)
    new = {second.info.files["new.png"], second.info.files["new.txt"]}
    assert {e[0] for e in _entries(pack2)} == new
    index = pl.read_parquet(second.info.path / "objects.parquet")
    assert dict(index.select("sha256", "pack").iter_rows()) == {
        sha: (pack2.name if sha in new else pack1.name) for sha in second.info.files.values()}
    assert pack1.read_bytes() == before  # an earlier pack is never written again
    for snap in (first.info, second.info):
        for rel, sha in snap.files.items():
            assert read_object(st, sha, snap) == (ds / rel).read_bytes()


def test_threads_pack_every_object_once_and_intact(tmp_path):
    ds = plain_dataset(tmp_path / "ds", n=60)  # 120 files: the threaded path
    for i in range(5):
        shutil.copy(ds / f"img_00{i}.png", ds / f"dup_{i}.png")
    res = take_snapshot(tmp_path / "st", "chairs", ds, workers=4)
    (pack,) = _packs(tmp_path / "st")
    entries = _entries(pack)
    assert len(entries) == len({e[0] for e in entries}) == len(set(res.info.files.values()))
    for rel, sha in res.info.files.items():
        assert read_object(tmp_path / "st", sha, res.info) == (ds / rel).read_bytes()
    assert verify_snapshot_objects(tmp_path / "st", "chairs").problems == []


def test_a_snapshot_that_fails_to_be_written_leaves_no_pack(tmp_path):
    st = tmp_path / "st"
    ds = plain_dataset(tmp_path / "ds", n=3)
    sid = source_fingerprint(st, "chairs", ds)
    blocker = st / "snapshots" / "chairs" / sid
    blocker.mkdir(parents=True)
    (blocker / "not-a-snapshot").write_text("x")  # the rename of the finished snapshot folder fails
    with pytest.raises(OSError):
        take_snapshot(st, "chairs", ds)
    assert _packs(st) == [] and not list(st.rglob("*.tmp"))
    shutil.rmtree(blocker)
    res = take_snapshot(st, "chairs", ds)
    assert res.created and len(_packs(st)) == 1


def test_a_lost_pack_is_stored_again_loose_when_the_content_is_known(tmp_path):
    st = tmp_path / "st"
    ds = plain_dataset(tmp_path / "ds", n=3)
    res = take_snapshot(st, "chairs", ds)
    (pack,) = _packs(st)
    pack.unlink()
    again = take_snapshot(st, "chairs", ds)  # same content: the snapshot exists, its bytes do not
    assert not again.created and again.scan.stored == len(set(res.info.files.values()))
    assert _packs(st) == []  # no pack that no snapshot names
    for rel, sha in res.info.files.items():
        assert object_path(st, sha).read_bytes() == (ds / rel).read_bytes()
        assert read_object(st, sha, res.info) == (ds / rel).read_bytes()
    assert verify_snapshot_objects(st, "chairs").problems == []
    assert take_snapshot(st, "chairs", ds).scan.stored == 0


def test_a_workspace_written_before_packs_stays_readable_and_grows_packed(tmp_path):
    st = tmp_path / "st"
    ds = plain_dataset(tmp_path / "ds", n=4)
    old = take_snapshot(st, "chairs", ds)
    to_legacy_layout(st)
    assert not (old.info.path / "objects.parquet").exists() and _packs(st) == []
    legacy = latest_snapshot(st, "chairs")
    assert legacy.snapshot_id == old.snapshot_id and legacy.objects().legacy
    for rel, sha in legacy.files.items():
        assert read_object(st, sha, legacy) == (ds / rel).read_bytes()
        assert object_location(st, sha, legacy).file == object_path(st, sha)
        assert verify_object(st, sha).status == "ok"
    again = take_snapshot(st, "chairs", ds)
    assert not again.created and again.scan.stored == 0 and _packs(st) == []
    (ds / "img_001.txt").write_text("a photo of sks_chair, edited")
    assert source_drift(st, "chairs", ds).modified == ["img_001.txt"]
    new = take_snapshot(st, "chairs", ds)
    assert new.created and new.scan.stored == 1
    (pack,) = _packs(st)
    index = dict(pl.read_parquet(new.info.path / "objects.parquet").select("sha256", "pack").iter_rows())
    edited = new.info.files["img_001.txt"]
    assert index == {sha: (pack.name if sha == edited else None) for sha in new.info.files.values()}
    for snap in list_snapshots(st, "chairs"):
        for sha in snap.files.values():
            assert verify_object(st, sha, snapshot=snap).status == "ok"
    assert verify_snapshot_objects(st, "chairs").problems == []


def test_the_same_content_under_another_dataset_name_stores_nothing(tmp_path):
    st = tmp_path / "st"
    ds = plain_dataset(tmp_path / "ds", n=3)
    first = take_snapshot(st, "chairs", ds)
    other = take_snapshot(st, "chairs-copy", ds)
    assert other.snapshot_id == first.snapshot_id and other.created and other.scan.stored == 0
    assert len(_packs(st)) == 1
    locs = pl.read_parquet(other.info.path / "objects.parquet")
    assert locs.equals(pl.read_parquet(first.info.path / "objects.parquet"))


def test_a_large_object_is_read_in_chunks_and_refused_over_the_limit(tmp_path):
    ds = plain_dataset(tmp_path / "ds", n=1)
    (ds / "metadata.jsonl").write_bytes(b"".join(
        b'{"file_name": "img_000.png", "text": "%d"}\n' % i for i in range(120_000)))  # ~4 MiB
    res = take_snapshot(tmp_path / "st", "chairs", ds)
    sha = res.info.files["metadata.jsonl"]
    assert read_object(tmp_path / "st", sha, res.info) == (ds / "metadata.jsonl").read_bytes()
    state = verify_object(tmp_path / "st", sha, 1 << 20, snapshot=res.info)
    assert state.status == "unreadable" and "limit" in state.reason
    assert struct.calcsize("<32sQ") == HEADER.size == 40
    assert os.path.getsize(_packs(tmp_path / "st")[0]) > 4_000_000


def test_a_packed_storage_inside_another_dataset_is_left_out(tmp_path):
    outer = plain_dataset(tmp_path / "outer", n=2)
    inner_store = outer / "store"  # another workspace's storage, kept inside this dataset folder
    take_snapshot(inner_store, "inner", plain_dataset(tmp_path / "inner", n=3))
    assert _packs(inner_store)
    res = take_snapshot(tmp_path / "st", "outer", outer)
    assert not any(k.startswith("store/") for k in res.info.files)
    assert any(e.startswith("store") for e in res.scan.excluded)


@pytest.mark.parametrize(("size", "threads"), [(32, False), (128, True)])
def test_default_threads_follow_the_image_size_and_never_change_the_snapshot(tmp_path, monkeypatch, size, threads):
    """By default the first 256 files decide whether decoding threads pay off (scan.threads_pay_off);
    whichever way, the snapshot is the one a single thread and four threads take."""
    from concurrent import futures

    from lora_pipeline.dataset import scan

    ds = plain_dataset(tmp_path / "ds", n=200, size=size)  # 400 files: 256 decide, 144 left for threads
    pools = []
    real = futures.ThreadPoolExecutor

    class Counted(real):  # a spy: the real pool still runs
        def __init__(self, *a, **k):
            pools.append(a)
            super().__init__(*a, **k)

    monkeypatch.setattr(futures, "ThreadPoolExecutor", Counted)
    default = take_snapshot(tmp_path / "st-default", "chairs", ds)
    if scan.default_workers() > 1:  # a one-core machine never starts threads
        assert bool(pools) == threads
    one = take_snapshot(tmp_path / "st-one", "chairs", ds, workers=1)
    four = take_snapshot(tmp_path / "st-four", "chairs", ds, workers=4)
    assert default.snapshot_id == one.snapshot_id == four.snapshot_id
    frames = [latest_snapshot(tmp_path / d, "chairs").manifest() for d in ("st-default", "st-one", "st-four")]
    assert frames[0].equals(frames[1]) and frames[0].equals(frames[2])
