import hashlib
import io
import json

import numpy as np
import pytest

from lora_pipeline.toy.base import write_toy_base


def _render_png(pipe, seed: int) -> bytes:
    import torch

    img = pipe("a photo of sks_chair on a white background", num_inference_steps=3, height=64, width=64,
               generator=torch.Generator().manual_seed(seed)).images[0]
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_toy_base_is_a_diffusers_sd1_folder_with_a_clip_tokenizer(toy_base):
    from transformers import CLIPTokenizer

    index = json.loads((toy_base / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert part in index
    assert (toy_base / "tokenizer" / "vocab.json").is_file()
    assert (toy_base / "tokenizer" / "merges.txt").read_text().startswith("#version: 0.2")
    assert not (toy_base / "tokenizer" / "tokenizer.json").exists()
    tok = CLIPTokenizer.from_pretrained(toy_base / "tokenizer")
    assert tok.model_max_length == 77
    ids = tok("a photo of sks_chair").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert "sks</w>" in tok.convert_ids_to_tokens(ids)


def test_same_seed_same_image_bytes_other_seed_differs(toy_pipe):
    a, b, c = _render_png(toy_pipe, 1), _render_png(toy_pipe, 1), _render_png(toy_pipe, 2)
    assert a == b
    assert a != c


def test_same_seed_same_weights_other_seed_different(tmp_path, toy_base):
    def weights_hash(folder):
        h = hashlib.sha256()
        for f in sorted(folder.rglob("*.safetensors")):
            h.update(f.read_bytes())
        return h.hexdigest()

    again = write_toy_base(tmp_path / "again", seed=0)
    other = write_toy_base(tmp_path / "other", seed=1)
    assert weights_hash(again) == weights_hash(toy_base)
    assert weights_hash(other) != weights_hash(toy_base)
    assert (again / "tokenizer" / "vocab.json").read_bytes() == (toy_base / "tokenizer" / "vocab.json").read_bytes()


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        write_toy_base(tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_render_is_a_64px_non_constant_image(toy_pipe):
    import torch

    img = toy_pipe("a chair", num_inference_steps=2, height=64, width=64,
                   generator=torch.Generator().manual_seed(0)).images[0]
    arr = np.asarray(img)
    assert arr.shape == (64, 64, 3) and arr.std() > 0
