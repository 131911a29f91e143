"""FLUX.1 LoRA files in the key layouts trainers write (kohya `lora_unet_double_blocks_*` with
per-module alphas, BFL/ComfyUI `diffusion_model.*`, ai-toolkit/diffusers `transformer.*`) on the toy
FLUX.1: verified by value (a fused qkv / linear1 against the modules diffusers splits it into), and
the LoRA render equal to the file merged by hand, written here independently of the production path."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.evaluation_helpers import evaluate
from tests.lora_files import reference as ref

HIDDEN, MLP = 32, 128  # the toy FLUX.1 transformer (lora_pipeline/toy/flux1.py)
# BFL module -> (diffusers modules in output order, in_features, out_features of each)
DOUBLE = {"img_attn.qkv": (("attn.to_q", "attn.to_k", "attn.to_v"), HIDDEN, HIDDEN),
          "img_attn.proj": (("attn.to_out.0",), HIDDEN, HIDDEN),
          "txt_attn.qkv": (("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), HIDDEN, HIDDEN),
          "img_mlp.0": (("ff.net.0.proj",), HIDDEN, MLP), "img_mlp.2": (("ff.net.2",), MLP, HIDDEN)}
SINGLE = {"linear1": (("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), HIDDEN, None),
          "linear2": (("proj_out",), HIDDEN + MLP, HIDDEN)}
SPLIT = {"proj_mlp": MLP}


# FLUX.2 (toy: hidden 32): its MLPs are linear_in (192) / linear_out, and linear1 stays one module.
DOUBLE2 = {"img_attn.qkv": DOUBLE["img_attn.qkv"], "txt_attn.qkv": DOUBLE["txt_attn.qkv"],
           "img_attn.proj": DOUBLE["img_attn.proj"], "img_mlp.0": (("ff.linear_in",), HIDDEN, 192),
           "txt_mlp.2": (("ff_context.linear_out",), 96, HIDDEN)}
SINGLE2 = {"linear1": (("attn.to_qkv_mlp_proj",), HIDDEN, 288), "linear2": (("attn.to_out",), 128, HIDDEN)}


def _modules(flux2: bool = False):
    """(bfl name, diffusers names, in, [out per diffusers module])"""
    if flux2:
        return ([(f"double_blocks.0.{b}", [f"transformer_blocks.0.{n}" for n in names], i, [o] * len(names))
                 for b, (names, i, o) in DOUBLE2.items()]
                + [(f"single_blocks.0.{b}", [f"single_transformer_blocks.0.{n}" for n in names], i, [o])
                   for b, (names, i, o) in SINGLE2.items()])
    out = []
    for bfl, (names, fan_in, fan_out) in DOUBLE.items():
        out.append((f"double_blocks.0.{bfl}", [f"transformer_blocks.0.{n}" for n in names], fan_in,
                    [fan_out] * len(names)))
    for bfl, (names, fan_in, fan_out) in SINGLE.items():
        out.append((f"single_blocks.0.{bfl}", [f"single_transformer_blocks.0.{n}" for n in names], fan_in,
                    [SPLIT.get(n, fan_out or HIDDEN) for n in names]))
    return out


def _pairs(seed: int, dynamic: bool = False, flux2: bool = False):
    """Random down/up pairs; `dynamic`: ranks 4 and 2 in turn, as resized kohya files have."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, (bfl, _names, fan_in, outs) in enumerate(_modules(flux2)):
        rank = 2 if dynamic and i % 2 else 4
        out[bfl] = (torch.randn(rank, fan_in, generator=g) * 0.3, torch.randn(sum(outs), rank, generator=g) * 0.3)
    return out


def kohya_flux(path, seed=1):
    sd, scales = {}, {}
    for i, (bfl, (down, up)) in enumerate(_pairs(seed, dynamic=True).items()):
        key = "lora_unet_" + bfl.replace(".", "_")
        sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = down, up
        alpha = 2.0 if i % 3 else 8.0  # per-module alphas, as block-weighted kohya files have
        sd[f"{key}.alpha"] = torch.tensor(alpha)
        scales[bfl] = alpha / down.shape[0]
    save_file(sd, str(path), metadata={"ss_network_module": "networks.lora_flux", "ss_network_dim": "Dynamic",
                                       "ss_network_alpha": "Dynamic", "ss_base_model_version": "flux1"})
    return scales


def bfl_flux(path, seed=2):
    """ComfyUI/BFL keys with no alpha: scale 1."""
    sd = {}
    for bfl, (down, up) in _pairs(seed).items():
        sd[f"diffusion_model.{bfl}.lora_A.weight"], sd[f"diffusion_model.{bfl}.lora_B.weight"] = down, up
    save_file(sd, str(path))
    return dict.fromkeys(_pairs(seed), 1.0)


def aitoolkit_flux2(path, seed=3):
    """ai-toolkit's FLUX.2 files: BFL keys under `diffusion_model.`, lora_A/lora_B, no alpha."""
    sd = {}
    for bfl, (down, up) in _pairs(seed, flux2=True).items():
        sd[f"diffusion_model.{bfl}.lora_A.weight"], sd[f"diffusion_model.{bfl}.lora_B.weight"] = down, up
    save_file(sd, str(path))
    return dict.fromkeys(_pairs(seed, flux2=True), 1.0)


def _hand_merged_render(base, path, scales, manifest, flux2=False):
    """W += scale * (B @ A), B's rows split onto the diffusers modules in output order."""
    from safetensors import safe_open

    pipe = ref.base_pipe(base)
    t = pipe.transformer
    saved = []
    with safe_open(str(path), "pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open is no dict
    try:
        with torch.no_grad():
            for bfl, names, _fan_in, outs in _modules(flux2):
                kohya = "lora_unet_" + bfl.replace(".", "_")
                down = tensors.get(f"{kohya}.lora_down.weight", tensors.get(f"diffusion_model.{bfl}.lora_A.weight"))
                up = tensors.get(f"{kohya}.lora_up.weight", tensors.get(f"diffusion_model.{bfl}.lora_B.weight"))
                delta = scales[bfl] * (up.double() @ down.double())
                row = 0
                for name, n in zip(names, outs, strict=True):
                    mod = t.get_submodule(name)
                    saved.append((mod, mod.weight.detach().clone()))
                    mod.weight += delta[row:row + n].to(mod.weight.dtype)
                    row += n
        return ref.render(pipe, manifest)
    finally:
        with torch.no_grad():
            for mod, w in reversed(saved):
                mod.weight.copy_(w)


@pytest.mark.parametrize("writer", [kohya_flux, bfl_flux], ids=["kohya", "bfl"])
def test_flux_layouts_verify_by_value_and_render_as_merged_by_hand(toy_flux1_base, tmp_path, writer):
    f = tmp_path / f"{writer.__name__}.safetensors"
    scales = writer(f)
    r = evaluate(toy_flux1_base, "flux1", f, tmp_path / "out")
    errors = [(x.code, x.message) for x in r.findings if x.severity == "error"]
    assert r.verdict != "evaluation_invalid", errors
    load = r.document["lora_load"]
    assert load["by_value"]["statuses"] == {"ok": 7}, load["by_value"]
    assert load["probe"] == "transformer" and load["probe_rel_delta"] > 1e-5
    png = next(p for p in (tmp_path / "out" / "lora_trigger").glob("*.png"))
    manifest = ref.read_manifest(png)
    got = ref.read_png(png)
    assert ref.pixel_match(got, _hand_merged_render(toy_flux1_base, f, scales, manifest)).ok
    half = {k: v * 0.5 for k, v in scales.items()}  # the control: the tolerance separates right from wrong
    assert not ref.pixel_match(got, _hand_merged_render(toy_flux1_base, f, half, manifest)).ok


def test_flux2_bfl_layout_verifies_by_value_and_renders_as_merged_by_hand(toy_flux2_base, tmp_path):
    f = tmp_path / "flux2.safetensors"
    scales = aitoolkit_flux2(f)
    r = evaluate(toy_flux2_base, "flux2", f, tmp_path / "out")
    assert r.verdict != "evaluation_invalid", [(x.code, x.message) for x in r.findings if x.severity == "error"]
    load = r.document["lora_load"]
    assert load["by_value"]["statuses"] == {"ok": 7}, load["by_value"]
    png = next((tmp_path / "out" / "lora_trigger").glob("*.png"))
    manifest, got = ref.read_manifest(png), ref.read_png(png)
    assert ref.pixel_match(got, _hand_merged_render(toy_flux2_base, f, scales, manifest, flux2=True)).ok
    half = {k: v * 0.5 for k, v in scales.items()}
    assert not ref.pixel_match(got, _hand_merged_render(toy_flux2_base, f, half, manifest, flux2=True)).ok
