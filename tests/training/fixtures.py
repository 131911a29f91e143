"""Miniature run folders of every trainer format, built from the real toy LoRA weights converted to
each trainer's key naming, with that trainer's file names, config/log formats and header keys
(../shared/notes/trainer-run-formats.md)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import yaml
from safetensors import safe_open
from safetensors.numpy import save_file

from lora_pipeline.training.tensorboard import write_scalars

TRIGGER = "sks_chair"
LOSS = [(1, 0.31), (2, 0.27), (3, 0.25), (4, 0.24), (5, 0.22), (6, 0.21)]
LOSS_F32 = [(s, float(np.float32(v))) for s, v in LOSS]  # as read back from tensorboard (float32)
ALPHA = 8.0
RANK = 4
STARTED = 1795800000.0  # 2026-11-27


def toy_tensors(native_run: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The last native checkpoint: diffusers keys `unet.<module>.lora.{down,up}.weight` + header."""
    f = sorted((native_run / "checkpoints").glob("*.safetensors"))[-1]
    with safe_open(f, "np") as s:
        return {k: s.get_tensor(k) for k in s.keys()}, s.metadata()  # noqa: SIM118


def at_step(t: dict[str, np.ndarray], scale: float) -> dict[str, np.ndarray]:
    """The same LoRA with its up weights scaled (an earlier/later checkpoint)."""
    return {k: (v * scale).astype(v.dtype) if ".up." in k or "lora_up" in k else v for k, v in t.items()}


def to_kohya(t: dict[str, np.ndarray], alpha: float = ALPHA) -> dict[str, np.ndarray]:
    out, mods = {}, set()
    for k, v in t.items():
        module, kind = k.removeprefix("unet.").rsplit(".lora.", 1)
        name = "lora_unet_" + module.replace(".", "_")
        out[f"{name}.lora_{kind.split('.')[0]}.weight"] = v
        mods.add(name)
    for m in mods:
        out[f"{m}.alpha"] = np.array(alpha, dtype=np.float32)
    return out


def _save(path: Path, tensors: dict, md: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in md.items()})
    return path


def native(runs: Path, native_run: Path, name: str = "native run") -> Path:
    return Path(shutil.copytree(native_run, runs / name))  # a space: run_id becomes native_run


def kohya(runs: Path, kohya_run: Path) -> Path:
    out = Path(shutil.copytree(kohya_run, runs / "kohya"))
    (out / "config.toml").write_text(
        '[model_arguments]\npretrained_model_name_or_path = "toy-sd1"\n[additional_network_arguments]\n'
        'network_dim = 4\nnetwork_alpha = 2.0\n[optimizer_arguments]\nlearning_rate = 0.005\noptimizer_type = "AdamW"\n')
    logdir = out / "logs" / "run-kohya20261128184400" / "network_train"
    logdir.mkdir(parents=True)
    write_scalars(logdir / "events.out.tfevents.1795891480.host.1.0", "loss/current", LOSS)
    (out / "run-kohya-step00000006-state").mkdir()
    (out / "run-kohya-step00000006-state" / "train_state.json").write_text('{"current_epoch": 0, "current_step": 6}')
    (out / "run-kohya-step00000006-state" / "optimizer.bin").write_bytes(b"\x80\x04K\x01.")
    return out


def aitoolkit(runs: Path, t: dict, toy_base: Path, toy_dataset: Path) -> Path:
    out = runs / "chairs_aitk"
    out.mkdir(parents=True)
    cfg = {"job": "extension", "config": {"name": "chairs", "process": [{
        "type": "sd_trainer", "training_folder": str(runs), "device": "cuda:0", "trigger_word": TRIGGER,
        "network": {"type": "lora", "linear": RANK, "linear_alpha": ALPHA},
        "save": {"dtype": "float16", "save_every": 3, "max_step_saves_to_keep": 4},
        "datasets": [{"folder_path": str(toy_dataset), "caption_ext": "txt", "resolution": [64]}],
        "train": {"batch_size": 1, "steps": 6, "lr": 5e-4, "optimizer": "adamw8bit", "noise_scheduler": "ddpm"},
        "model": {"name_or_path": str(toy_base), "is_flux": False, "is_xl": False},
        "sample": {"sampler": "ddpm", "sample_every": 3, "prompts": [f"{TRIGGER} on a table"], "seed": 42}}]},
        "meta": {"name": "[name]", "version": "1.0"}}
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    for step, scale in ((3, 0.5), (6, 1.0)):
        md = {"name": "chairs", "version": "1.0", "training_info": {"step": step, "epoch": 0},
              "ss_base_model_version": "sd_1.5", "ss_output_name": "chairs", "format": "pt",
              "software": {"name": "ai-toolkit", "repo": "https://github.com/ostris/ai-toolkit", "version": "0.1.0"},
              "sshs_model_hash": "0" * 64, "sshs_legacy_hash": "0" * 8,
              "ss_tag_frequency": {f"1_{TRIGGER}": {TRIGGER: 1}}}
        tensors = {k: v.astype(np.float16) for k, v in to_kohya(at_step(t, scale)).items()}
        _save(out / f"chairs_{step:09d}.safetensors", tensors, md)
        if step == 6:
            _save(out / "chairs.safetensors", tensors, md)
    (out / "optimizer.pt").write_bytes(b"\x80\x04K\x01.")
    con = sqlite3.connect(out / "loss_log.db")
    con.executescript("CREATE TABLE steps(step INTEGER PRIMARY KEY, wall_time REAL);"
                      "CREATE TABLE metric_keys(key TEXT PRIMARY KEY);"
                      "CREATE TABLE metrics(step INTEGER, key TEXT, value_real REAL, value_text TEXT);")
    con.executemany("INSERT INTO steps VALUES (?, ?)", [(s, STARTED + s) for s, _ in LOSS])
    con.executemany("INSERT INTO metric_keys VALUES (?)", [("loss",), ("learning_rate",)])
    con.executemany("INSERT INTO metrics VALUES (?, 'loss', ?, NULL)", LOSS)
    con.executemany("INSERT INTO metrics VALUES (?, 'learning_rate', 0.0005, NULL)", [(s,) for s, _ in LOSS])
    con.commit()
    con.close()
    return out


def _st_header(t_md: dict, step: int) -> dict:
    return {"modelspec.sai_model_spec": "1.0.1", "modelspec.architecture": "sd1x-v1/lora",
            "modelspec.implementation": "diffusers", "modelspec.title": "chairs-st", "modelspec.resolution": "64x64",
            "global_step": str(step), "trained_words": TRIGGER, "format": "pt",
            "lora_adapter_metadata": t_md["lora_adapter_metadata"]}


def simpletuner(runs: Path, t: dict, t_md: dict, toy_base: Path, toy_dataset: Path) -> Path:
    out = runs / "chairs-simpletuner"
    for step, scale in ((3, 0.5), (6, 1.0)):
        d = out / f"checkpoint-{step}"
        _save(d / "pytorch_lora_weights.safetensors", at_step(t, scale), _st_header(t_md, step))
        (d / "training_state.json").write_text(json.dumps({"global_step": step, "current_epoch": 1}))
        (d / "random_states_0.pkl").write_bytes(b"\x80\x04K\x01.")
    _save(out / "pytorch_lora_weights.safetensors", t, _st_header(t_md, 6))
    (out / "training_metrics.jsonl").write_text("".join(
        json.dumps({"schema_version": 1, "timestamp": STARTED + s, "step": s,
                    "metrics": {"train_loss": v, "learning_rate": 1e-4}}) + "\n" for s, v in LOSS))
    (out / "training_metrics.json").write_text(json.dumps({
        "run_name": "chairs-st", "status": "completed", "config": {
            "model_family": "sd1x", "pretrained_model_name_or_path": str(toy_base), "learning_rate": 1e-4,
            "seed": 42, "resolution": 64, "lora_rank": RANK, "lora_alpha": ALPHA, "max_train_steps": 6,
            "optimizer": "adamw_bf16", "instance_data_dir": str(toy_dataset)}}))
    return out


def onetrainer(runs: Path, t: dict, toy_base: Path, toy_dataset: Path) -> Path:
    out = runs / "chairs-onetrainer"
    md = {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-v1/lora",
          "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
          "modelspec.title": "chairs", "modelspec.resolution": "64x64", "modelspec.date": "2026-11-28",
          "ot_branch": "master", "ot_revision": "23df383"}
    for step, ep, scale in ((3, 1, 0.5), (6, 2, 1.0)):
        _save(out / "save" / f"chairs2026-11-28_10-00-00-save-{step}-{ep}-3.safetensors",
              to_kohya(at_step(t, scale)), md)
    _save(out / "models" / "chairs.safetensors", to_kohya(t), md)
    (out / "config").mkdir()
    (out / "config" / "2026-11-28_10-00-00.json").write_text(json.dumps({
        "__version": 6, "training_method": "LORA", "model_type": "STABLE_DIFFUSION_15",
        "base_model_name": str(toy_base), "output_model_destination": "models/chairs.safetensors",
        "learning_rate": 3e-4, "optimizer": {"optimizer": "ADAMW", "weight_decay": 0.01},
        "lora_rank": RANK, "lora_alpha": ALPHA, "resolution": "64", "epochs": 2, "batch_size": 1,
        "concepts": [{"name": "chairs", "path": str(toy_dataset), "enabled": True}]}))
    (out / "tensorboard").mkdir()
    write_scalars(out / "tensorboard" / "events.out.tfevents.1795800000.host.7.0", "loss/train_step", LOSS)
    return out


def diffusers_examples(runs: Path, t: dict, t_md: dict, toy_base: Path, toy_dataset: Path) -> Path:
    out = runs / "chairs-diffusers"
    md = {"format": "pt", "lora_adapter_metadata": t_md["lora_adapter_metadata"]}
    for step, scale in ((3, 0.5), (6, 1.0)):
        d = out / f"checkpoint-{step}"
        _save(d / "pytorch_lora_weights.safetensors", at_step(t, scale), md)
        for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
            (d / name).write_bytes(b"\x80\x04K\x01.")
    _save(out / "pytorch_lora_weights.safetensors", t, md)
    logs = out / "logs" / "text2image-fine-tune"
    (logs / "1795800000.5").mkdir(parents=True)
    (logs / "1795800000.5" / "hparams.yml").write_text(yaml.safe_dump({
        "pretrained_model_name_or_path": str(toy_base), "train_data_dir": str(toy_dataset), "rank": RANK,
        "learning_rate": 1e-4, "max_train_steps": 6, "resolution": 64, "use_8bit_adam": False, "seed": 0,
        "validation_prompt": f"{TRIGGER} on a table", "checkpointing_steps": 3}))
    write_scalars(logs / "events.out.tfevents.1795800000.host.9.0", "train_loss", LOSS)
    return out


def generic(runs: Path, t: dict) -> Path:
    out = runs / "loose-files"
    _save(out / "chair_lora_step300.safetensors", at_step(t, 0.5), {})
    _save(out / "chair_lora_step600.safetensors", t, {})
    return out


def config_text(tmp: Path, toy_dataset: Path, extra: str = "") -> Path:
    f = tmp / "lora_pipeline.yaml"
    f.write_text(f"storage: storage\ntraining_runs: runs\ndatasets:\n  products:\n    path: {toy_dataset}\n"
                 f"    trigger: {TRIGGER}\n{extra}")
    return f
