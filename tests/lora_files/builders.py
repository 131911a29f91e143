"""Real-format LoRA files on the toy bases, written the way their tools write them.

Every file carries non-zero, random-but-modest weights: each module's weight delta is rescaled so
that its RMS is `REL` x the RMS of the base weight it modifies (the toy renders at 64 px / 2 steps
need about that much to move visibly; a trained real LoRA is usually weaker). The tool-specific
parts are the real ones:

- kohya sd-scripts (`networks.lora`): keys `lora_unet_<module path, dots as underscores>` and
  `lora_te_text_model_...` (SDXL: `lora_te1_text_model_...`, `lora_te2_text_model_...`), each module
  `.lora_down.weight` [r, in(, kh, kw)], `.lora_up.weight` [out, r(, 1, 1)] and a 0-dim `.alpha` in the
  save precision; the modules sd-scripts picks (Linear and 1x1 Conv2d inside `Transformer2DModel`,
  `CLIPAttention`, `CLIPMLP`; with `conv_dim` also 3x3 convs inside `ResnetBlock2D`, `Downsample2D`,
  `Upsample2D`); `ss_*` / `sshs_*` / `modelspec.*` metadata as train_network.py writes it. SDXL UNet
  names are the SGM (original Stability) names that sd-scripts' SDXL UNet carries, from an explicit
  table for the toy SDXL UNet below (the reference derives its mapping from the UNet config instead).
- LyCORIS: written by `lycoris-lora` itself through `lycoris.kohya.create_network` (the sd-scripts
  `--network_module lycoris.kohya` path), `apply_to`, then `save_weights`.
- diffusers/PEFT (builders_peft.py): peft adapters saved with the pipeline class's `save_lora_weights`, with
  `*_lora_adapter_metadata` so the header carries `lora_adapter_metadata`.

transformers 5.24's `CLIPTextModel` has no `text_model.` level (its modules are
`encoder.layers.0...`), while the files people share (written with transformers 4.x) name them
`text_model.encoder.layers.0...`. The builders wrap the text encoder in a module with a `text_model`
attribute where they need the names as shared files carry them.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REL = 0.5  # RMS(delta W) / RMS(W) per module
KOHYA_UNET_BLOCKS = ("Transformer2DModel",)
KOHYA_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
KOHYA_TE_BLOCKS = ("CLIPAttention", "CLIPMLP")
PEFT_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
PEFT_TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


@dataclass(frozen=True)
class Built:
    """One file: what it is and what its writer declares (for the run facts)."""

    name: str
    arch: str  # sd1 | sdxl
    path: Path
    fmt: str
    rank: int | None = None
    alpha: float | None = None
    components: tuple[str, ...] = ()
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# -- shared helpers --------------------------------------------------------------------------------

def fresh_pipe(base: Path):
    """A freshly loaded base pipeline (fp32, CPU); builders that wrap modules need their own."""
    import json as _json

    import diffusers

    from lora_pipeline.quiet import quiet_libraries

    quiet_libraries()
    cls = _json.loads((Path(base) / "model_index.json").read_text())["_class_name"]
    return getattr(diffusers, cls).from_pretrained(str(base), local_files_only=True, use_safetensors=True)


class TextModelWrapper:
    """Factory for a module whose `text_model` child is the given text encoder, so module names
    read `text_model.encoder.layers.N...` as in files written with transformers 4.x."""

    def __new__(cls, te):
        import torch

        if any(n.startswith("text_model.") for n, _ in te.named_modules()):
            return te

        class _W(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.text_model = inner

        return _W(te)


def _rms(t) -> float:
    return float(t.double().pow(2).mean().sqrt())


def _lora_pair(weight, rank: int, scale: float, g, rel: float = REL):
    """(down [r, in(, kh, kw)], up [out, r(, 1, 1)]) with RMS(scale * up @ down) = rel * RMS(weight)."""
    import torch

    out_f = weight.shape[0]
    down = torch.randn((rank, *weight.shape[1:]), generator=g)
    up = torch.randn((out_f, rank), generator=g)
    delta = (up @ down.reshape(rank, -1)) * scale
    c = rel * _rms(weight) / _rms(delta)
    down, up = down * math.sqrt(c), up * math.sqrt(c)
    if weight.dim() == 4:
        up = up.reshape(out_f, rank, 1, 1)
    return down, up


def kohya_modules(root, block_classes: tuple[str, ...], conv3x3: bool) -> list[tuple[str, Any]]:
    """The modules sd-scripts' LoRANetwork wraps: every Linear / 1x1 Conv2d (and, with conv3x3, every
    3x3 Conv2d) inside a module whose class name is in block_classes, in named_modules order."""
    import torch

    out, seen = [], set()
    for name, block in root.named_modules():
        if type(block).__name__ not in block_classes:
            continue
        for child_name, child in block.named_modules():
            full = f"{name}.{child_name}" if child_name else name
            if full in seen:
                continue
            is_linear = isinstance(child, torch.nn.Linear)
            is_conv = isinstance(child, torch.nn.Conv2d)
            if is_linear or (is_conv and child.kernel_size == (1, 1)) or (is_conv and conv3x3):
                seen.add(full)
                out.append((full, child))
    return out


def _kohya_te_name(prefix: str, module_name: str) -> str:
    if not module_name.startswith("text_model."):
        module_name = "text_model." + module_name
    return f"{prefix}_{module_name.replace('.', '_')}"


# The toy SDXL UNet (lora_pipeline/toy/sdxl.py: 2 levels, layers_per_block 1, attention only in the
# second level) in SGM names, written out by hand from the SGM UNetModel layout: input_blocks.0 is
# conv_in, then per level `layers_per_block` (resnet[, transformer]) blocks and a downsampler (`op`)
# except at the last level; middle_block = resnet, transformer, resnet; output_blocks per level
# (reversed) `layers_per_block + 1` (resnet[, transformer]) blocks, the last with an upsampler
# (`conv`) except at the last level.
TOY_SDXL_SGM = {
    "down_blocks.0.resnets.0": "input_blocks.1.0",
    "down_blocks.0.downsamplers.0.conv": "input_blocks.2.0.op",
    "down_blocks.1.resnets.0": "input_blocks.3.0",
    "down_blocks.1.attentions.0": "input_blocks.3.1",
    "mid_block.resnets.0": "middle_block.0",
    "mid_block.attentions.0": "middle_block.1",
    "mid_block.resnets.1": "middle_block.2",
    "up_blocks.0.resnets.0": "output_blocks.0.0",
    "up_blocks.0.attentions.0": "output_blocks.0.1",
    "up_blocks.0.resnets.1": "output_blocks.1.0",
    "up_blocks.0.attentions.1": "output_blocks.1.1",
    "up_blocks.0.upsamplers.0.conv": "output_blocks.1.2.conv",
    "up_blocks.1.resnets.0": "output_blocks.2.0",
    "up_blocks.1.resnets.1": "output_blocks.3.0",
}
SGM_RESNET = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
              "conv_shortcut": "skip_connection"}


def toy_sdxl_sgm_name(name: str) -> str:
    for prefix, sgm in TOY_SDXL_SGM.items():
        if name == prefix:
            return sgm
        if name.startswith(prefix + "."):
            rest = name[len(prefix) + 1:]
            if ".resnets." in prefix:
                rest = SGM_RESNET[rest]
            return f"{sgm}.{rest}"
    raise KeyError(f"no SGM name for {name} in the toy SDXL table")


def _addnet_hashes(tensors: dict, metadata: dict) -> tuple[str, str]:
    """sd-scripts' `sshs_model_hash` / `sshs_legacy_hash`: sha256 of the tensor bytes of the file
    saved with only the `ss_*` metadata, and the legacy hash of bytes 0x100000..0x110000."""
    from safetensors.torch import save

    data = save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    n = struct.unpack("<Q", data[:8])[0]
    model_hash = hashlib.sha256(data[8 + n:]).hexdigest()
    legacy = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy


def ss_metadata(*, arch: str, output_name: str, dim: str, alpha: str, network_module: str = "networks.lora",
                network_args: dict | None = None, save_precision: str = "fp16", te: bool = True,
                comment: str = "None") -> dict[str, str]:
    """The header train_network.py writes (values are strings; JSON values serialised)."""
    xl = arch == "sdxl"
    started = 1_767_225_600.0
    md = {
        "ss_session_id": "1234567890",
        "ss_training_started_at": str(started),
        "ss_output_name": output_name,
        "ss_learning_rate": "0.0001",
        "ss_text_encoder_lr": "5e-05" if te else "0.0",
        "ss_unet_lr": "0.0001",
        "ss_num_train_images": "8",
        "ss_num_reg_images": "0",
        "ss_num_batches_per_epoch": "8",
        "ss_num_epochs": "1",
        "ss_epoch": "1",
        "ss_steps": "8",
        "ss_max_train_steps": "8",
        "ss_batch_size_per_device": "1",
        "ss_total_batch_size": "1",
        "ss_gradient_checkpointing": "False",
        "ss_gradient_accumulation_steps": "1",
        "ss_lr_warmup_steps": "0",
        "ss_lr_scheduler": "constant",
        "ss_network_module": network_module,
        "ss_network_dim": dim,
        "ss_network_alpha": alpha,
        "ss_network_dropout": "None",
        "ss_mixed_precision": "bf16" if save_precision == "bf16" else "fp16",
        "ss_full_fp16": "False",
        "ss_v2": "False",
        "ss_base_model_version": "sdxl_base_v1-0" if xl else "sd_v1",
        "ss_clip_skip": "None",
        "ss_max_token_length": "None",
        "ss_cache_latents": "True",
        "ss_seed": "42",
        "ss_lowram": "False",
        "ss_noise_offset": "None",
        "ss_multires_noise_iterations": "None",
        "ss_multires_noise_discount": "0.3",
        "ss_adaptive_noise_scale": "None",
        "ss_zero_terminal_snr": "False",
        "ss_training_comment": comment,
        "ss_optimizer": "bitsandbytes.optim.adamw.AdamW8bit",
        "ss_max_grad_norm": "1.0",
        "ss_caption_dropout_rate": "0.0",
        "ss_caption_dropout_every_n_epochs": "0",
        "ss_caption_tag_dropout_rate": "0.0",
        "ss_face_crop_aug_range": "None",
        "ss_prior_loss_weight": "1.0",
        "ss_min_snr_gamma": "None",
        "ss_scale_weight_norms": "None",
        "ss_ip_noise_gamma": "None",
        "ss_debiased_estimation": "False",
        "ss_loss_type": "l2",
        "ss_fp8_base": "False",
        "ss_network_train_unet_only": str(not te),
        "ss_network_train_text_encoder_only": "False",
        "ss_resolution": "(1024, 1024)" if xl else "(512, 512)",
        "ss_sd_model_name": "toy-sdxl.safetensors" if xl else "toy-sd1.safetensors",
        "ss_sd_model_hash": "3b3c0a1e",
        "ss_new_sd_model_hash": "0" * 64,
        "ss_datasets": json.dumps([{"is_dreambooth": True, "batch_size_per_device": 1, "num_train_images": 8,
                                    "num_reg_images": 0, "resolution": [512, 512], "enable_bucket": False,
                                    "subsets": [{"img_count": 8, "num_repeats": 1, "image_dir": "products",
                                                 "class_tokens": "sks_chair"}]}]),
        "ss_tag_frequency": json.dumps({"products": {"sks_chair": 8, "a photo": 8}}),
        "ss_training_finished_at": str(started + 600),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": ("stable-diffusion-xl-v1-base/lora" if xl else "stable-diffusion-v1/lora"),
        "modelspec.implementation": ("https://github.com/Stability-AI/generative-models" if xl else "diffusers"),
        "modelspec.title": output_name,
        "modelspec.resolution": "1024x1024" if xl else "512x512",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)),
        "modelspec.prediction_type": "epsilon",
    }
    if network_args:
        md["ss_network_args"] = json.dumps(network_args)
    return md


_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "float": "float32", "fp32": "float32"}


def _save_kohya(path: Path, sd: dict, metadata: dict, save_precision: str) -> None:
    import torch
    from safetensors.torch import save_file

    dt = getattr(torch, _DTYPES[save_precision])
    sd = {k: v.detach().to(dt).contiguous() for k, v in sd.items()}
    metadata = dict(metadata)
    metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = _addnet_hashes(sd, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata=metadata)


def _kohya_state(entries: list[tuple[str, Any]], rank_of, alpha_of, g) -> dict:
    """entries: (kohya module name, base weight); rank_of/alpha_of: name -> int/float."""
    import torch

    sd = {}
    for name, weight in entries:
        r, a = rank_of(name), alpha_of(name)
        down, up = _lora_pair(weight.detach(), r, a / r, g)
        sd[f"{name}.lora_down.weight"] = down
        sd[f"{name}.lora_up.weight"] = up
        sd[f"{name}.alpha"] = torch.tensor(float(a))
    return sd


# -- kohya sd-scripts ------------------------------------------------------------------------------

def _kohya_sd1_entries(pipe, conv3x3: bool) -> list[tuple[str, Any, bool]]:
    entries = []
    unet_blocks = KOHYA_UNET_BLOCKS + (KOHYA_CONV_BLOCKS if conv3x3 else ())
    for name, mod in kohya_modules(pipe.unet, unet_blocks, conv3x3):
        is3 = getattr(mod, "kernel_size", (1, 1)) != (1, 1)
        entries.append((f"lora_unet_{name.replace('.', '_')}", mod.weight, is3))
    for name, mod in kohya_modules(pipe.text_encoder, KOHYA_TE_BLOCKS, False):
        entries.append((_kohya_te_name("lora_te", name), mod.weight, False))
    return entries


def kohya_sd1(base: Path, out: Path, seed: int = 101) -> Built:
    """networks.lora, dim 4, alpha 2 (scale 0.5), UNet + text encoder, save_precision fp16."""
    import torch

    pipe = fresh_pipe(base)
    g = torch.Generator().manual_seed(seed)
    entries = _kohya_sd1_entries(pipe, conv3x3=False)
    sd = _kohya_state([(n, w) for n, w, _ in entries], lambda _n: 4, lambda _n: 2.0, g)
    _save_kohya(out, sd, ss_metadata(arch="sd1", output_name=out.stem, dim="4", alpha="2.0"), "fp16")
    return Built(out.stem, "sd1", out, "kohya", 4, 2.0, ("unet", "text_encoder"),
                 f"{len(entries)} modules, fp16, alpha 2 / rank 4")


def kohya_sd1_block_alpha_dynamic(base: Path, out: Path, seed: int = 102) -> Built:
    """Per-module alphas (attn2 modules alpha 2, others 8) and per-module ranks (2, 3, 4, 6, 8 in turn)
    as resize_lora.py --dynamic_method writes them (ss_network_dim/alpha 'Dynamic'), fp32."""
    import torch

    pipe = fresh_pipe(base)
    g = torch.Generator().manual_seed(seed)
    entries = _kohya_sd1_entries(pipe, conv3x3=False)
    ranks = {n: (2, 3, 4, 6, 8)[i % 5] for i, (n, _w, _c) in enumerate(entries)}
    sd = _kohya_state([(n, w) for n, w, _ in entries], ranks.__getitem__,
                      lambda n: 2.0 if "_attn2_" in n else 8.0, g)
    md = ss_metadata(arch="sd1", output_name=out.stem, dim="Dynamic", alpha="Dynamic", save_precision="float",
                     comment="dynamic resize with sv_fro: 0.9 from 8; None")
    _save_kohya(out, sd, md, "float")
    return Built(out.stem, "sd1", out, "kohya-dynamic", None, None, ("unet", "text_encoder"),
                 "ranks 2/3/4/6/8, attn2 alpha 2 else 8, fp32")


def kohya_sd1_locon(base: Path, out: Path, seed: int = 103) -> Built:
    """networks.lora with conv_dim=4, conv_alpha=1: 3x3 convs of resnets/down/upsamplers get
    down [r, in, 3, 3], up [out, r, 1, 1]; linear/1x1 dim 4 alpha 2; fp16."""
    import torch

    pipe = fresh_pipe(base)
    g = torch.Generator().manual_seed(seed)
    entries = _kohya_sd1_entries(pipe, conv3x3=True)
    is3 = {n: c for n, _w, c in entries}
    sd = _kohya_state([(n, w) for n, w, _ in entries], lambda _n: 4, lambda n: 1.0 if is3[n] else 2.0, g)
    md = ss_metadata(arch="sd1", output_name=out.stem, dim="4", alpha="2.0",
                     network_args={"conv_dim": "4", "conv_alpha": "1"})
    _save_kohya(out, sd, md, "fp16")
    return Built(out.stem, "sd1", out, "kohya-locon", 4, 2.0, ("unet", "text_encoder"),
                 f"{sum(is3.values())} 3x3 conv modules (alpha 1) + {len(entries) - sum(is3.values())} linear/1x1")


def kohya_sdxl(base: Path, out: Path, seed: int = 104) -> Built:
    """SDXL as sd-scripts' sdxl_train_network.py writes it: SGM UNet names (transformer linears and,
    with conv_dim, resnet/down/upsampler convs), lora_te1_text_model_* and lora_te2_text_model_*;
    dim 4 alpha 2, conv_dim 4 conv_alpha 1, save_precision bf16."""
    import torch

    pipe = fresh_pipe(base)
    g = torch.Generator().manual_seed(seed)
    entries: list[tuple[str, Any]] = []
    alphas: dict[str, float] = {}
    for name, mod in kohya_modules(pipe.unet, KOHYA_UNET_BLOCKS + KOHYA_CONV_BLOCKS, True):
        k = f"lora_unet_{toy_sdxl_sgm_name(name).replace('.', '_')}"
        entries.append((k, mod.weight))
        alphas[k] = 1.0 if getattr(mod, "kernel_size", (1, 1)) != (1, 1) else 2.0
    for prefix, te in (("lora_te1", pipe.text_encoder), ("lora_te2", pipe.text_encoder_2)):
        for name, mod in kohya_modules(te, KOHYA_TE_BLOCKS, False):
            k = _kohya_te_name(prefix, name)
            entries.append((k, mod.weight))
            alphas[k] = 2.0
    sd = _kohya_state(entries, lambda _n: 4, alphas.__getitem__, g)
    md = ss_metadata(arch="sdxl", output_name=out.stem, dim="4", alpha="2.0", save_precision="bf16",
                     network_args={"conv_dim": "4", "conv_alpha": "1"})
    _save_kohya(out, sd, md, "bf16")
    return Built(out.stem, "sdxl", out, "kohya-sdxl", 4, 2.0, ("unet", "text_encoder", "text_encoder_2"),
                 f"{len(entries)} modules, SGM UNet names, bf16")


# -- LyCORIS (lycoris-lora 4.1.3, the sd-scripts network module lycoris.kohya) --------------------

def quiet_lycoris() -> None:
    import logging

    from lycoris.logging import logger

    logger.setLevel(logging.ERROR)


def _lyco_delta(m):
    """What the LyCORIS module's forward adds to the weight (scale applied once)."""
    if m.__class__.__name__ == "LoConModule":
        return m.make_weight() * m.scale
    return m.get_weight(m.shape)


# lycoris-lora 4.1.3's built-in preset "full" fails on a diffusers SD UNet ("duplicated lora name:
# lora_unet_time_embedding_linear_1": it lists both the class TimestepEmbedding and the name
# time_embedding.linear_1), so the files are written with a preset file holding the classic SD "full"
# targets (the user-facing way to pass a preset: a toml path).
LYCORIS_SD_PRESET = """enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"]
text_encoder_target_module = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"]
text_encoder_target_name = []
"""


def lycoris_net(base: Path, out: Path, algo: str, seed: int, dora: bool = False, save_precision: str = "fp16",
                dim: int = 4, alpha: float = 2.0, conv_dim: int = 4, conv_alpha: float = 2.0) -> Built:
    """A LyCORIS network (classic SD 'full' targets: Transformer2DModel, ResnetBlock2D, Down/Upsample2D, conv_in,
    conv_out, time_embedding + CLIPAttention/CLIPMLP) created, applied and saved by lycoris-lora, with
    every module's parameters set to random non-zero values (LoHa/LoKr/LoCon init one factor to zero)."""
    import torch
    from lycoris import kohya as lyco_kohya

    quiet_lycoris()
    pipe = fresh_pipe(base)
    arch = "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd1"
    # SDXL: a list of encoders, which LyCORIS (as kohya) names lora_te1_ / lora_te2_.
    te = TextModelWrapper(pipe.text_encoder) if arch == "sd1" else \
        [TextModelWrapper(pipe.text_encoder), TextModelWrapper(pipe.text_encoder_2)]
    out.parent.mkdir(parents=True, exist_ok=True)
    preset = out.parent / "lycoris-sd-full.toml"
    preset.write_text(LYCORIS_SD_PRESET)
    kwargs = {"algo": algo, "preset": str(preset), "conv_dim": str(conv_dim), "conv_alpha": str(conv_alpha)}
    if dora:
        kwargs["dora_wd"] = "True"
    torch.manual_seed(seed)
    net = lyco_kohya.create_network(1.0, dim, alpha, None, te, pipe.unet, **kwargs)
    net.apply_to(te, pipe.unet, apply_text_encoder=True, apply_unet=True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.loras:
            for pname, p in m.named_parameters():
                if pname == "dora_scale":
                    p.mul_(1.0 + 0.1 * torch.randn(p.shape, generator=g).clamp(-3, 3))
                else:
                    p.copy_(torch.randn(p.shape, generator=g))
            w = m.org_module[0].weight
            c = REL * _rms(w) / _rms(_lyco_delta(m))
            # the delta is linear in this one factor
            factor = {"LoConModule": "lora_up.weight", "LohaModule": "hada_w1_a",
                      "LokrModule": "lokr_w2" if getattr(m, "use_w2", False) else "lokr_w2_a"}[type(m).__name__]
            dict(m.named_parameters())[factor].mul_(c)
    md = ss_metadata(arch=arch, output_name=out.stem, dim=str(dim), alpha=str(alpha), network_module="lycoris.kohya",
                     network_args=kwargs, save_precision=save_precision)
    out.parent.mkdir(parents=True, exist_ok=True)
    net.save_weights(str(out), getattr(torch, _DTYPES[save_precision]), md)
    kinds: dict[str, int] = {}
    for m in net.loras:
        key = type(m).__name__
        if key == "LokrModule":
            key += "(w2 full)" if m.use_w2 else "(w2 a@b)"
        kinds[key] = kinds.get(key, 0) + 1
    comps = ("unet", "text_encoder") if arch == "sd1" else ("unet", "text_encoder", "text_encoder_2")
    return Built(out.stem, arch, out, f"lycoris-{algo}{'-dora' if dora else ''}", dim, alpha,
                 comps, f"{len(net.loras)} modules {kinds}, {save_precision}")


def lycoris_locon(base: Path, out: Path) -> Built:
    return lycoris_net(base, out, "locon", seed=111, save_precision="fp16", conv_alpha=1.0)


def lycoris_loha(base: Path, out: Path) -> Built:
    return lycoris_net(base, out, "loha", seed=112, save_precision="float")


def lycoris_lokr(base: Path, out: Path) -> Built:
    return lycoris_net(base, out, "lokr", seed=113, save_precision="bf16")


def lycoris_sdxl_loha(base: Path, out: Path) -> Built:
    """LoHa on the SDXL toy, both encoders (the second keeps transformers' `text_model.` level)."""
    return lycoris_net(base, out, "loha", seed=115, save_precision="fp16")


def lycoris_sdxl_lokr(base: Path, out: Path) -> Built:
    return lycoris_net(base, out, "lokr", seed=116, save_precision="float")


def lycoris_dora(base: Path, out: Path) -> Built:
    return lycoris_net(base, out, "lora", seed=114, dora=True, save_precision="fp16")
