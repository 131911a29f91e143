"""A tiny Stable-Diffusion-1.x-architecture model from random weights, for tests and the demo.

UNet, VAE, CLIP text encoder, scheduler and a CLIP-format BPE tokenizer (vocab.json + merges.txt,
model_max_length 77) trained locally with `tokenizers`. Saved as a diffusers folder that
`StableDiffusionPipeline.from_pretrained` loads. Same seed -> same weights, byte for byte.
A 64x64 render with a few steps takes a fraction of a second on CPU.

`family` picks the architecture: sd1 (this module), sdxl (toy/sdxl.py), sd3 (toy/sd3.py), flux1
(toy/flux1.py), flux2 (toy/flux2.py). Every family is written the same way, with a toy_model.json
marker naming it.
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


# family -> (builder "module:function" or None for sd1, pipeline class, {tokenizer subfolder: the
# folder under the work dir it was trained into}). The trained folders replace what save_pretrained
# writes: CLIP ships in CLIP's file format (vocab.json + merges.txt) as real folders do, and a re-saved
# T5/Qwen tokenizer would carry loading flags (local_files_only) into its config.
FAMILIES: dict[str, tuple[str | None, str, dict[str, str]]] = {
    "sd1": (None, "StableDiffusionPipeline", {"tokenizer": "clip"}),
    "sdxl": ("lora_pipeline.toy.sdxl:build_toy_sdxl_pipeline", "StableDiffusionXLPipeline",
             {"tokenizer": "clip", "tokenizer_2": "clip"}),
    "sd3": ("lora_pipeline.toy.sd3:build_toy_sd3_pipeline", "StableDiffusion3Pipeline",
            {"tokenizer": "clip", "tokenizer_2": "clip", "tokenizer_3": "t5"}),
    "flux1": ("lora_pipeline.toy.flux1:build_toy_flux1_pipeline", "FluxPipeline",
              {"tokenizer": "clip", "tokenizer_2": "t5"}),
    "flux2": ("lora_pipeline.toy.flux2:build_toy_flux2_pipeline", "Flux2KleinPipeline",
              {"tokenizer": "qwen"}),
}


def resolve_family(family: str | None = None, sdxl: bool = False) -> str:
    """The family to build: `family`, else the legacy `sdxl` flag (sdxl=True is family="sdxl")."""
    if family is None:
        return "sdxl" if sdxl else "sd1"
    if family not in FAMILIES:
        raise ValueError(f"unknown toy model family {family!r}; choose one of {', '.join(FAMILIES)}")
    if sdxl and family != "sdxl":
        raise ValueError(f"sdxl=True contradicts family={family!r}")
    return family


def build_toy_pipeline(seed: int = 0, sdxl: bool = False, family: str | None = None):
    """Build the toy pipeline in memory (random weights seeded by `seed`)."""
    family = resolve_family(family, sdxl)
    with tempfile.TemporaryDirectory() as tmp:
        return _build(seed, family, train_clip_tokenizer(Path(tmp) / "clip"), Path(tmp))


def _build(seed: int, family: str, tokenizer_dir: Path, work_dir: Path):
    """`work_dir`: where a family trains its other tokenizers (work_dir/t5, work_dir/qwen)."""
    import importlib

    from lora_pipeline.quiet import quiet_libraries

    quiet_libraries()
    builder = FAMILIES[family][0]
    if builder is not None:
        module, func = builder.split(":")
        build = getattr(importlib.import_module(module), func)
        # The SDXL builder predates the families that train tokenizers of their own (T5, Qwen).
        return build(seed, tokenizer_dir) if family == "sdxl" else build(seed, tokenizer_dir, work_dir)
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


def write_toy_base(out_dir: str | Path, seed: int = 0, sdxl: bool = False, family: str | None = None) -> Path:
    """Write the toy model as a diffusers folder, atomically (temporary folder, then rename).

    `family`: sd1 | sdxl | sd3 | flux1 | flux2; None keeps the legacy `sdxl` flag's choice.
    """
    family = resolve_family(family, sdxl)
    out = Path(out_dir).resolve()
    if (out / "model_index.json").is_file():
        raise FileExistsError(f"{out}: already holds a model (model_index.json); choose an empty folder")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: folder is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        work = tmp / ".work"
        tok_dir = train_clip_tokenizer(work / "clip")
        pipe = _build(seed, family, tok_dir, work)
        pipe.save_pretrained(tmp, safe_serialization=True)
        for sub, src in FAMILIES[family][2].items():
            shutil.rmtree(tmp / sub)
            shutil.copytree(work / src, tmp / sub)
        shutil.rmtree(work)
        (tmp / "toy_model.json").write_text(
            json.dumps({"kind": "lora-pipeline toy base", "architecture": family, "family": family,
                        "pipeline": FAMILIES[family][1], "seed": seed}, indent=1) + "\n"
        )
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
