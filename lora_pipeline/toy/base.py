"""A tiny Stable-Diffusion-1.x-architecture model from random weights, for tests and the demo.

UNet, VAE, CLIP text encoder, scheduler and a CLIP-format BPE tokenizer (vocab.json + merges.txt,
model_max_length 77) trained locally with `tokenizers`. Saved as a diffusers folder that
`StableDiffusionPipeline.from_pretrained` loads. Same seed -> same weights, byte for byte.
A 64x64 render with a few steps takes a fraction of a second on CPU.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from lora_pipeline.toy.tokenizer import train_clip_tokenizer

# Small enough to be fast on CPU, shaped like SD1.x: cross-attention in the down/up blocks, VAE
# downsampling by 8 (4 blocks), CLIP text encoder with 77 positions.
UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(8, 8, 8, 8),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=4,
    sample_size=64,
)
TEXT_CONFIG = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=32,
)
SCHEDULER_CONFIG = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, steps_offset=1, clip_sample=False,
)


def build_toy_pipeline(seed: int = 0, sdxl: bool = False):
    """Build the toy pipeline in memory (random weights seeded by `seed`)."""
    with tempfile.TemporaryDirectory() as tmp:
        return _build(seed, sdxl, train_clip_tokenizer(Path(tmp) / "tokenizer"))


def _build(seed: int, sdxl: bool, tokenizer_dir: Path):
    from lora_pipeline.quiet import quiet_libraries

    quiet_libraries()
    if sdxl:
        from lora_pipeline.toy.sdxl import build_toy_sdxl_pipeline

        return build_toy_sdxl_pipeline(seed, tokenizer_dir)
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **TEXT_CONFIG,
        )
    )
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def write_toy_base(out_dir: str | Path, seed: int = 0, sdxl: bool = False) -> Path:
    """Write the toy model as a diffusers folder, atomically (temporary folder, then rename)."""
    out = Path(out_dir).resolve()
    if (out / "model_index.json").is_file():
        raise FileExistsError(f"{out}: already holds a model (model_index.json); choose an empty folder")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: folder is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tok_dir = train_clip_tokenizer(tmp / ".tokenizer-src")
        pipe = _build(seed, sdxl, tok_dir)
        pipe.save_pretrained(tmp, safe_serialization=True)
        # Ship the CLIP file format (vocab.json + merges.txt), as real SD folders do, for every
        # tokenizer of the pipeline (SDXL has two).
        for sub in ("tokenizer", "tokenizer_2"):
            if (tmp / sub).is_dir():
                shutil.rmtree(tmp / sub)
                shutil.copytree(tok_dir, tmp / sub)
        shutil.rmtree(tok_dir)
        (tmp / "toy_model.json").write_text(
            json.dumps({"kind": "lora-pipeline toy base", "architecture": "sdxl" if sdxl else "sd1",
                        "seed": seed}, indent=1) + "\n"
        )
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
