"""FLUX.1, FLUX.2 and SD3 run folders as ai-toolkit, kohya sd-scripts (flux_train_network.py,
sd3_train_network.py) and SimpleTuner write them: their file names, config/log files, header keys and
LoRA key naming (../shared/notes/trainer-run-formats.md; ai-toolkit 27a03a9, sd-scripts 48d368f,
SimpleTuner bc8e6ab). The tensors are tiny (width 32) but keep each family's shape ratios, so the
architecture is told from the keys as it would be from a real file; ingestion never renders them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import yaml

from lora_pipeline.training.tensorboard import write_scalars
from tests.training.fixtures import TRIGGER, _save

H = 32  # the transformer width (FLUX.1 3072, FLUX.2 6144/4096/3072, SD3.5 2432/1536)
RANK = 16
STEPS = 500
SAVES = (250, 500)
STARTED = 1795800000.0
LOSS = [(s, 0.45 - 0.0004 * s) for s in range(25, STEPS + 1, 25)]


def _pairs(blocks: dict[str, tuple[int, int]], n: int, prefix: str) -> list[tuple[str, int, int]]:
    return [(prefix.format(i=i) + name, a * H, b * H) for i in range(n) for name, (a, b) in blocks.items()]


# (module, in, out) in units of H, per block: the shapes the family's layers have
FLUX1_BFL = {f"{s}_{p}": d for s in ("img", "txt") for p, d in (
    ("attn_qkv", (1, 3)), ("attn_proj", (1, 1)), ("mlp_0", (1, 4)), ("mlp_2", (4, 1)), ("mod_lin", (1, 6)))}
FLUX1_SINGLE = {"linear1": (1, 7), "linear2": (5, 1), "modulation_lin": (1, 3)}
SD3_MMDIT = {f"{s}_{p}": d for s in ("x_block", "context_block") for p, d in (
    ("attn_qkv", (1, 3)), ("attn_proj", (1, 1)), ("mlp_fc1", (1, 4)), ("mlp_fc2", (4, 1)),
    ("adaLN_modulation_1", (1, 6)))}
DIFFUSERS_JOINT = {f"attn.{p}": (1, 1) for p in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                                 "add_v_proj", "to_add_out")}
FLUX1_DIFFUSERS_SINGLE = {"attn.to_q": (1, 1), "attn.to_k": (1, 1), "attn.to_v": (1, 1), "proj_mlp": (1, 4),
                          "proj_out": (5, 1)}
FLUX2_BFL = {f"{s}_{p}": d for s in ("img", "txt") for p, d in (
    ("attn.qkv", (1, 3)), ("attn.proj", (1, 1)), ("mlp.0", (1, 6)), ("mlp.2", (3, 1)))}
FLUX2_SINGLE = {"linear1": (1, 9), "linear2": (4, 1)}


def modules(family: str) -> list[tuple[str, int, int]]:
    if family == "flux1-kohya":
        return (_pairs(FLUX1_BFL, 2, "lora_unet_double_blocks_{i}_")
                + _pairs(FLUX1_SINGLE, 2, "lora_unet_single_blocks_{i}_"))
    if family == "sd3-kohya":
        return _pairs(SD3_MMDIT, 2, "lora_unet_joint_blocks_{i}_")
    if family == "flux1-diffusers":
        return (_pairs(DIFFUSERS_JOINT | {"ff.net.0.proj": (1, 4), "ff.net.2": (4, 1)}, 2,
                       "transformer.transformer_blocks.{i}.")
                + _pairs(FLUX1_DIFFUSERS_SINGLE, 2, "transformer.single_transformer_blocks.{i}."))
    if family == "sd3-diffusers":
        return _pairs(DIFFUSERS_JOINT | {"ff.net.0.proj": (1, 4), "ff_context.net.0.proj": (1, 4)}, 2,
                      "transformer.transformer_blocks.{i}.")
    if family == "flux2-bfl":  # ai-toolkit saves FLUX.2 under `diffusion_model.` (convert_lora_weights_before_save)
        return (_pairs(FLUX2_BFL, 2, "diffusion_model.double_blocks.{i}.")
                + _pairs(FLUX2_SINGLE, 2, "diffusion_model.single_blocks.{i}."))
    if family == "flux2-diffusers":  # SimpleTuner's default FLUX.2 targets
        return (_pairs({f"attn.{p}": (1, 1) for p in ("to_q", "to_k", "to_v", "to_out.0")}, 2,
                       "transformer.transformer_blocks.{i}.")
                + _pairs({"attn.to_qkv_mlp_proj": (1, 9)}, 2, "transformer.single_transformer_blocks.{i}."))
    raise ValueError(family)


def lora(family: str, scale: float, alpha: float | None = None, dtype=np.float16) -> dict[str, np.ndarray]:
    """kohya style (`lora_down`/`lora_up` + `alpha`) for `*-kohya`, PEFT style (`lora_A`/`lora_B`, no
    alpha) otherwise; `scale` grows the up weights like a later checkpoint."""
    rng = np.random.default_rng(7)
    kohya = family.endswith("-kohya")
    out = {}
    for name, n_in, n_out in modules(family):
        down = rng.normal(0, 0.1, (RANK, n_in)).astype(dtype)
        up = (rng.normal(0, 0.01, (n_out, RANK)) * scale).astype(dtype)
        if kohya:
            out[f"{name}.lora_down.weight"], out[f"{name}.lora_up.weight"] = down, up
            out[f"{name}.alpha"] = np.array(alpha, dtype=np.float32)
        else:
            out[f"{name}.lora_A.weight"], out[f"{name}.lora_B.weight"] = down, up
    return out


# ----- kohya sd-scripts -----------------------------------------------------------------------------

def _kohya_header(step: int, **extra: str) -> dict[str, str]:
    """train_network.py's metadata (dataset config branch: ss_datasets, no ss_resolution), as strings."""
    md = {
        "ss_session_id": "1234567", "ss_training_started_at": str(STARTED), "ss_output_name": "chairs",
        "ss_learning_rate": "0.0001", "ss_text_encoder_lr": "None", "ss_unet_lr": "None",
        "ss_num_train_images": "80", "ss_num_reg_images": "0", "ss_num_batches_per_epoch": "80",
        "ss_num_epochs": "7", "ss_gradient_checkpointing": "True", "ss_gradient_accumulation_steps": "1",
        "ss_max_train_steps": str(STEPS), "ss_lr_warmup_steps": "0", "ss_lr_scheduler": "constant",
        "ss_network_dim": str(RANK), "ss_network_alpha": "8.0", "ss_network_dropout": "None",
        "ss_mixed_precision": "bf16", "ss_full_fp16": "False", "ss_v2": "False", "ss_clip_skip": "None",
        "ss_max_token_length": "None", "ss_seed": "42", "ss_noise_offset": "None",
        "ss_optimizer": "bitsandbytes.optim.adamw.AdamW8bit", "ss_loss_type": "l2", "ss_fp8_base": "True",
        "ss_steps": str(step), "ss_epoch": str(step // 80),
        "ss_datasets": json.dumps([{"is_dreambooth": True, "batch_size_per_device": 1, "num_train_images": 80,
                                    "resolution": [512, 512], "enable_bucket": True,
                                    "subsets": [{"img_count": 8, "num_repeats": 10, "image_dir": "products",
                                                 "class_tokens": None, "is_reg": False}]}]),
        "ss_dataset_dirs": json.dumps({"products": {"n_repeats": 10, "img_count": 8}}),
        "ss_tag_frequency": json.dumps({"products": {TRIGGER: 8, "chair": 8}}),
        "sshs_model_hash": "0" * 64, "sshs_legacy_hash": "0" * 8,
        "modelspec.sai_model_spec": "1.0.1", "modelspec.implementation": "https://github.com/black-forest-labs/flux",
        "modelspec.title": "chairs", "modelspec.date": "2026-11-27T10:00:00",
        "modelspec.resolution": "1024x1024",  # the family default: args.resolution is unset with a dataset config
        "modelspec.implementation_version": "sd-scripts/48d368f",
    }
    md.update(extra)
    return md


def kohya_flux(runs: Path) -> Path:
    """flux_train_network.py --network_module networks.lora_flux, saving every 250 steps; no config copy."""
    out = runs / "kohya-flux"
    flux = {"ss_sd_model_name": "flux1-dev.safetensors", "ss_new_sd_model_hash": "ab" * 32,
            "ss_base_model_version": "flux1", "ss_network_module": "networks.lora_flux",
            "modelspec.architecture": "flux-1-dev/lora",
            # flux_train_network.py update_metadata
            "ss_model_type": "flux", "ss_apply_t5_attn_mask": "False", "ss_weighting_scheme": "none",
            "ss_logit_mean": "0.0", "ss_logit_std": "1.0", "ss_mode_scale": "1.29", "ss_guidance_scale": "1.0",
            "ss_timestep_sampling": "shift", "ss_sigmoid_scale": "1.0", "ss_model_prediction_type": "raw",
            "ss_discrete_flow_shift": "3.1582"}
    for step in SAVES:
        _save(out / f"chairs-step{step:08d}.safetensors", lora("flux1-kohya", step / STEPS, 8.0),
              _kohya_header(step, **flux))
    _save(out / "chairs.safetensors", lora("flux1-kohya", 1.0, 8.0), _kohya_header(STEPS, **flux))
    logdir = out / "logs" / "chairs20261127100000" / "network_train"
    logdir.mkdir(parents=True)
    write_scalars(logdir / "events.out.tfevents.1795800000.host.1.0", "loss/current", LOSS)
    return out


def kohya_sd3(runs: Path) -> Path:
    """sd3_train_network.py (networks.lora_sd3) on SD3.5 large, with the user's config.toml beside it."""
    out = runs / "kohya-sd3"
    sd3 = {"ss_sd_model_name": "sd3.5_large.safetensors", "ss_base_model_version": "5-large",
           "ss_network_module": "networks.lora_sd3", "modelspec.architecture": "stable-diffusion-3-5-large/lora",
           "modelspec.trigger_phrase": TRIGGER, "modelspec.implementation": "https://github.com/Stability-AI/SD3.5",
           # sd3_train_network.py update_metadata
           "ss_apply_lg_attn_mask": "False", "ss_apply_t5_attn_mask": "True", "ss_weighting_scheme": "uniform",
           "ss_logit_mean": "0.0", "ss_logit_std": "1.0", "ss_mode_scale": "1.29"}
    for step in SAVES:
        _save(out / f"chairs-step{step:08d}.safetensors", lora("sd3-kohya", step / STEPS, 8.0),
              _kohya_header(step, **sd3))
    _save(out / "chairs.safetensors", lora("sd3-kohya", 1.0, 8.0), _kohya_header(STEPS, **sd3))
    (out / "config.toml").write_text(
        'pretrained_model_name_or_path = "/models/sd3.5_large.safetensors"\nclip_l = "/models/clip_l.safetensors"\n'
        'clip_g = "/models/clip_g.safetensors"\nt5xxl = "/models/t5xxl_fp16.safetensors"\n'
        'network_module = "networks.lora_sd3"\nnetwork_dim = 16\nnetwork_alpha = 8.0\nlearning_rate = 1e-4\n'
        'optimizer_type = "AdamW8bit"\nmax_train_steps = 500\nt5xxl_max_token_length = 256\n'
        'apply_t5_attn_mask = true\noutput_name = "chairs"\n')
    return out


# ----- ai-toolkit ------------------------------------------------------------------------------------

def _aitk_config(name: str, model: dict, alpha: float, dataset: Path) -> dict:
    """config/examples/train_lora_flux_24gb.yaml's shape (the job config ai-toolkit copies to config.yaml)."""
    return {"job": "extension", "config": {"name": name, "process": [{
        "type": "sd_trainer", "training_folder": "output", "device": "cuda:0", "trigger_word": TRIGGER,
        "network": {"type": "lora", "linear": RANK, "linear_alpha": alpha},
        "save": {"dtype": "float16", "save_every": 250, "max_step_saves_to_keep": 4, "push_to_hub": False},
        "datasets": [{"folder_path": str(dataset), "caption_ext": "txt", "caption_dropout_rate": 0.05,
                      "shuffle_tokens": False, "cache_latents_to_disk": True, "resolution": [512, 768, 1024]}],
        "train": {"batch_size": 1, "steps": STEPS, "gradient_accumulation_steps": 1, "train_unet": True,
                  "train_text_encoder": False, "gradient_checkpointing": True, "noise_scheduler": "flowmatch",
                  "optimizer": "adamw8bit", "lr": 1e-4, "ema_config": {"use_ema": True, "ema_decay": 0.99},
                  "dtype": "bf16"},
        "model": model,
        "sample": {"sampler": "flowmatch", "sample_every": 250, "width": 1024, "height": 1024,
                   "prompts": [f"{TRIGGER} in a living room"], "neg": "", "seed": 42, "walk_seed": True,
                   "guidance_scale": 4, "sample_steps": 20}}]},
        "meta": {"name": "[name]", "version": "1.0"}}


def aitoolkit(runs: Path, dataset: Path, kind: str) -> Path:
    """kind: flux1 (is_flux, FLUX.1-dev), flux2 (arch flux2, FLUX.2-dev), sd3 (is_v3, SD3.5 large,
    linear_alpha 8 != linear 16: ai-toolkit saves these LoRAs in PEFT form with alpha = rank)."""
    model, version, family, alpha = {
        "flux1": ({"name_or_path": "black-forest-labs/FLUX.1-dev", "is_flux": True, "quantize": True},
                  "flux.1", "flux1-diffusers", float(RANK)),
        "flux2": ({"name_or_path": "black-forest-labs/FLUX.2-dev", "arch": "flux2", "quantize": True,
                   "quantize_te": True, "low_vram": True, "model_kwargs": {"match_target_res": False}},
                  "flux2", "flux2-bfl", float(RANK)),
        "sd3": ({"name_or_path": "stabilityai/stable-diffusion-3.5-large", "is_v3": True, "quantize": True},
                "sd_3", "sd3-diffusers", 8.0),
    }[kind]
    name = f"chairs_{kind}"
    out = runs / f"aitk-{kind}"
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump(_aitk_config(name, model, alpha, dataset)))
    for step in SAVES:
        md = {"name": name, "version": "1.0", "training_info": {"step": step, "epoch": 0},
              "ss_base_model_version": version, "ss_output_name": name, "format": "pt",
              "software": {"name": "ai-toolkit", "repo": "https://github.com/ostris/ai-toolkit", "version": "0.7.0"},
              "sshs_model_hash": "0" * 64, "sshs_legacy_hash": "0" * 8,
              "ss_tag_frequency": {f"1_{TRIGGER}": {TRIGGER: 1}}}
        tensors = lora(family, step / STEPS)
        _save(out / f"{name}_{step:09d}.safetensors", tensors, md)
        if step == STEPS:
            _save(out / f"{name}.safetensors", tensors, md)
    (out / "optimizer.pt").write_bytes(b"\x80\x04K\x01.")
    con = sqlite3.connect(out / "loss_log.db")
    con.executescript("CREATE TABLE steps(step INTEGER PRIMARY KEY, wall_time REAL);"
                      "CREATE TABLE metric_keys(key TEXT PRIMARY KEY);"
                      "CREATE TABLE metrics(step INTEGER, key TEXT, value_real REAL, value_text TEXT);")
    con.executemany("INSERT INTO steps VALUES (?, ?)", [(s, STARTED + s) for s, _ in LOSS])
    con.execute("INSERT INTO metric_keys VALUES ('loss')")
    con.executemany("INSERT INTO metrics VALUES (?, 'loss', ?, NULL)", LOSS)
    con.commit()
    con.close()
    return out


# ----- SimpleTuner -----------------------------------------------------------------------------------

def _st_header(step: int, arch: str, family: str, title: str, res: str) -> dict:
    """save_hooks.py _build_modelspec_metadata (title: tracker_run_name; resolution: int(--resolution),
    so `1x1` for 1.0 megapixel) + trained_words; diffusers' lora_adapter_metadata."""
    return {"modelspec.sai_model_spec": "1.0.1", "global_step": str(step), "modelspec.architecture": arch,
            "modelspec.implementation": "diffusers", "modelspec.title": title,
            "modelspec.resolution": res, "trained_words": TRIGGER, "format": "pt",
            "lora_adapter_metadata": {"transformer.r": RANK, "transformer.lora_alpha": RANK,
                                      "transformer.target_modules": sorted({m.split(".", 1)[1].rsplit(".", 1)[0]
                                                                            for m, _, _ in modules(family)}),
                                      "transformer.use_dora": False, "transformer.peft_type": "LORA"}}


def _st_checkpoints(out: Path, arch: str, family: str, title: str, res: str = "1024x1024") -> None:
    for step in SAVES:
        d = out / f"checkpoint-{step}"
        _save(d / "pytorch_lora_weights.safetensors", lora(family, step / STEPS, dtype=np.float32),
              _st_header(step, arch, family, title, res))
        (d / "training_state.json").write_text(json.dumps({"global_step": step, "epoch_step": step, "epoch": 1,
                                                           "exhausted_backends": [], "repeats": {}}))
        for state in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
            (d / state).write_bytes(b"\x80\x04K\x01.")
    _save(out / "pytorch_lora_weights.safetensors", lora(family, 1.0, dtype=np.float32),
          _st_header(STEPS, arch, family, title, res))


def simpletuner_flux(runs: Path) -> Path:
    """FLUX.1-dev with --report_to=tensorboard: accelerate writes every argument to hparams.yml."""
    out = runs / "st-flux"
    _st_checkpoints(out, "flux-dev/lora", "flux1-diffusers", "chairs-flux")
    logs = out / "logs" / "lora-training"
    (logs / "1795800000.25").mkdir(parents=True)
    (logs / "1795800000.25" / "hparams.yml").write_text(yaml.safe_dump({
        "model_family": "flux", "model_flavour": "dev", "model_type": "lora", "lora_type": "standard",
        "pretrained_model_name_or_path": "black-forest-labs/flux.1-dev", "lora_rank": RANK, "lora_alpha": RANK,
        "learning_rate": 1e-4, "optimizer": "adamw_bf16", "lr_scheduler": "constant", "max_train_steps": STEPS,
        "num_train_epochs": 0, "resolution": 1024, "resolution_type": "pixel_area", "seed": 42,
        "flux_guidance_mode": "constant", "flux_guidance_value": 1.0, "flux_guidance_min": 0.0,
        "flux_guidance_max": 4.0, "flux_attention_masked_training": False, "tokenizer_max_length": 512,
        "flow_schedule_shift": 3.0, "instance_prompt": None, "validation_prompt": f"{TRIGGER} in a living room",
        "validation_guidance": 4.0, "validation_num_inference_steps": 20, "validation_resolution": "1024x1024",
        "data_backend_config": "config/multidatabackend.json", "output_dir": "output/st-flux",
        "report_to": "tensorboard", "tracker_project_name": "lora-training", "tracker_run_name": "chairs-flux"}))
    write_scalars(logs / "events.out.tfevents.1795800000.host.3.0", "train_loss", LOSS)
    return out


def simpletuner_flux2(runs: Path) -> Path:
    """FLUX.2 klein-9b with --report_to=simpletuner: training_metrics.json(l), no argument dump."""
    out = runs / "st-flux2"
    _st_checkpoints(out, "flux2-klein-9b/lora", "flux2-diffusers", "chairs-klein", "1x1")
    (out / "training_metrics.json").write_text(json.dumps({
        "schema_version": 1, "run_name": "chairs-klein", "project_name": "lora-training", "status": "completed",
        "created_at": "2026-11-27T10:00:00+00:00", "updated_at": "2026-11-27T11:00:00+00:00",
        "last_step": STEPS, "record_count": len(LOSS), "metric_names": ["learning_rate", "train_loss"],
        "config": {"model_family": "flux2", "model_flavour": "klein-9b", "model_type": "lora",
                   "pretrained_model_name_or_path": "black-forest-labs/FLUX.2-klein-base-9B",
                   "optimizer": "adamw_bf16", "learning_rate": 1e-4, "lr_scheduler": "constant",
                   "lr_warmup_steps": 0, "train_batch_size": 1, "gradient_accumulation_steps": 1,
                   "max_train_steps": STEPS, "num_train_epochs": 0, "seed": 42, "resolution": 1.0,
                   "validation_resolution": "1024x1024"}}, indent=2))
    (out / "training_metrics.jsonl").write_text("".join(
        json.dumps({"metrics": {"learning_rate": 1e-4, "train_loss": v}, "schema_version": 1, "step": s,
                    "timestamp": f"2026-11-27T10:{s // 25:02d}:00+00:00"}) + "\n" for s, v in LOSS))
    return out


def simpletuner_sd3(runs: Path) -> Path:
    """SD3.5 large from the user's config.json kept beside the run (`--` keys, no model path: the
    flavour picks it, no lora_alpha: the rank, no tokenizer_max_length: 154)."""
    out = runs / "st-sd3"
    _st_checkpoints(out, "sd3-large/lora", "sd3-diffusers", "st-sd3", "1x1")
    (out / "config.json").write_text(json.dumps({
        "--model_family": "sd3", "--model_flavour": "large", "--model_type": "lora", "--lora_type": "standard",
        "--lora_rank": RANK, "--learning_rate": "1e-4", "--optimizer": "adamw_bf16", "--max_train_steps": STEPS,
        "--resolution": 1.0, "--resolution_type": "area", "--instance_prompt": TRIGGER,
        "--validation_prompt": f"{TRIGGER} on a table", "--report_to": "none",
        "--output_dir": "output/st-sd3"}, indent=4))
    return out
