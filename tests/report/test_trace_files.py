"""trace's file guards on their own: only regular files under the roots, symlinks resolved, size
limits; a FIFO, device, directory or escaping symlink is `unverifiable` (never opened), not a hang or a
traceback. Model folders hash exactly as fsutil.model_hash does, inside their entry only."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from lora_pipeline.fsutil import model_hash, sha256_file
from lora_pipeline.report.trace_claims import parse_claims
from lora_pipeline.report.trace_files import FileProblem, hash_file, hash_model, read_json, valid_id


def _problem(fn, *args) -> FileProblem:
    """Run in a thread: a FIFO opened for reading would block forever; the guard must return at once."""
    out: list = []

    def target():
        try:
            fn(*args)
            out.append(None)
        except FileProblem as e:
            out.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "the guard blocked (it opened a FIFO?)"
    assert isinstance(out[0], FileProblem), out
    return out[0]


def test_regular_file_inside_the_root_is_hashed(tmp_path):
    f = tmp_path / "root" / "a.bin"
    f.parent.mkdir()
    f.write_bytes(b"x" * 100)
    assert hash_file(str(f), [tmp_path / "root"], "root", 1000) == sha256_file(f)


@pytest.mark.parametrize("kind", ["fifo", "dir", "device", "escaping-symlink", "outside", "too-big", "relative",
                                  "missing", "nul"])
def test_what_is_not_a_regular_file_under_the_root_is_never_read(tmp_path, kind):
    root = tmp_path / "root"
    root.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    target, roots = root / "x", [root]
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "dir":
        target.mkdir()
    elif kind == "device":
        target, roots = "/dev/zero", [Path("/dev")]
    elif kind == "escaping-symlink":
        target.symlink_to(secret)
    elif kind == "outside":
        target = secret
    elif kind == "too-big":
        target.write_bytes(b"y" * 2000)
    elif kind == "relative":
        target = "x"
    elif kind == "nul":
        target = str(root / "x\0y")
    e = _problem(hash_file, str(target), roots, "root", 1000)
    expected = {"fifo": "a FIFO", "dir": "a directory", "device": "a device", "escaping-symlink": "outside root",
                "outside": "outside root", "too-big": "over the 1000 byte limit", "relative": "not an absolute path",
                "missing": "not on disk now", "nul": "is not a path"}[kind]
    assert expected in e.reason, e.reason
    assert e.status == ("missing" if kind == "missing" else "unverifiable")
    assert _problem(read_json, str(target), roots, "root", 1000).reason == e.reason


def test_read_json_refuses_what_is_not_an_object(tmp_path):
    (tmp_path / "a.json").write_text("[1, 2]")
    (tmp_path / "b.json").write_text("{not json")
    assert "not a JSON object" in _problem(read_json, str(tmp_path / "a.json"), [tmp_path], "t").reason
    assert "not valid JSON" in _problem(read_json, str(tmp_path / "b.json"), [tmp_path], "t").reason


def test_model_folder_hash_equals_model_hash_and_stays_inside(toy_base, tmp_path):
    assert hash_model(Path(toy_base).resolve(), Path(toy_base)) == model_hash(toy_base)
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "model_index.json").write_text("{}")
    (model / "unet" / "w.bin").write_bytes(b"w" * 10)
    (model / "a-b").write_text("sorts after a/b by path parts")
    (model / ".hidden").write_text("skipped")
    os.mkfifo(model / "pipe")  # skipped like model_hash skips it, never opened
    assert hash_model(model.resolve(), model) == model_hash(model)
    (tmp_path / "secret").write_text("outside")
    (model / "leak.json").symlink_to(tmp_path / "secret")
    assert "outside the base model entry" in _problem(hash_model, model.resolve(), model).reason


def test_hugging_face_cache_layout_is_inside_its_repository(tmp_path):
    repo = tmp_path / "models--x--y"
    snap = repo / "snapshots" / "abc"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "blobs" / "1234").write_text('{"_class_name": "X"}')
    (snap / "model_index.json").symlink_to("../../blobs/1234")
    assert hash_model(snap.resolve(), snap) == model_hash(snap)


def test_ids_and_types_of_the_chunk_are_checked():
    assert valid_id("step-00000006") and valid_id("chairs-r32.v2")
    for bad in ("..", ".", "../x", "a/b", "", "x\0", ["a"], 6, None, "a b", "é"):
        assert not valid_id(bad)
    c = parse_claims({"run_id": "r", "checkpoint_id": "c", "arm": "base", "prompt_index": True, "seed": "11",
                      "prompt": None, "negative_prompt": "", "width": 64, "height": 64.0, "steps": 2,
                      "guidance_scale": "5", "scheduler": "DDIM", "base_model": {"sha256": "AB"}, "lora": []})
    assert set(c.malformed) == {"prompt_index", "seed", "prompt", "height", "guidance_scale",
                                "base_model.sha256", "lora"}
    assert c.seed is None and c.run_id == "r" and c.lora is None
    assert "expected an integer, got '11'" in c.malformed["seed"]
