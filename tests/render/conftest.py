"""Fixtures for the evaluation-render tests: a toy SDXL base beside the toy SD1 one, real peft LoRA
files built on the real toy UNets (clean and with planted faults), and a tiny eval spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.evaluation_helpers import evaluate, facts_for, tiny_spec


@pytest.fixture(scope="session", params=["sd1", "sdxl"])
def arch_base(request, toy_base, toy_sdxl_base) -> tuple[str, Path]:
    return request.param, (toy_base if request.param == "sd1" else toy_sdxl_base)


def make_lora(base: Path, out: Path, *, rank: int = 4, alpha: float = 8.0, metadata: bool = True, seed: int = 0,
              unet_overrides: dict | None = None, mutate=None) -> Path:
    """A real peft LoRA on a fresh UNet built from the base's own UNet config (+ overrides), with
    random non-zero A and B, saved with diffusers' own save_lora_weights. `mutate(state_dict)` plants
    a fault in the real tensors before saving."""
    import json

    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from lora_pipeline.toy.train import TARGET_MODULES

    cfg = json.loads((base / "unet" / "config.json").read_text())
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg.update(unet_overrides or {})
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg)
    lcfg = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False, target_modules=TARGET_MODULES)
    unet.add_adapter(lcfg)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.mul_(0.05)  # a modest delta, like a trained LoRA
    sd = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    sd = {k: v.detach().contiguous() for k, v in sd.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".save-{out.stem}"
    StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=sd, weight_name=out.name,
                                              unet_lora_adapter_metadata=lcfg.to_dict() if metadata else None)
    (tmp / out.name).replace(out)
    tmp.rmdir()
    if mutate is not None:  # plant the fault in the saved file's real tensors, header kept
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        with safe_open(str(out), "pt") as fh:
            header = fh.metadata()
        save_file({k: v.contiguous() for k, v in mutate(load_file(str(out))).items()}, str(out), metadata=header)
    return out


@pytest.fixture(scope="session")
def clean_loras(tmp_path_factory, arch_base) -> dict:
    arch, base = arch_base
    d = tmp_path_factory.mktemp(f"loras-{arch}")
    return {"arch": arch, "base": base, "clean": make_lora(base, d / "clean.safetensors"), "dir": d}


@pytest.fixture
def run_eval():
    return evaluate


@pytest.fixture
def lora_maker():
    return make_lora


@pytest.fixture
def spec_maker():
    return tiny_spec


@pytest.fixture
def facts_maker():
    return facts_for
