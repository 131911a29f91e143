"""A tiny FLUX.1-architecture pipeline (the dev-style, guidance-distilled variant) from random weights.

Like the real FLUX.1-dev: a CLIP text encoder whose pooled output feeds `pooled_projection_dim`, a
T5 encoder for the token sequence (`joint_attention_dim`), a `FluxTransformer2DModel` with one
double-stream and one single-stream block, `guidance_embeds=True` (guidance is an input of the
model, not classifier-free), in_channels 16 x 4 (the pipeline packs 2x2 latent patches), 3-axis RoPE,
a 16-channel VAE with FLUX's scaling/shift and a flow-matching Euler scheduler with dynamic shift.
Tokenizers: the toy CLIP BPE (77 positions) and the toy T5 Unigram (512 positions, FLUX's
max_sequence_length cap). A 64x64 render in 2 steps takes well under a second on CPU.
"""

from __future__ import annotations

from pathlib import Path

from lora_pipeline.toy.base import TEXT_CONFIG
from lora_pipeline.toy.flow_parts import T5_CONFIG

FLUX1_TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=64,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=T5_CONFIG["d_model"],
    pooled_projection_dim=TEXT_CONFIG["hidden_size"],  # CLIPTextModel's pooler output
    guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim, as (16, 56, 56) sums to 128
)


def build_toy_flux1_pipeline(seed: int, clip_dir: Path, work_dir: Path):
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTokenizer, T5TokenizerFast

    from lora_pipeline.toy.flow_parts import FLUX_SCHEDULER_CONFIG, clip_text_encoder, t5_encoder, vae16
    from lora_pipeline.toy.t5_tokenizer import train_t5_tokenizer

    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    tokenizer_2 = T5TokenizerFast.from_pretrained(train_t5_tokenizer(work_dir / "t5"))
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**FLUX1_TRANSFORMER_CONFIG)
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG),
        vae=vae16(seed + 1, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=clip_text_encoder(tokenizer, seed + 2, with_projection=False),
        tokenizer=tokenizer,
        text_encoder_2=t5_encoder(tokenizer_2, seed + 3),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
