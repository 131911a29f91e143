"""Real-format LoRA files, continued (builders.py has the shared helpers, kohya and LyCORIS):
diffusers/PEFT files saved with the pipeline class's `save_lora_weights` (the header carries
`lora_adapter_metadata`), our native format, copies whose safetensors header length starts with the
bytes a magic sniffer mistakes for a pickle or zip, and real pickles renamed `.safetensors`."""

from __future__ import annotations

import struct
from pathlib import Path

from tests.lora_files.builders import (
    PEFT_TE_TARGETS,
    PEFT_UNET_TARGETS,
    REL,
    Built,
    TextModelWrapper,
    _rms,
    fresh_pipe,
)

# -- diffusers / PEFT -------------------------------------------------------------------------------

def _randomise_peft(model, g, rel: float = REL) -> int:
    """Set every peft LoRA layer's A and B to random values with RMS(scaling * B @ A) = rel * RMS(W)."""
    import torch
    from peft.tuners.lora import LoraLayer

    n = 0
    with torch.no_grad():
        for mod in model.modules():
            if not isinstance(mod, LoraLayer):
                continue
            for adapter in mod.lora_A:
                a, b = mod.lora_A[adapter].weight, mod.lora_B[adapter].weight
                w = mod.get_base_layer().weight
                a.copy_(torch.randn(a.shape, generator=g))
                b.copy_(torch.randn(b.shape, generator=g))
                delta = (b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)) * mod.scaling[adapter]
                b.mul_(rel * _rms(w) / _rms(delta))
                n += 1
    return n


def _te_lora_layers(te, cfg, g, text_model_names: bool) -> dict:
    """peft adapter on a text encoder via inject_adapter_in_model (transformers 5.24 refuses peft 0.21
    for text_encoder.add_adapter), state dict as get_peft_model_state_dict + the diffusers training
    scripts' convert_state_dict_to_diffusers write it."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    model = TextModelWrapper(te) if text_model_names else te
    inject_adapter_in_model(cfg, model)
    _randomise_peft(model, g)
    sd = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
    return {k: v.detach().contiguous() for k, v in sd.items()}


def _unet_lora_layers(unet, cfg, g) -> dict:
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet.add_adapter(cfg)
    _randomise_peft(unet, g)
    sd = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    return {k: v.detach().contiguous() for k, v in sd.items()}


def _save_diffusers(pipe_cls, out: Path, **kw) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".save-{out.stem}"
    pipe_cls.save_lora_weights(tmp, weight_name=out.name, **kw)
    (tmp / out.name).replace(out)
    tmp.rmdir()


def peft_sd1(base: Path, out: Path, text_model_names: bool = True, seed: int = 121) -> Built:
    """diffusers/PEFT: LoraConfig(r=4, lora_alpha=2) on the UNet (attention + ff) and the text encoder,
    saved with StableDiffusionPipeline.save_lora_weights + adapter metadata. text_model_names: the
    text-encoder keys as files written with transformers 4.x carry them
    (`text_encoder.text_model.encoder...`), else as this stack writes them (`text_encoder.encoder...`)."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig

    pipe = fresh_pipe(base)
    g = torch.Generator().manual_seed(seed)
    ucfg = LoraConfig(r=4, lora_alpha=2, init_lora_weights=False, target_modules=PEFT_UNET_TARGETS)
    tcfg = LoraConfig(r=4, lora_alpha=2, init_lora_weights=False, target_modules=PEFT_TE_TARGETS)
    unet_sd = _unet_lora_layers(pipe.unet, ucfg, g)
    te_sd = _te_lora_layers(pipe.text_encoder, tcfg, g, text_model_names)
    _save_diffusers(StableDiffusionPipeline, out, unet_lora_layers=unet_sd, text_encoder_lora_layers=te_sd,
                    unet_lora_adapter_metadata=ucfg.to_dict(), text_encoder_lora_adapter_metadata=tcfg.to_dict())
    return Built(out.stem, "sd1", out, "peft" if text_model_names else "peft-tf5names", 4, 2.0,
                 ("unet", "text_encoder"), f"{len(unet_sd) // 2} unet + {len(te_sd) // 2} te modules, r 4 alpha 2")


def peft_sd1_tf5(base: Path, out: Path) -> Built:
    return peft_sd1(base, out, text_model_names=False, seed=122)


def peft_sdxl(base: Path, out: Path, seed: int = 123) -> Built:
    """As peft_sd1 on the SDXL toy: UNet + text_encoder + text_encoder_2, StableDiffusionXLPipeline."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig

    pipe = fresh_pipe(base)
    g = torch.Generator().manual_seed(seed)
    ucfg = LoraConfig(r=4, lora_alpha=2, init_lora_weights=False, target_modules=PEFT_UNET_TARGETS)
    tcfg = LoraConfig(r=4, lora_alpha=2, init_lora_weights=False, target_modules=PEFT_TE_TARGETS)
    unet_sd = _unet_lora_layers(pipe.unet, ucfg, g)
    te1 = _te_lora_layers(pipe.text_encoder, tcfg, g, True)
    te2 = _te_lora_layers(pipe.text_encoder_2, tcfg, g, True)
    _save_diffusers(StableDiffusionXLPipeline, out, unet_lora_layers=unet_sd, text_encoder_lora_layers=te1,
                    text_encoder_2_lora_layers=te2, unet_lora_adapter_metadata=ucfg.to_dict(),
                    text_encoder_lora_adapter_metadata=tcfg.to_dict(),
                    text_encoder_2_lora_adapter_metadata=tcfg.to_dict())
    return Built(out.stem, "sdxl", out, "peft", 4, 2.0, ("unet", "text_encoder", "text_encoder_2"),
                 f"{len(unet_sd) // 2} unet + {len(te1) // 2} te1 + {len(te2) // 2} te2 modules")


def peft_patterns_sd1(base: Path, out: Path, seed: int = 124) -> Built:
    """UNet-only PEFT with rank_pattern / alpha_pattern (per-module rank and alpha in the metadata),
    resnet 3x3 conv1 included (peft conv LoRA: lora_A [r, in, 3, 3], lora_B [out, r, 1, 1])."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig

    pipe = fresh_pipe(base)
    g = torch.Generator().manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=PEFT_UNET_TARGETS + ["conv1"],
                     rank_pattern={"attn2.to_k": 2, "ff.net.0.proj": 8, "conv1": 6},
                     alpha_pattern={"attn2.to_q": 1, "ff.net.2": 16, "conv1": 3})
    unet_sd = _unet_lora_layers(pipe.unet, cfg, g)
    _save_diffusers(StableDiffusionPipeline, out, unet_lora_layers=unet_sd, unet_lora_adapter_metadata=cfg.to_dict())
    return Built(out.stem, "sd1", out, "peft-patterns", 4, 4.0, ("unet",),
                 "r 4 alpha 4; rank_pattern attn2.to_k 2, ff.net.0.proj 8, conv1 6; "
                 "alpha_pattern attn2.to_q 1, ff.net.2 16, conv1 3")


def native_sd1(base: Path, out: Path, seed: int = 125) -> Built:
    """Our native checkpoint as lora_pipeline.toy.train writes it (UNet-only peft LoRA on
    to_q/to_k/to_v/to_out.0, r 4, alpha 8, save_lora_weights + unet_lora_adapter_metadata), with
    stronger weights than the few toy training steps give."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig

    from lora_pipeline.toy.train import TARGET_MODULES

    pipe = fresh_pipe(base)
    g = torch.Generator().manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8.0, init_lora_weights="gaussian", target_modules=TARGET_MODULES)
    unet_sd = _unet_lora_layers(pipe.unet, cfg, g)
    _save_diffusers(StableDiffusionPipeline, out, unet_lora_layers=unet_sd, unet_lora_adapter_metadata=cfg.to_dict())
    return Built(out.stem, "sd1", out, "native", 4, 8.0, ("unet",), "UNet attention, r 4 alpha 8")


# -- header alignment and pickles ------------------------------------------------------------------

def header_length(path: Path) -> int:
    return struct.unpack("<Q", Path(path).read_bytes()[:8])[0]


def _save_with_header_length(path: Path, tensors: dict, metadata: dict, accept) -> int:
    """Save with a `pad` metadata string sized so that accept(header_length) holds."""
    from safetensors.torch import save_file

    def write(k: int) -> int:
        save_file(tensors, str(path), metadata={**metadata, "pad": "x" * k})
        raw = path.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        return n, len(raw[8:8 + n].rstrip(b" "))  # padded length, JSON length

    _n0, json0 = write(0)
    for target in range((json0 // 8 + 1) * 8, json0 + 70_000, 8):  # header lengths are multiples of 8
        if accept(target):
            n, _ = write(target - json0)  # JSON length target - 0: padded to exactly target
            if not accept(n):
                raise AssertionError(f"header length {n} after padding, wanted one accepted like {target}")
            return n
    raise AssertionError("no header length found")


def aligned_kohya(src: Path, out: Path, first: bytes) -> Built:
    """A copy of a valid kohya file whose safetensors header length (little-endian u64) starts with
    the bytes `first`: b'\\x80' (a pickle protocol-2+ opcode) or b'PK' (a zip, as torch.save writes)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(src), "pt") as fh:
        md = fh.metadata() or {}
    tensors = load_file(str(src))
    out.parent.mkdir(parents=True, exist_ok=True)
    n = _save_with_header_length(out, tensors, md, lambda n: struct.pack("<Q", n).startswith(first))
    assert Path(out).read_bytes()[: len(first)] == first
    return Built(out.stem, "sd1", out, "kohya", 4, 2.0, ("unet", "text_encoder"),
                 f"header length {n} = {struct.pack('<Q', n)[:2]!r}...")


class Payload:
    """Unpickling this object creates `marker` (builtins.open(marker, 'w'))."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_renamed(out: Path, marker: Path, legacy: bool) -> Built:
    """torch.save of a LoRA-like state dict plus a planted payload, named .safetensors. legacy: the
    pre-1.6 format (a bare pickle, first byte 0x80); else the zip format (first bytes 'PK')."""
    import torch

    sd = {"lora_unet_conv_in.lora_down.weight": torch.randn(4, 4, 3, 3),
          "lora_unet_conv_in.lora_up.weight": torch.randn(32, 4, 1, 1), "payload": Payload(marker)}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, str(out), _use_new_zipfile_serialization=not legacy)
    return Built(out.stem, "sd1", out, "pickle", notes=f"torch.save {'legacy' if legacy else 'zip'}, "
                 f"first bytes {out.read_bytes()[:2]!r}", extra={"marker": marker})
