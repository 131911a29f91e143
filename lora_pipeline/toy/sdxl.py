"""A tiny Stable-Diffusion-XL-architecture pipeline from random weights, for tests.

Like the real SDXL: two CLIP text encoders (the second a `CLIPTextModelWithProjection` whose pooled
projection feeds the UNet), two tokenizers (both the toy CLIP tokenizer, 77 positions), a UNet with
`addition_embed_type="text_time"` (pooled text + 6 micro-conditioning time ids) whose cross-attention
width is the two encoders' hidden sizes concatenated (32 + 32 = 64, so an SD1-toy LoRA does not fit).
A 64x64 render with a few steps takes a fraction of a second on CPU.
"""

from __future__ import annotations

from pathlib import Path

TIME_EMBED_DIM = 8
TEXT_HIDDEN = 32
TEXT2_PROJECTION = 32

SDXL_UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=TIME_EMBED_DIM,
    transformer_layers_per_block=(1, 2),
    projection_class_embeddings_input_dim=TIME_EMBED_DIM * 6 + TEXT2_PROJECTION,
    cross_attention_dim=TEXT_HIDDEN * 2,
    norm_num_groups=8,
)


def build_toy_sdxl_pipeline(seed: int, tokenizer_dir: Path):
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from lora_pipeline.toy.base import SCHEDULER_CONFIG, TEXT_CONFIG, VAE_CONFIG

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    tokenizer_2 = CLIPTokenizer.from_pretrained(tokenizer_dir)
    text_kw = dict(TEXT_CONFIG, hidden_size=TEXT_HIDDEN, projection_dim=TEXT2_PROJECTION)
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**ids, **text_kw))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**ids, **text_kw))
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
    )
