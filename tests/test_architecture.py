"""The base family of a LoRA file from its header (key names + shapes), for every key style, and what
kind of file it is (a LoRA, a full model, alphas only, pairs under an unknown prefix)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from lora_pipeline.cli import main
from lora_pipeline.lora.architecture import describe_file_shape, infer_architecture
from lora_pipeline.lora.inspect import inspect_file
from lora_pipeline.lora.safetensors_file import read_header
from tests.safetensors_bytes import write_lora

SD_ATTN = "down_blocks.1.attentions.0.transformer_blocks.0"
SGM = "lora_unet_input_blocks_4_1_transformer_blocks_{}"


def _kohya(name: str) -> str:
    return "lora_unet_" + name.replace(".", "_")


# id -> (modules {key: (in, out)}, kohya key parts, expected family). Real model widths.
CASES = {
    "sd1-kohya": ({_kohya(f"{SD_ATTN}.attn2.to_k"): (768, 640), _kohya(f"{SD_ATTN}.attn1.to_q"): (640, 640)},
                  True, "sd1"),
    "sd2-peft": ({f"unet.{SD_ATTN}.attn2.to_k": (1024, 640)}, False, "sd2"),
    "sdxl-kohya-sgm": ({SGM.format(0) + "_attn2_to_k": (2048, 640), SGM.format(1) + "_attn2_to_k": (2048, 640),
                        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
                        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": (1280, 1280)}, True, "sdxl"),
    "sdxl-kohya-no-attn2": ({SGM.format(0) + "_attn1_to_q": (640, 640), SGM.format(1) + "_attn1_to_q": (640, 640)},
                            True, "sdxl"),
    "sdxl-peft": ({f"unet.down_blocks.2.attentions.0.transformer_blocks.{i}.attn2.to_k": (2048, 1280)
                   for i in range(3)}, False, "sdxl"),
    "sd3-diffusers": ({f"transformer.transformer_blocks.{i}.{m}": (1536, 1536)
                       for i in range(2) for m in ("attn.to_q", "attn.add_q_proj", "ff_context.net.0.proj")},
                      False, "sd3"),
    "sd35-large-diffusers": ({f"transformer.transformer_blocks.{i}.attn.to_q": (2432, 2432) for i in (0, 37)}
                             | {"transformer.transformer_blocks.0.attn.add_k_proj": (2432, 2432)}, False, "sd3"),
    "sd3-kohya": ({"lora_unet_joint_blocks_0_x_block_attn_qkv": (1536, 4608),
                   "lora_unet_joint_blocks_0_context_block_attn_qkv": (1536, 4608),
                   "lora_te3_encoder_block_0_layer_0_SelfAttention_q": (4096, 4096)}, True, "sd3"),
    "flux1-kohya": ({"lora_unet_double_blocks_0_img_attn_qkv": (3072, 9216),
                     "lora_unet_single_blocks_0_linear1": (3072, 21504),
                     "lora_unet_single_blocks_0_linear2": (15360, 3072)}, True, "flux1"),
    "flux1-diffusers": ({"transformer.transformer_blocks.0.attn.add_q_proj": (3072, 3072),
                         "transformer.single_transformer_blocks.0.attn.to_q": (3072, 3072)}, False, "flux1"),
    "flux1-diffusers-double-only": ({f"transformer.transformer_blocks.{i}.{m}": (3072, 3072) for i in range(2)
                                     for m in ("attn.to_q", "attn.add_q_proj")}, False, "flux1"),
    "flux1-bfl": ({"diffusion_model.double_blocks.0.img_attn.qkv": (3072, 9216),
                   "diffusion_model.single_blocks.3.linear2": (15360, 3072)}, False, "flux1"),
    "flux2-dev-diffusers": ({"transformer.transformer_blocks.0.attn.to_q": (6144, 6144),
                             "transformer.transformer_blocks.0.ff.linear_in": (6144, 36864),
                             "transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj": (6144, 55296)},
                            False, "flux2"),
    "flux2-klein4b-bfl": ({"diffusion_model.double_blocks.0.img_attn.qkv": (3072, 9216),
                           "diffusion_model.single_blocks.0.linear1": (3072, 27648)}, False, "flux2"),
    "flux2-klein9b-double-only": ({f"diffusion_model.double_blocks.{i}.img_attn.qkv": (4096, 12288)
                                   for i in range(3)}, False, "flux2"),
    "flux2-kohya": ({"lora_unet_double_blocks_0_img_attn_qkv": (3072, 9216),
                     "lora_unet_double_stream_modulation_img_lin": (3072, 18432)}, True, "flux2"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_family_from_key_style_and_widths(tmp_path, case):
    modules, kohya, family = CASES[case]
    f = write_lora(tmp_path / f"{case}.safetensors", modules, kohya=kohya, alpha=4.0 if kohya else None)
    arch = infer_architecture(read_header(f).header)
    assert arch["family"] == family, arch
    assert arch["evidence"]
    shape = describe_file_shape(read_header(f).header)
    assert shape["kind"] == "lora" and shape["pairs"] == len(modules), shape


def test_inspect_says_sd3_with_its_evidence(tmp_path, capsys):
    f = write_lora(tmp_path / "sd3.safetensors", CASES["sd3-diffusers"][0])
    assert inspect_file(f).architecture["family"] == "sd3"
    assert main(["inspect", str(f)]) == 0
    out = capsys.readouterr().out
    assert "architecture:  sd3 (SD3 MMDiT" in out and "file shape:    a LoRA: 6 down/up pairs" in out
    assert main(["inspect", str(f), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["architecture"]["family"] == "sd3" and doc["architecture"]["hidden_size"] == 1536
    assert doc["architecture"]["file_shape"]["kind"] == "lora"


def _lycoris(path, algo: str, prefix: str, n_in: int, n_out: int, r: int = 4) -> None:
    z = np.zeros
    if algo == "loha":
        t = {f"{prefix}.hada_w1_a": z((n_out, r)), f"{prefix}.hada_w1_b": z((r, n_in)),
             f"{prefix}.hada_w2_a": z((n_out, r)), f"{prefix}.hada_w2_b": z((r, n_in))}
    else:
        t = {f"{prefix}.lokr_w1": z((4, 4)), f"{prefix}.lokr_w2": z((n_out // 4, n_in // 4))}
    t[f"{prefix}.alpha"] = np.array(r, dtype=np.float32)
    save_file({k: v.astype(np.float32) for k, v in t.items()}, str(path))


def test_lycoris_and_dora_keys(tmp_path):
    loha = tmp_path / "loha.safetensors"
    _lycoris(loha, "loha", _kohya(f"{SD_ATTN}.attn2.to_k"), 768, 640)
    h = read_header(loha).header
    assert infer_architecture(h)["family"] == "sd1"
    assert describe_file_shape(h)["description"].startswith("a LoRA: 1 LyCORIS modules")
    lokr = tmp_path / "lokr.safetensors"
    _lycoris(lokr, "lokr", "lora_unet_double_blocks_0_img_attn_qkv", 3072, 9216)
    # LoKr factors carry no plain widths: FLUX by name, the version is not decidable
    assert infer_architecture(read_header(lokr).header)["family"] == "flux"
    dora = tmp_path / "dora.safetensors"
    write_lora(dora, {_kohya(f"{SD_ATTN}.attn2.to_k"): (768, 640)}, kohya=True, alpha=4.0)
    from safetensors.numpy import load_file

    t = load_file(str(dora))
    t[_kohya(f"{SD_ATTN}.attn2.to_k") + ".dora_scale"] = np.ones((640, 1), np.float32)
    save_file(t, str(dora))
    shape = describe_file_shape(read_header(dora).header)
    assert shape["kind"] == "lora" and "1 down/up pairs" in shape["description"]


def test_toy_kohya_lora_is_sd_unet(kohya_run):
    arch = infer_architecture(read_header(kohya_run / "run-kohya.safetensors").header)
    assert arch["family"] == "sd-unet" and arch["cross_attention_dim"] == 32


def _keys(path, names, shape=(2, 2)):
    save_file({k: np.zeros(shape, np.float32) if not k.endswith(".alpha") else np.array(1.0, np.float32)
               for k in names}, str(path))
    return read_header(path).header


def test_file_shape_kinds(tmp_path, toy_base):
    unet = read_header(toy_base / "unet" / "diffusion_pytorch_model.safetensors").header
    full = describe_file_shape(unet)
    assert full["kind"] == "full_model" and full["tensors"] == len(unet) > 100
    assert full["description"].startswith(f"a full model checkpoint ({len(unet):,} tensors like `")
    alphas = describe_file_shape(_keys(tmp_path / "a.safetensors", [f"lora_unet_m{i}.alpha" for i in range(7)]))
    assert alphas["kind"] == "alphas_only" and alphas["description"] == "holds only 7 alpha tensors and no weights"
    kohya_names = [f"model.lora_diffusion_model_down_blocks_{i}_attn1_to_q.lora_{p}.weight"
                   for i in range(3) for p in ("down", "up")]
    pre = describe_file_shape(_keys(tmp_path / "p.safetensors", kohya_names))
    assert pre["kind"] == "pairs_under_unknown_prefix" and pre["prefix"] == "model." and pre["pairs"] == 3
    assert not pre["stripped_known"]
    peft_names = [f"base_model.model.down_blocks.{i}.attn1.to_q.lora_{p}.weight" for i in range(2) for p in "AB"]
    pre2 = describe_file_shape(_keys(tmp_path / "q.safetensors", peft_names))
    assert pre2["prefix"] == "base_model.model." and pre2["stripped_known"]
    assert pre2["example"].endswith("-> `down_blocks.0.attn1.to_q.lora_A.weight`")
    known = [f"diffusion_model.down_blocks.{i}.attn1.to_q.lora_{p}.weight" for i in range(2) for p in "AB"]
    assert describe_file_shape(_keys(tmp_path / "k.safetensors", known))["kind"] == "lora"
    save_file({}, str(tmp_path / "e.safetensors"))
    assert describe_file_shape(read_header(tmp_path / "e.safetensors").header)["kind"] == "empty"
    half = describe_file_shape(_keys(tmp_path / "h.safetensors", ["lora_unet_x.lora_down.weight"]))
    assert half["kind"] == "unknown" and "without their other half" in half["description"]
