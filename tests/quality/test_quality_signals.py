"""Each QUALITY finding produced by constructed images, with its evidence numbers; a healthy set gives
none; the optional CLIP score with a tiny random CLIP built in the test."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lora_pipeline.quality.checkpoint import assess_checkpoint
from lora_pipeline.render.spec import EvalSpec

SPEC = EvalSpec(prompts=("a photo of {trigger}",), seeds=(1, 2, 3), width=64, height=64, steps=2)


def smooth(seed: int, size: int = 64) -> Image.Image:
    """A smooth colour gradient whose direction and colours depend on the seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    a, b = rng.uniform(-1, 1, 2)
    field = (a * x + b * y + 2) / 4
    rgb = np.stack([field * c for c in rng.uniform(0.3, 1.0, 3)], -1)
    return Image.fromarray((rgb * 255).clip(0, 255).astype(np.uint8))


def noise(seed: int, size: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(1000 + seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def shifted(img: Image.Image, by: int) -> Image.Image:
    return Image.fromarray(np.clip(np.asarray(img).astype(int) + by, 0, 255).astype(np.uint8))


def assess(images, **kw):
    return assess_checkpoint(images, SPEC, "sks_chair", "run/ck", training={}, **kw)


def _images(base, no_trigger, trigger, seeds=(1, 2, 3)):
    out = {}
    for s in seeds:
        out[(0, s, "base")], out[(0, s, "lora_no_trigger")], out[(0, s, "lora_trigger")] = \
            base(s), no_trigger(s), trigger(s)
    return out


def test_healthy_renders_give_no_quality_finding():
    found, q = assess(_images(smooth, lambda s: shifted(smooth(s), 20), lambda s: shifted(smooth(s), 40)))
    assert found == []
    agg = q["aggregate"]
    assert agg["lora_effect"] == pytest.approx(40 / 255, abs=0.02) and agg["trigger_effect"] > 0.05
    assert 0.5 < agg["hf_ratio"] < 2 and 0.5 < agg["seed_diversity_ratio"] < 2


def test_no_lora_effect_and_trigger_no_effect():
    found, q = assess(_images(smooth, smooth, smooth))
    by = {f.code: f for f in found}
    assert set(by) == {"QUALITY.NO_LORA_EFFECT", "QUALITY.TRIGGER_NO_EFFECT"}
    assert by["QUALITY.NO_LORA_EFFECT"].evidence["lora_effect"] == 0.0
    assert by["QUALITY.NO_LORA_EFFECT"].evidence["threshold"] == 0.01
    assert len(by["QUALITY.NO_LORA_EFFECT"].evidence["per_render"]) == 3
    assert by["QUALITY.TRIGGER_NO_EFFECT"].evidence["trigger_effect"] == 0.0
    assert by["QUALITY.NO_LORA_EFFECT"].severity == "error" and by["QUALITY.TRIGGER_NO_EFFECT"].severity == "warn"


def test_noise_collapse():
    found, q = assess(_images(smooth, noise, noise))
    f = next(f for f in found if f.code == "QUALITY.NOISE_COLLAPSE")
    assert f.evidence["hf_ratio"] > 1000 and f.evidence["threshold"] == 4.0
    assert all(r["hf_lora"] > r["hf_base"] for r in f.evidence["per_render"])
    assert "SEED_COLLAPSE" not in " ".join(x.code for x in found)


def test_seed_collapse():
    found, q = assess(_images(smooth, lambda s: shifted(smooth(7), 30), lambda s: shifted(smooth(7), 60)))
    f = next(f for f in found if f.code == "QUALITY.SEED_COLLAPSE")
    assert f.evidence["seed_diversity_ratio"] == 0.0 and f.evidence["threshold"] == 0.25
    assert f.evidence["per_prompt"][0]["seed_diversity_base"] > 0.05 and f.evidence["per_prompt"][0]["seeds"] == 3
    assert [x.code for x in found] == ["QUALITY.SEED_COLLAPSE"]


def test_memorization_against_the_dataset_snapshot(toy_dataset, tmp_path):
    from lora_pipeline.dataset.snapshot_write import take_snapshot

    res = take_snapshot(tmp_path / "storage", "products", toy_dataset)
    rel = res.scan.frame["path"][0]
    training_image = Image.open(toy_dataset / rel).convert("RGB").resize((64, 64))
    images = _images(noise, lambda s: shifted(noise(s), 30), lambda s: training_image if s == 2 else smooth(s + 50))
    found, q = assess_checkpoint(images, SPEC, "sks_chair", "run/ck", storage_root=tmp_path / "storage",
                                 dataset_snapshot={"name": "products", "snapshot_id": res.snapshot_id})
    f = next(f for f in found if f.code == "QUALITY.MEMORIZATION")
    [m] = f.evidence["matches"]
    assert m["seed"] == 2 and m["training_image"] == rel and m["distance"] <= 4 and m["base_distance"] > 4
    assert q["training_images"]["count"] == res.scan.frame.height
    assert q["aggregate"]["memorized"] == 1 and q["aggregate"]["nearest_training_distance"] == m["distance"]


def test_thresholds_come_from_the_config():
    from lora_pipeline.config import ChecksConfig

    found, _ = assess(_images(smooth, smooth, smooth),
                      thresholds=ChecksConfig(quality_min_lora_effect=0.0, quality_min_trigger_effect=0.0)
                      .quality_thresholds())
    assert found == []


def _tiny_clip(folder):
    from transformers import CLIPConfig, CLIPModel

    from lora_pipeline.toy.tokenizer import train_clip_tokenizer

    train_clip_tokenizer(folder)
    vocab = json.loads((folder / "vocab.json").read_text())
    ids = {"bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
           "pad_token_id": vocab["<|endoftext|>"]}
    cfg = CLIPConfig(text_config={**ids, "vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 37,
                                  "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 77},
                     vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 37,
                                    "num_hidden_layers": 2, "num_attention_heads": 4}, projection_dim=16)
    import torch

    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 32},
        "do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": True, "resample": 3}))
    return folder


def test_clip_score_with_a_tiny_local_clip(tmp_path):
    folder = _tiny_clip(tmp_path / "clip")
    images = _images(smooth, noise, noise)
    found, q = assess(images, clip_model=folder)
    assert q["clip"]["model"] == str(folder) and "error" not in q["clip"]
    for r in q["per_render"]:
        assert set(r["clip"]) == {"base", "lora_trigger"} and all(-100 <= v <= 100 for v in r["clip"].values())
    assert q["aggregate"]["clip_lora_trigger"] is not None
    again = assess(images, clip_model=folder)[1]  # deterministic
    assert again["per_render"][0]["clip"] == q["per_render"][0]["clip"]
    _, broken = assess(images, clip_model=tmp_path / "nope")
    assert broken["clip"]["error"].startswith(str(tmp_path / "nope"))
