"""Parts the toy SD3 and FLUX.1 pipelines share: CLIP and T5 text encoders, the 16-channel VAE, the
flow-matching scheduler. Sizes are tiny; the shapes of the interfaces are the real ones (16 latent
channels, no quant convs, a T5 width that can hold the two CLIP widths side by side as SD3 pads them).
"""

from __future__ import annotations

from lora_pipeline.toy.base import TEXT_CONFIG

# T5 v1.1 (gated-GELU, no biases, relative position buckets) as SD3 and FLUX.1 use it, narrowed.
# d_model 64 = 2 x the toy CLIP width: SD3 concatenates both CLIP outputs (32 + 32) and pads them to T5's
# width; a T5 narrower than that would silently crop them.
T5_CONFIG = dict(
    d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=0, num_heads=4,
    relative_attention_num_buckets=32, relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False,
    tie_word_embeddings=False,
)
# The real VAEs' latent normalisation: SD3 (scaling 1.5305, shift 0.0609), FLUX.1 (0.3611, 0.1159).
VAE16_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(8, 8, 8, 8),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=16,
    layers_per_block=1,
    norm_num_groups=4,
    sample_size=64,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
# FLUX's dynamic shifting by image sequence length (mu); SD3 uses a fixed shift of 3.
FLUX_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096,
)
SD3_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0)


def clip_text_encoder(tokenizer, seed: int, with_projection: bool):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **TEXT_CONFIG,
    )
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def t5_encoder(tokenizer, seed: int):
    import torch
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id, **T5_CONFIG,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config)


def vae16(seed: int, scaling_factor: float, shift_factor: float):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**VAE16_CONFIG, scaling_factor=scaling_factor, shift_factor=shift_factor)
