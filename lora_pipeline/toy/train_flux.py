"""A real (small) FLUX.1 LoRA trainer: peft LoRA on the transformer, rectified-flow loss.

Same spec, dataset loading and native run folder as lora_pipeline/toy/train.py (docs/run-format.md),
with `base_model.architecture: "flux1"` and checkpoints written by `FluxPipeline.save_lora_weights`
(`transformer.*` keys, `lora_adapter_metadata` with `transformer.`-prefixed LoraConfig fields).
Native format only: kohya's FLUX layout is not something our tools need to produce.

The objective follows FluxPipeline's sampling conventions: the scheduler's sigma s in [0, 1] is the
noise fraction, x_s = (1 - s) * x0 + s * noise, the pipeline passes `timestep / 1000` = s to the
transformer, and the Euler step moves along the velocity noise - x0, which is the target here.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable

from lora_pipeline.fsutil import atomic_write_json, model_hash
from lora_pipeline.toy.train import (
    NATIVE_RUN_FILE,
    TARGET_MODULES,
    TrainError,
    TrainResult,
    TrainSpec,
    _load_examples,
    _run_record,
    run_steps,
)

GUIDANCE = 3.5  # what FLUX.1-dev trainers feed a guidance-distilled transformer
MAX_SEQUENCE_LENGTH = 77  # captions are short; a shorter T5 sequence keeps CPU steps fast


def train_flux1(spec: TrainSpec, progress: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train and write the native run folder; `progress(step, loss)` is called after every step."""
    if spec.format != "native":
        raise TrainError("--format: the FLUX.1 trainer writes the native format only")
    spec.validate()
    from lora_pipeline.quiet import quiet_libraries

    quiet_libraries()
    import torch
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    listing, examples = _load_examples(spec)
    name = spec.name or spec.out.name
    started = time.time()
    torch.manual_seed(spec.seed)
    device = torch.device(spec.device)
    pipe = FluxPipeline.from_pretrained(spec.base).to(device)
    transformer, vae = pipe.transformer, pipe.vae
    for m in (transformer, vae, pipe.text_encoder, pipe.text_encoder_2):
        m.requires_grad_(False)
    lora_config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, init_lora_weights="gaussian",
                             target_modules=TARGET_MODULES)
    transformer.add_adapter(lora_config)
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr)

    # VAE and text encoders are frozen: encode every example once, packed as FluxPipeline packs.
    with torch.no_grad():
        pixels = torch.stack([e[0] for e in examples]).to(device)
        latents = vae.encode(pixels).latent_dist.mean
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        n, c, h, w = latents.shape
        if h % 2 or w % 2:
            raise TrainError(f"--resolution: {spec.resolution} gives an odd latent size ({h}x{w})")
        packed_all = FluxPipeline._pack_latents(latents, n, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, device, latents.dtype)
        prompt_embeds, pooled_all, text_ids = pipe.encode_prompt(
            prompt=[e[1] for e in examples], prompt_2=None, device=device,
            max_sequence_length=MAX_SEQUENCE_LENGTH)
    guidance = torch.full((1,), GUIDANCE, device=device) if transformer.config.guidance_embeds else None

    spec.out.mkdir(parents=True, exist_ok=True)
    run_meta = _run_record(spec, name, model_hash(spec.base), started, listing, len(examples))
    run_meta["base_model"]["architecture"] = "flux1"
    run_meta["trainer"] = "lora-pipeline toy-train (flux1)"
    atomic_write_json(spec.out / NATIVE_RUN_FILE, run_meta)
    transformer.train()

    def step_loss(i: int, gen):
        x0 = packed_all[i : i + 1]
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.rand((1,), generator=gen).to(device)
        x_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
        pred = transformer(hidden_states=x_t, timestep=t, guidance=guidance, pooled_projections=pooled_all[i : i + 1],
                           encoder_hidden_states=prompt_embeds[i : i + 1], txt_ids=text_ids, img_ids=img_ids,
                           return_dict=False)[0]
        return torch.nn.functional.mse_loss(pred.float(), (noise - x0).float())

    def save(step: int, epoch: int, _final: bool) -> list[dict]:
        return [_save(spec, name, step, epoch, get_peft_model_state_dict(transformer), lora_config)]

    return run_steps(spec, len(examples), run_meta, optimizer, step_loss, save, progress)


def _save(spec: TrainSpec, name: str, step: int, epoch: int, lora_sd: dict, lora_config) -> dict:
    """One checkpoint, written into a temporary folder and renamed into place."""
    from diffusers import FluxPipeline

    rel = f"checkpoints/{name}-step{step:08d}.safetensors"
    dest = spec.out / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = spec.out / f".saving-{step}"
    try:
        FluxPipeline.save_lora_weights(tmp_dir, transformer_lora_layers=lora_sd, weight_name=dest.name,
                                       transformer_lora_adapter_metadata=lora_config.to_dict())
        (tmp_dir / dest.name).replace(dest)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return {"step": step, "epoch": epoch, "file": rel}
