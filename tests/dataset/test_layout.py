"""Every layout of CONTRACT section 1, read from real files."""

import os

import pytest

from lora_pipeline.dataset.layout import DatasetError, list_dataset
from lora_pipeline.dataset.scan import scan_dataset
from tests.dataset.helpers import pair, png


def test_same_stem_txt_and_caption_at_any_depth_and_any_image_case(tmp_path):
    pair(tmp_path, "a", "cap a", 1)
    png(tmp_path / "deep/er/b.JPG", 2)
    (tmp_path / "deep/er/b.caption").write_text("cap b")
    png(tmp_path / "c.webp", 3)
    (tmp_path / "c.TXT").write_text("cap c")
    png(tmp_path / "d.bmp", 4)
    (tmp_path / "d.txt").write_text("cap d")
    listing = list_dataset(tmp_path)
    caps = {p.image: p.caption for p in listing.pairs}
    assert caps == {"a.png": "cap a", "deep/er/b.JPG": "cap b", "c.webp": "cap c", "d.bmp": "cap d"}
    assert listing.orphan_captions == []


def test_kohya_repeat_folders_record_repeats(tmp_path):
    pair(tmp_path / "10_sks chair", "x", "sks chair", 1)
    pair(tmp_path / "3_other" / "sub", "y", "other", 2)
    pair(tmp_path / "plain", "z", "plain", 3)
    scan = scan_dataset(tmp_path)
    reps = dict(scan.frame.select("path", "repeats").iter_rows())
    assert reps == {"10_sks chair/x.png": 10, "3_other/sub/y.png": 3, "plain/z.png": 1}


def test_metadata_jsonl_and_csv(tmp_path):
    png(tmp_path / "j/a.png", 1)
    png(tmp_path / "j/b.png", 2)
    (tmp_path / "j/metadata.jsonl").write_text(
        '{"file_name": "a.png", "text": "caption a"}\n{"file_name": "gone.png", "text": "x"}\n')
    png(tmp_path / "c/img.jpg", 3)
    (tmp_path / "c/metadata.csv").write_text('file_name,text\nimg.jpg,"caption, with comma"\n')
    listing = list_dataset(tmp_path)
    caps = {p.image: (p.caption, p.caption_source) for p in listing.pairs}
    assert caps["j/a.png"] == ("caption a", "j/metadata.jsonl")
    assert caps["j/b.png"] == (None, None)
    assert caps["c/img.jpg"] == ("caption, with comma", "c/metadata.csv")
    assert listing.orphan_captions == ["j/metadata.jsonl#j/gone.png"]


def test_bad_metadata_is_one_line_error(tmp_path):
    png(tmp_path / "a.png", 1)
    (tmp_path / "metadata.jsonl").write_text("{not json\n")
    with pytest.raises(DatasetError, match=r"metadata.jsonl: line 1 is not valid JSON"):
        list_dataset(tmp_path)


def test_hidden_and_system_files_are_ignored(tmp_path):
    pair(tmp_path, "a", "cap", 1)
    png(tmp_path / ".hidden.png", 2)
    png(tmp_path / ".cache/x.png", 3)
    (tmp_path / "Thumbs.db").write_bytes(b"\0\1")
    png(tmp_path / "._a.png", 4)
    scan = scan_dataset(tmp_path)
    assert scan.frame["path"].to_list() == ["a.png"]
    assert sorted(scan.files) == ["a.png", "a.txt"]


def test_symlink_leaving_the_root_is_refused_and_reported(tmp_path):
    ds, outside = tmp_path / "ds", tmp_path / "outside"
    pair(ds, "a", "cap a", 1)
    png(outside / "secret.png", 2)
    (outside / "secret.txt").write_text("secret")
    os.symlink(outside / "secret.png", ds / "evil.png")
    (ds / "evil.txt").write_text("cap evil")
    os.symlink(outside, ds / "linked_dir")
    pair(ds, "inner_target", "cap inner", 3)
    os.symlink(ds / "inner_target.png", ds / "inner_link.png")
    (ds / "inner_link.txt").write_text("cap link")
    scan = scan_dataset(ds)
    assert sorted(scan.listing.refused_symlinks) == ["evil.png", "linked_dir"]
    assert "evil.png" not in scan.frame["path"].to_list()
    assert "inner_link.png" in scan.frame["path"].to_list()
    assert not any("secret" in f for f in scan.files)


def test_missing_and_empty_dataset_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/readme.md").write_text("x")
    with pytest.raises(DatasetError, match="no images found"):
        scan_dataset(tmp_path / "empty")
