"""A tiny FLUX.2-architecture pipeline from random weights: `Flux2KleinPipeline`, for tests.

Why Klein and not `Flux2Pipeline`: diffusers 0.42.1's `Flux2Pipeline` (FLUX.2-dev) encodes prompts
with `Mistral3ForConditionalGeneration` (a vision tower and projector around a Mistral LM) through a
Pixtral `AutoProcessor`, with a long system message; a tiny random build of that is a multimodal
model plus an image processor for nothing. `Flux2KleinPipeline` uses a plain `Qwen3ForCausalLM` and
`Qwen2TokenizerFast`, with the same `Flux2Transformer2DModel`, `AutoencoderKLFlux2` and scheduler,
and the same `Flux2LoraLoaderMixin`: the transformer, where LoRAs go, is identical in kind.

How Klein encodes a prompt (`_get_qwen3_prompt_embeds`): the chat template (one user turn,
generation prompt, thinking disabled), padded and truncated to max_sequence_length=512 tokens, then
the hidden states of layers (9, 18, 27) stacked on the feature axis. So the toy Qwen3 has 27 layers
(narrow ones) and the transformer's `joint_attention_dim` is 3 x its width. `is_distilled=False`
(the Klein *base* variant that LoRAs are trained on): guidance_scale > 1 runs classifier-free
guidance against the empty prompt; the transformer has no guidance embedding, as Klein's.
VAE: 32 latent channels, 2x2 patchified to the transformer's 128 input channels and normalised by
the VAE's BatchNorm statistics. A 64x64 render in 2 steps takes about a second on CPU.
"""

from __future__ import annotations

from pathlib import Path

QWEN_HIDDEN = 32
QWEN3_CONFIG = dict(
    hidden_size=QWEN_HIDDEN,
    intermediate_size=64,
    num_hidden_layers=27,  # the pipeline reads hidden_states[9], [18] and [27]
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    max_position_embeddings=512,
    rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
    tie_word_embeddings=True,
)
FLUX2_TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=128,  # 32 latent channels x 2x2 patch
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=3 * QWEN_HIDDEN,
    timestep_guidance_channels=256,
    mlp_ratio=3.0,
    axes_dims_rope=(4, 4, 4, 4),  # (T, H, W, L) axes, summing to attention_head_dim
    rope_theta=2000,
    guidance_embeds=False,
)
FLUX2_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(8, 8, 8, 8),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=32,
    layers_per_block=1,
    norm_num_groups=4,
    sample_size=64,
)
FLUX2_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential",
)


def build_toy_flux2_pipeline(seed: int, clip_dir: Path, work_dir: Path):
    """`clip_dir` is unused (no CLIP in FLUX.2); kept for the shared builder signature."""
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen2TokenizerFast, Qwen3Config, Qwen3ForCausalLM

    from lora_pipeline.toy.qwen_tokenizer import train_qwen_tokenizer

    tokenizer = Qwen2TokenizerFast.from_pretrained(train_qwen_tokenizer(work_dir / "qwen"))
    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(**FLUX2_TRANSFORMER_CONFIG)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLFlux2(**FLUX2_VAE_CONFIG)
    torch.manual_seed(seed + 2)
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, **QWEN3_CONFIG,
    ))
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX2_SCHEDULER_CONFIG), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, is_distilled=False,
    )
