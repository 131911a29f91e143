"""A tiny Stable-Diffusion-3-architecture pipeline from random weights, for tests.

Like the real SD3(.5): two CLIP text encoders with projection (penultimate hidden states side by
side, pooled projections concatenated into `pooled_projection_dim`), a T5 encoder whose width the
CLIP states are padded to (`joint_attention_dim`), an MMDiT `SD3Transformer2DModel` (2x2 patches,
QK RMS-norm as in 3.5, the last block context-pre-only), a 16-channel VAE and a flow-matching Euler
scheduler. CLIP tokenizers: the toy CLIP BPE (77 positions); T5: the toy Unigram (512 positions;
the pipeline's default max_sequence_length is 256). A 64x64 render in 2 steps takes well under a
second on CPU.
"""

from __future__ import annotations

from pathlib import Path

from lora_pipeline.toy.base import TEXT_CONFIG
from lora_pipeline.toy.flow_parts import T5_CONFIG

SD3_TRANSFORMER_CONFIG = dict(
    sample_size=8,  # 64 px / 8: the pipeline's default size
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=2,
    attention_head_dim=8,
    num_attention_heads=4,
    joint_attention_dim=T5_CONFIG["d_model"],
    caption_projection_dim=32,
    pooled_projection_dim=2 * TEXT_CONFIG["projection_dim"],
    pos_embed_max_size=32,  # positional table for up to 32 patches a side: 512 px
    qk_norm="rms_norm",
)


def build_toy_sd3_pipeline(seed: int, clip_dir: Path, work_dir: Path):
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTokenizer, T5TokenizerFast

    from lora_pipeline.toy.flow_parts import SD3_SCHEDULER_CONFIG, clip_text_encoder, t5_encoder, vae16
    from lora_pipeline.toy.t5_tokenizer import train_t5_tokenizer

    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    tokenizer_2 = CLIPTokenizer.from_pretrained(clip_dir)
    tokenizer_3 = T5TokenizerFast.from_pretrained(train_t5_tokenizer(work_dir / "t5"))
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(**SD3_TRANSFORMER_CONFIG)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG),
        vae=vae16(seed + 1, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=clip_text_encoder(tokenizer, seed + 2, with_projection=True),
        tokenizer=tokenizer,
        text_encoder_2=clip_text_encoder(tokenizer_2, seed + 3, with_projection=True),
        tokenizer_2=tokenizer_2,
        text_encoder_3=t5_encoder(tokenizer_3, seed + 4),
        tokenizer_3=tokenizer_3,
    )
