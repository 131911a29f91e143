import json
import math

import pytest
import torch
from safetensors import safe_open

from lora_pipeline.toy.train import TrainError, TrainSpec


def _probe(pipe):
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(1, 4, 8, 8, generator=g)
    enc = torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        return pipe.unet(lat, torch.tensor([500]), encoder_hidden_states=enc).sample


def _checkpoint_files(run):
    return sorted(run.rglob("*.safetensors"))


def test_native_run_writes_promised_checkpoints_and_record(native_run, toy_base):
    files = [f.relative_to(native_run).as_posix() for f in _checkpoint_files(native_run)]
    assert files == ["checkpoints/run-native-step00000003.safetensors",
                     "checkpoints/run-native-step00000006.safetensors"]
    rec = json.loads((native_run / "lora_run.json").read_text())
    assert rec["format"] == "lora-pipeline-native"
    assert rec["base_model"]["path"] == str(toy_base) and len(rec["base_model"]["sha256"]) == 64
    assert rec["trigger"] == "sks_chair" and rec["network"]["rank"] == 4 and rec["network"]["alpha"] == 8.0
    assert rec["learning_rate"] == 5e-3 and rec["steps"] == 6 and rec["resolution"] == 64
    assert rec["started_at"] and rec["finished_at"] and rec["seed"] == 0
    assert [c["step"] for c in rec["checkpoints"]] == [3, 6]
    losses = [json.loads(line) for line in (native_run / "loss.jsonl").read_text().splitlines()]
    assert [e["step"] for e in losses] == list(range(1, 7))
    assert all(math.isfinite(e["loss"]) for e in losses)


def test_native_checkpoint_carries_adapter_metadata_so_alpha_survives(native_run):
    f = _checkpoint_files(native_run)[-1]
    with safe_open(f, "np") as s:
        meta = json.loads(s.metadata()["lora_adapter_metadata"])
    assert meta["unet.r"] == 4 and meta["unet.lora_alpha"] == 8.0


def test_kohya_run_writes_kohya_files_keys_and_metadata(kohya_run):
    names = [f.name for f in _checkpoint_files(kohya_run)]
    assert names == ["run-kohya-step00000003.safetensors", "run-kohya-step00000006.safetensors",
                     "run-kohya.safetensors"]
    with safe_open(kohya_run / "run-kohya.safetensors", "np") as s:
        keys, md = list(s.keys()), s.metadata()
        alpha = s.get_tensor(next(k for k in keys if k.endswith(".alpha")))
    assert all(k.startswith("lora_unet_") for k in keys)
    assert {k.rsplit(".", 2)[-2] + "." + k.rsplit(".", 1)[-1] if not k.endswith("alpha") else "alpha"
            for k in keys} == {"lora_down.weight", "lora_up.weight", "alpha"}
    assert float(alpha) == 2.0
    for key in ("ss_network_dim", "ss_network_alpha", "ss_learning_rate", "ss_base_model_version",
                "ss_sd_model_name", "ss_new_sd_model_hash", "ss_resolution", "ss_steps", "ss_epoch",
                "ss_max_train_steps", "ss_num_train_images", "ss_dataset_dirs", "ss_tag_frequency",
                "ss_training_started_at", "modelspec.trigger_phrase"):
        assert key in md, key
    assert md["ss_network_dim"] == "4" and md["ss_steps"] == "6" and md["modelspec.trigger_phrase"] == "sks_chair"
    assert "sks_chair" in json.dumps(json.loads(md["ss_tag_frequency"]))


@pytest.mark.parametrize("fmt", ["native", "kohya"])
def test_every_checkpoint_loads_changes_unet_and_disable_restores_base(fmt, native_run, kohya_run, toy_pipe):
    from peft.tuners.lora import LoraLayer

    run = native_run if fmt == "native" else kohya_run
    base = _probe(toy_pipe)
    for i, f in enumerate(_checkpoint_files(run)):
        name = f"ck_{fmt}_{i:04d}"
        toy_pipe.load_lora_weights(str(f), adapter_name=name)
        try:
            toy_pipe.set_adapters(name)
            on = _probe(toy_pipe)
            rel = float((on - base).norm() / base.norm())
            assert rel > 1e-4, f"{f.name}: LoRA does not change the UNet (rel delta {rel})"
            toy_pipe.disable_lora()
            assert torch.equal(_probe(toy_pipe), base), f"{f.name}: disable_lora() did not restore the base"
            toy_pipe.enable_lora()
            scales = {m.scaling[name] for m in toy_pipe.unet.modules()
                      if isinstance(m, LoraLayer) and name in m.scaling}
            # native: alpha 8 / rank 4 via adapter metadata; kohya: alpha tensor 2 / rank 4.
            assert scales == ({2.0} if fmt == "native" else {0.5})
        finally:
            toy_pipe.delete_adapters(name)
    assert toy_pipe.get_list_adapters() in ({}, {"unet": []})


def test_bad_arguments_are_named(tmp_path, toy_base, toy_dataset):
    spec = TrainSpec(base=toy_base, dataset=toy_dataset, out=tmp_path / "r", trigger="t", steps=0)
    with pytest.raises(TrainError, match="--steps"):
        spec.validate()
    spec = TrainSpec(base=tmp_path, dataset=toy_dataset, out=tmp_path / "r", trigger="t")
    with pytest.raises(TrainError, match="--base"):
        spec.validate()


def test_kohya_run_logs_its_loss_to_tensorboard_as_sd_scripts_does(kohya_run):
    """`logs/<timestamp>/network_train/events.out.tfevents.*` with `loss/current` per step, read back by
    the kohya format reader (the demo's kohya run then has a loss curve)."""
    from lora_pipeline.training.formats.kohya import parse
    from lora_pipeline.training.tensorboard import read_scalars

    events = sorted(kohya_run.glob("logs/*/network_train/events.out.tfevents.*"))
    assert len(events) == 1
    scalars = read_scalars(events[0])
    assert [s for s, _ in scalars["loss/current"]] == list(range(1, 7))
    assert all(math.isfinite(v) and v > 0 for _, v in scalars["loss/current"])
    assert len(scalars["loss/average"]) == 6
    facts = parse(kohya_run)
    assert [p[0] for p in facts.loss] == list(range(1, 7))
