"""A base model is hashed once per content (lora_pipeline/render/base_identity.py): later processes
read the identity kept under the storage root, and any change to a file of the model (even one that
puts its size and mtime back) or to the kept entry means hashing again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lora_pipeline.fsutil import model_hash
from lora_pipeline.render import base_identity as bi


@pytest.fixture
def model(tmp_path) -> Path:
    m = tmp_path / "base"
    (m / "unet").mkdir(parents=True)
    (m / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (m / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(os.urandom(4096))
    return m


@pytest.fixture
def hashes(monkeypatch) -> list[Path]:
    """The models actually hashed (a spy: the real model_hash still runs)."""
    seen: list[Path] = []

    def spy(p):
        seen.append(Path(p))
        return model_hash(p)

    monkeypatch.setattr(bi, "model_hash", spy)
    bi.clear_memory()
    yield seen
    bi.clear_memory()


def test_a_later_process_reads_the_kept_identity_instead_of_hashing(model, tmp_path, hashes):
    cache = tmp_path / "storage" / "render-cache"
    first = bi.base_identity(model, cache)
    assert first == model_hash(model) and len(hashes) == 1
    assert bi.base_identity(model, cache) == first and len(hashes) == 1  # same process: memory
    bi.clear_memory()  # a new process
    assert bi.base_identity(model, cache) == first and len(hashes) == 1  # from the kept entry
    entries = list((cache / bi.FOLDER).glob("*.json"))
    assert len(entries) == 1 and json.loads(entries[0].read_text())["model_hash"] == first
    bi.clear_memory()
    assert bi.base_identity(model) == first and len(hashes) == 2  # no cache root: hashed


def test_a_file_rewritten_with_its_size_and_mtime_put_back_is_hashed_again(model, tmp_path, hashes):
    cache = tmp_path / "render-cache"
    before = bi.base_identity(model, cache)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    st = weights.stat()
    weights.write_bytes(os.urandom(4096))  # same size
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: only ctime tells
    bi.clear_memory()
    after = bi.base_identity(model, cache)
    assert after != before and after == model_hash(model) and len(hashes) == 2


@pytest.mark.parametrize("damage", ["garbage", "other_listing", "bad_hash", "symlink", "huge"])
def test_an_entry_that_is_not_ours_is_ignored_and_replaced(model, tmp_path, hashes, damage):
    cache = tmp_path / "render-cache"
    good = bi.base_identity(model, cache)
    entry = next((cache / bi.FOLDER).glob("*.json"))
    doc = json.loads(entry.read_text())
    if damage == "garbage":
        entry.write_bytes(b"\x00not json")
    elif damage == "other_listing":
        entry.write_text(json.dumps({**doc, "listing": "0" * 64, "model_hash": "f" * 64}))
    elif damage == "bad_hash":
        entry.write_text(json.dumps({**doc, "model_hash": "not-a-hash"}))
    elif damage == "symlink":
        planted = tmp_path / "planted.json"
        planted.write_text(json.dumps({**doc, "model_hash": "f" * 64}))
        entry.unlink()
        entry.symlink_to(planted)
    else:
        entry.write_text(json.dumps({**doc, "model_hash": "f" * 64, "pad": "x" * 10_000}))
    bi.clear_memory()
    assert bi.base_identity(model, cache) == good and len(hashes) == 2
    assert not entry.is_symlink() and json.loads(entry.read_text())["model_hash"] == good  # replaced
    if damage == "symlink":
        assert json.loads((tmp_path / "planted.json").read_text())["model_hash"] == "f" * 64  # not written through


def test_a_cache_that_cannot_be_written_costs_only_the_hash(model, tmp_path, hashes):
    blocked = tmp_path / "render-cache"
    blocked.write_text("a file where the folder would go")  # every write under it fails
    assert bi.base_identity(model, blocked) == model_hash(model) and len(hashes) == 1
