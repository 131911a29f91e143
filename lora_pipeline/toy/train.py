"""A real (small) LoRA trainer: peft LoRA on the UNet, the base's own loss (noise or, for a
v-prediction base, velocity prediction) on VAE latents.

Writes a run folder in our native format (docs/run-format.md) or as kohya sd-scripts does
(`<name>-step<8 digits>.safetensors`, final `<name>.safetensors`, `lora_unet_*` keys with
`lora_down`/`lora_up`/`alpha`, `ss_*` + `modelspec.*` metadata). UNet only: transformers 5.24
refuses peft 0.21 for text-encoder adapters (see pyproject.toml).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from lora_pipeline.dataset.layout import DatasetError, list_dataset
from lora_pipeline.fsutil import atomic_path, atomic_write_json, model_hash
from lora_pipeline.lora import kohya as kohya_format

NATIVE_RUN_FILE = "lora_run.json"
NATIVE_FORMAT = "lora-pipeline-native"
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]


class TrainError(Exception):
    """Training cannot start or failed; one line naming the argument or file."""


@dataclass
class TrainSpec:
    base: Path
    dataset: Path
    out: Path
    trigger: str
    steps: int = 40
    save_every: int = 10
    rank: int = 4
    alpha: float = 4.0
    lr: float = 1e-3
    resolution: int = 64
    format: str = "native"  # native | kohya
    seed: int = 0
    name: str | None = None
    device: str = "cpu"
    dataset_snapshot_id: str | None = None

    def validate(self) -> None:
        for arg, ok in (("--steps", self.steps >= 1), ("--save-every", self.save_every >= 1),
                        ("--rank", self.rank >= 1), ("--alpha", self.alpha > 0), ("--lr", self.lr > 0),
                        ("--resolution", self.resolution >= 8 and self.resolution % 8 == 0),
                        ("--format", self.format in ("native", "kohya"))):
            if not ok:
                raise TrainError(f"{arg}: invalid value")
        if not (self.base / "model_index.json").is_file():
            raise TrainError(f"{self.base}: --base is not a diffusers model folder (no model_index.json)")
        if self.out.exists() and any(self.out.iterdir()):
            raise TrainError(f"{self.out}: --out already exists and is not empty")


@dataclass
class TrainResult:
    out: Path
    checkpoints: list[dict] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def _load_examples(spec: TrainSpec):
    """(pixel tensor in [-1, 1], caption) for every captioned, decodable image."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    try:
        listing = list_dataset(spec.dataset)
    except DatasetError as e:
        raise TrainError(str(e)) from None
    examples = []
    for pair in listing.pairs:
        if not pair.caption:
            continue
        try:
            with Image.open(listing.root / pair.image) as im:
                im = ImageOps.fit(im.convert("RGB"), (spec.resolution, spec.resolution))
                arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
        except (OSError, ValueError, Image.DecompressionBombError):
            continue  # unreadable images are the dataset checks' business, not the trainer's
        for _ in range(pair.repeats):
            examples.append((torch.from_numpy(arr).permute(2, 0, 1), pair.caption))
    if not examples:
        raise TrainError(f"{spec.dataset}: no captioned, readable images to train on")
    return listing, examples


def run_steps(spec: TrainSpec, n_examples: int, run_meta: dict, optimizer, step_loss: Callable,
              save: Callable, progress: Callable[[int, float], None] | None) -> TrainResult:
    """The step loop both toy trainers share: draw an example (one seeded CPU generator, so runs are
    reproducible), `step_loss(i, gen)` -> loss, an AdamW step, the loss log (native format), and every
    `save_every` steps `save(step, epoch, final)` -> checkpoint entries, kept in the run file."""
    import torch

    gen = torch.Generator().manual_seed(spec.seed)
    result = TrainResult(out=spec.out)
    native = spec.format == "native"
    loss_log = (spec.out / "loss.jsonl").open("a") if native else None
    # kohya writes its loss to TensorBoard under --logging_dir (`<ts>/network_train/`), as we do here:
    # `loss/current` per step and `loss/average`, the mean since the start of the epoch.
    events = None if native else (spec.out / "logs" / time.strftime("%Y%m%d%H%M%S") / "network_train"
                                  / f"events.out.tfevents.{int(time.time())}.toy-train")
    pending: list[tuple[int, float, float]] = []
    epoch_losses: list[float] = []
    try:
        for step in range(1, spec.steps + 1):
            i = int(torch.randint(n_examples, (1,), generator=gen))
            loss = step_loss(i, gen)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            result.losses.append(value)
            if loss_log:
                loss_log.write(json.dumps({"step": step, "loss": value if math.isfinite(value) else str(value),
                                           "lr": spec.lr, "time": round(time.time(), 3)}) + "\n")
                loss_log.flush()
            if events is not None:
                epoch_losses.append(value)
                pending.append((step, value, sum(epoch_losses) / len(epoch_losses)))
                if step % max(1, n_examples) == 0:
                    epoch_losses.clear()
            if progress:
                progress(step, value)
            if events is not None and (len(pending) >= 50 or step == spec.steps):
                _flush_events(events, pending)
            if step % spec.save_every == 0 or step == spec.steps:
                result.checkpoints.extend(save(step, step // max(1, n_examples), step == spec.steps))
                if native:
                    run_meta["checkpoints"] = list(result.checkpoints)
                    run_meta["steps_done"] = step
                    atomic_write_json(spec.out / NATIVE_RUN_FILE, run_meta)
    finally:
        if loss_log:
            loss_log.close()
    if native:
        run_meta["finished_at"] = datetime.now(UTC).isoformat()
        atomic_write_json(spec.out / NATIVE_RUN_FILE, run_meta)
    return result


def _flush_events(path: Path, pending: list[tuple[int, float, float]]) -> None:
    from lora_pipeline.training.tensorboard import append_scalars

    now = time.time()
    for step, current, average in pending:
        append_scalars(path, {"loss/current": current, "loss/average": average}, step, now)
    pending.clear()


def train(spec: TrainSpec, progress: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train and write the run folder; `progress(step, loss)` is called after every step."""
    spec.validate()
    from lora_pipeline.quiet import quiet_libraries

    quiet_libraries()
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    listing, examples = _load_examples(spec)
    name = spec.name or spec.out.name
    started = time.time()
    torch.manual_seed(spec.seed)
    device = torch.device(spec.device)
    pipe = StableDiffusionPipeline.from_pretrained(spec.base, safety_checker=None).to(device)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False)
    lora_config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, init_lora_weights="gaussian",
                             target_modules=TARGET_MODULES)
    unet.add_adapter(lora_config)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    v_prediction = noise_scheduler.config.prediction_type == "v_prediction"

    # VAE and text encoder are frozen: encode every example once.
    with torch.no_grad():
        pixels = torch.stack([e[0] for e in examples]).to(device)
        latents_all = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
        ids = tokenizer([e[1] for e in examples], padding="max_length", truncation=True,
                        max_length=tokenizer.model_max_length, return_tensors="pt").input_ids.to(device)
        text_all = text_encoder(ids)[0]

    spec.out.mkdir(parents=True, exist_ok=True)
    base_hash = model_hash(spec.base)
    run_meta = _run_record(spec, name, base_hash, started, listing, len(examples))
    if spec.format == "native":
        atomic_write_json(spec.out / NATIVE_RUN_FILE, run_meta)

    def step_loss(i: int, gen):
        latents = latents_all[i : i + 1]
        noise = torch.randn(latents.shape, generator=gen).to(device)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (1,), generator=gen).to(device)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=text_all[i : i + 1]).sample
        # The base's own objective: noise (epsilon) or velocity (v-prediction bases such as toy-draw).
        target = noise_scheduler.get_velocity(latents, noise, t) if v_prediction else noise
        return torch.nn.functional.mse_loss(pred.float(), target.float())

    def save(step: int, epoch: int, final: bool) -> list[dict]:
        lora_sd = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        return _save_checkpoint(spec, name, step, epoch, lora_sd, lora_config, run_meta, final=final)

    return run_steps(spec, len(examples), run_meta, optimizer, step_loss, save, progress)


def _run_record(spec: TrainSpec, name: str, base_hash: str, started: float, listing, n_examples: int) -> dict:
    return {
        "format": NATIVE_FORMAT, "format_version": 1, "name": name, "trainer": "lora-pipeline toy-train",
        "base_model": {"name": spec.base.name, "path": str(spec.base.resolve()), "sha256": base_hash,
                       "architecture": "sd1"},
        "dataset": {"path": str(listing.root), "snapshot_id": spec.dataset_snapshot_id,
                    "images": len(listing.pairs), "examples_with_repeats": n_examples,
                    "tag_frequency": kohya_format.tag_frequency([p.caption for p in listing.pairs if p.caption])},
        "trigger": spec.trigger, "network": {"type": "lora", "rank": spec.rank, "alpha": spec.alpha,
                                             "target_modules": TARGET_MODULES, "text_encoder": False},
        "learning_rate": spec.lr, "optimizer": "AdamW", "steps": spec.steps, "save_every": spec.save_every,
        "resolution": spec.resolution, "batch_size": 1, "seed": spec.seed,
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(), "finished_at": None,
        "loss_log": "loss.jsonl", "checkpoints": [],
    }


def _save_checkpoint(spec: TrainSpec, name: str, step: int, epoch: int, lora_sd: dict, lora_config,
                     run_meta: dict, final: bool) -> list[dict]:
    """Write one checkpoint (two files for kohya's final step), atomically."""
    from diffusers import StableDiffusionPipeline

    if spec.format == "kohya":
        names = [f"{name}-step{step:08d}.safetensors"] if step % spec.save_every == 0 else []
        if final:
            names.append(f"{name}.safetensors")
        out = []
        for fname in names:
            with atomic_path(spec.out / fname) as tmp:
                kohya_format.save(tmp, lora_sd, spec.alpha, kohya_format.metadata(
                    run_meta, step=step, epoch=epoch, output_name=name))
            out.append({"step": step, "epoch": epoch, "file": fname})
        return out
    rel = f"checkpoints/{name}-step{step:08d}.safetensors"
    dest = spec.out / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = spec.out / f".saving-{step}"
    try:
        StableDiffusionPipeline.save_lora_weights(
            tmp_dir, unet_lora_layers=lora_sd, weight_name=dest.name,
            unet_lora_adapter_metadata=lora_config.to_dict(),
        )
        (tmp_dir / dest.name).replace(dest)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return [{"step": step, "epoch": epoch, "file": rel}]
