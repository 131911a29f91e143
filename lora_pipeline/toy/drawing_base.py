"""The drawing toy base: a tiny SD1.x-architecture model that draws the scenes of toy/scenes.py.

Same classes as Stable Diffusion 1.x (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, a CLIP
BPE tokenizer, DDIMScheduler), so `StableDiffusionPipeline.from_pretrained` loads the folder, but
tiny: 64x64 images, a VAE that downsamples by 4 (16x16x4 latents), a 3-level UNet of 1.5M
parameters and a 2-layer text encoder. Its weights are trained by toy/train_base.py from a seed.

The trained weights ship in the repository (`WEIGHTS`, one fp16 safetensors file of ~3.5 MB with
the recipe and the training record in its metadata): training takes tens of minutes of CPU, every
demo and test would otherwise pay it, and a shipped file gives every machine the same pictures.
`write_drawing_base(out)` turns it into a diffusers folder (seconds); `lora-pipeline toy-base OUT
--drawing --train --weights FILE` rebuilds the weights from scratch with the same recipe.
The tokenizer is trained locally at write time (deterministic, toy/tokenizer.py's canonical layout);
the file records its vocabulary's sha256 and writing refuses a tokenizer that differs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from lora_pipeline.fsutil import sha256_file
from lora_pipeline.toy import scenes

WEIGHTS = Path(__file__).with_name("weights") / "drawing-base.safetensors"
KIND = "lora-pipeline toy drawing base"

UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64, 64),
    # As SD1.x: cross-attention at the higher resolutions (16x16, 8x8), none at the lowest.
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64,
    attention_head_dim=8,
    norm_num_groups=16,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(16, 32, 32),  # 3 blocks: 64x64 pixels -> 16x16 latents
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=scenes.SIZE,
)
TEXT_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=64,
)
# SD1's noise schedule, rescaled to end in pure noise, with v-prediction and "trailing" timesteps
# (Lin et al. 2023, as SD2.1-v models do). With SD1's plain schedule the last noise level keeps 7% of
# the image: this small model learnt to read colours from the starting noise, and every seed painted
# its own colours whatever the prompt said.
SCHEDULER_CONFIG = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, steps_offset=1, clip_sample=False, prediction_type="v_prediction",
    rescale_betas_zero_snr=True, timestep_spacing="trailing",
)


def recipe_id(recipe: dict | None = None) -> str:
    """sha256 over the architecture, the scene grammar and the training recipe (train_base.RECIPE by
    default): the shipped file records the id it was trained under, and a test keeps it equal to the
    code's, so a change of architecture, grammar or recipe without rebuilding the weights fails."""
    from lora_pipeline.toy import train_base

    doc = {"unet": UNET_CONFIG, "vae": VAE_CONFIG, "text": TEXT_CONFIG, "scheduler": SCHEDULER_CONFIG,
           "scenes": {"size": scenes.SIZE, "shapes": scenes.SHAPES, "colours": scenes.COLOURS,
                      "backgrounds": scenes.BACKGROUNDS, "jitter": scenes.BASE_JITTER},
           "train": recipe or train_base.RECIPE}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=list).encode()).hexdigest()[:16]


def _corpus() -> list[str]:
    """The toy tokenizer's corpus plus the scene grammar's words, so every caption word is a token."""
    from lora_pipeline.toy.tokenizer import _corpus as toy_corpus

    words = [*scenes.SHAPES, scenes.CONCEPT, *scenes.COLOURS, *scenes.BACKGROUNDS, "background", "sks_chair"]
    lines = toy_corpus()
    lines += [" ".join(words)] * 50
    lines += [f"a {c} {s} on a {b} background" for s in (*scenes.SHAPES, scenes.CONCEPT)
              for c in scenes.COLOURS for b in scenes.BACKGROUNDS]
    return lines


def train_scene_tokenizer(out_dir: str | Path) -> Path:
    """A CLIP-format tokenizer (toy/tokenizer.py's trainer and layout) over the scene corpus."""
    from lora_pipeline.toy.tokenizer import train_clip_tokenizer

    return train_clip_tokenizer(out_dir, corpus=_corpus())


def vocab_sha256(tokenizer_dir: Path) -> str:
    return hashlib.sha256((Path(tokenizer_dir) / "vocab.json").read_bytes()).hexdigest()


def build_modules(tokenizer, seed: int = 0):
    """(unet, vae, text_encoder) with fresh weights seeded by `seed` (the start of training)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **TEXT_CONFIG))
    return unet, vae, text_encoder


def assemble(unet, vae, text_encoder, tokenizer):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def save_weights(path: Path, unet, vae, text_encoder, meta: dict) -> Path:
    """One fp16 safetensors file: `unet.*`, `vae.*`, `text_encoder.*`, with `meta` as JSON metadata."""
    import torch
    from safetensors.torch import save_file

    from lora_pipeline.fsutil import atomic_path

    tensors = {f"{prefix}.{k}": v.detach().to(torch.float16).contiguous()
               for prefix, m in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))
               for k, v in m.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"lora_pipeline_drawing_base": json.dumps(meta, sort_keys=True)})
    return path


def read_meta(path: Path = WEIGHTS) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get("lora_pipeline_drawing_base", "{}"))


def load_pipeline(weights: Path = WEIGHTS, tokenizer_dir: Path | None = None):
    """The drawing pipeline in memory (float32) from a weights file; the tokenizer is trained into
    `tokenizer_dir` (a temporary folder when None) and must be the one the weights were trained with."""
    from lora_pipeline.quiet import quiet_libraries

    quiet_libraries()
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPTokenizer

    meta = read_meta(weights)
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = train_scene_tokenizer(tokenizer_dir or Path(tmp) / "tokenizer")
        if vocab_sha256(tok_dir) != meta.get("vocab_sha256"):
            raise ValueError(f"{weights}: trained with another tokenizer vocabulary than this code trains")
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    unet, vae, text_encoder = build_modules(tokenizer)
    state = load_file(str(weights))
    for prefix, m in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        own = {k[len(prefix) + 1:]: v.to(torch.float32) for k, v in state.items() if k.startswith(prefix + ".")}
        m.load_state_dict(own, strict=True)
    vae.register_to_config(scaling_factor=float(meta["vae_scaling_factor"]))
    for m in (unet, vae, text_encoder):
        m.eval()
    return assemble(unet, vae, text_encoder, tokenizer)


def write_drawing_base(out_dir: str | Path, weights: Path = WEIGHTS) -> Path:
    """Write the drawing base as a diffusers folder, atomically (temporary folder, then rename)."""
    out = Path(out_dir).resolve()
    if (out / "model_index.json").is_file():
        raise FileExistsError(f"{out}: already holds a model (model_index.json); choose an empty folder")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: folder is not empty")
    if not Path(weights).is_file():
        raise FileNotFoundError(f"{weights}: no drawing-base weights; build them with "
                                "`lora-pipeline toy-base OUT --drawing --train --weights FILE`")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        work = tmp / ".work"
        pipe = load_pipeline(weights, tokenizer_dir=work / "tokenizer")
        pipe.save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(tmp / "tokenizer")
        shutil.copytree(work / "tokenizer", tmp / "tokenizer")  # CLIP's own file format, as shipped
        shutil.rmtree(work)
        meta = read_meta(weights)
        (tmp / "toy_model.json").write_text(json.dumps({
            "kind": KIND, "architecture": "sd1", "family": "sd1", "pipeline": "StableDiffusionPipeline",
            "seed": meta.get("seed"), "recipe_id": meta.get("recipe_id"), "weights_sha256": sha256_file(weights),
            "training": meta.get("training")}, indent=1) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

