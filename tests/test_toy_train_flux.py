"""The FLUX.1 toy trainer: a native run whose checkpoints diffusers loads onto the FLUX transformer."""

import json
import math

import pytest
import torch
from safetensors import safe_open

from lora_pipeline.toy.train import TrainError, TrainSpec
from lora_pipeline.toy.train_flux import train_flux1
from lora_pipeline.training.formats import native


@pytest.fixture(scope="module")
def flux_run(tmp_path_factory, toy_flux1_base, toy_dataset):
    out = tmp_path_factory.mktemp("runs") / "run-flux1"
    train_flux1(TrainSpec(base=toy_flux1_base, dataset=toy_dataset, out=out, trigger="sks_chair", steps=4,
                          save_every=2, rank=4, alpha=8.0, lr=1e-2, resolution=64))
    return out


def _probe(transformer):
    """Transformer output on fixed inputs shaped like a 64x64 FLUX render (4x4 packed latent)."""
    from diffusers import FluxPipeline

    g = torch.Generator().manual_seed(0)
    cfg = transformer.config
    with torch.no_grad():
        return transformer(hidden_states=torch.randn(1, 16, cfg.in_channels, generator=g),
                           timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
                           pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g),
                           encoder_hidden_states=torch.randn(1, 8, cfg.joint_attention_dim, generator=g),
                           txt_ids=torch.zeros(8, 3),
                           img_ids=FluxPipeline._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32),
                           return_dict=False)[0]


def test_flux_run_record_is_native_with_flux1_base(flux_run, toy_flux1_base):
    rec = json.loads((flux_run / "lora_run.json").read_text())
    assert rec["format"] == "lora-pipeline-native" and rec["finished_at"]
    assert rec["base_model"]["name"] == "toy-flux1" and rec["base_model"]["architecture"] == "flux1"
    assert rec["base_model"]["path"] == str(toy_flux1_base)
    assert [c["file"] for c in rec["checkpoints"]] == ["checkpoints/run-flux1-step00000002.safetensors",
                                                       "checkpoints/run-flux1-step00000004.safetensors"]
    losses = [json.loads(line)["loss"] for line in (flux_run / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    parsed = native.parse(flux_run)  # ingestion reads it as our native format
    assert native.detect(flux_run) and parsed.finished and len(parsed.candidates) == 2


def test_flux_checkpoints_carry_metadata_load_and_change_the_transformer(flux_run, toy_flux1_base):
    from diffusers import FluxPipeline

    from lora_pipeline.quiet import quiet_libraries

    quiet_libraries()
    pipe = FluxPipeline.from_pretrained(toy_flux1_base)
    base = _probe(pipe.transformer)
    for i, f in enumerate(sorted(flux_run.rglob("*.safetensors"))):
        with safe_open(f, "np") as s:
            keys, meta = list(s.keys()), json.loads(s.metadata()["lora_adapter_metadata"])
        assert keys and all(k.startswith("transformer.") for k in keys)
        assert meta["transformer.r"] == 4 and meta["transformer.lora_alpha"] == 8.0
        name = f"flux_{i}"
        pipe.load_lora_weights(str(f), adapter_name=name)
        pipe.set_adapters(name)
        rel = float((_probe(pipe.transformer) - base).norm() / base.norm())
        assert rel > 1e-4, f"{f.name}: LoRA does not change the transformer (rel delta {rel})"
        pipe.disable_lora()
        assert torch.allclose(_probe(pipe.transformer), base, atol=1e-6)
        pipe.enable_lora()
        pipe.delete_adapters(name)


def test_flux_trainer_refuses_kohya_format(tmp_path, toy_flux1_base, toy_dataset):
    with pytest.raises(TrainError, match="--format"):
        train_flux1(TrainSpec(base=toy_flux1_base, dataset=toy_dataset, out=tmp_path / "x", trigger="t",
                              format="kohya"))
