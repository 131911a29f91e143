"""A LoRA of another model family than the base is RUNTIME.BASE_MODEL_MISMATCH naming both families;
a file that is no LoRA (a full model, alphas only) or whose pairs sit under an unknown key prefix is
exactly one finding that says what the file is. Real files on the real toy bases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from lora_pipeline.lora.inspect import inspect_file
from lora_pipeline.render.contract import base_architecture, check_lora_family, check_lora_file
from lora_pipeline.render.spec import LORA_ARMS
from tests.safetensors_bytes import write_lora


def _codes(findings) -> set[str]:
    return {f.code for f in findings if f.code.startswith(("RUNTIME.", "QUALITY."))}


def _sd3(path):
    mods = {f"transformer.transformer_blocks.{i}.{m}": (1536, 6144 if "ff_context" in m else 1536)
            for i in range(2) for m in ("attn.to_q", "attn.add_q_proj", "ff_context.net.0.proj")}
    return write_lora(path, mods)


def _sdxl_kohya(path):
    mods = {f"lora_unet_input_blocks_4_1_transformer_blocks_{i}_attn2_to_k": (2048, 640) for i in range(2)}
    mods["lora_te2_text_model_encoder_layers_0_self_attn_q_proj"] = (1280, 1280)
    return write_lora(path, mods, kohya=True, alpha=4.0)


@pytest.mark.parametrize("make,family", [(_sd3, "sd3"), (_sdxl_kohya, "sdxl")], ids=["sd3", "sdxl-kohya"])
def test_other_family_lora_on_sd1_base_is_base_model_mismatch(toy_base, run_eval, facts_maker, tmp_path,
                                                               make, family):
    f = make(tmp_path / f"{family}.safetensors")
    assert inspect_file(f).architecture["family"] == family
    r = run_eval(toy_base, "sd1", f, tmp_path / "out", facts=facts_maker(toy_base, "sd1", alpha=4.0))
    assert _codes(r.findings) == {"RUNTIME.BASE_MODEL_MISMATCH"}, [(x.code, x.message) for x in r.findings]
    mm = next(x for x in r.findings if x.code == "RUNTIME.BASE_MODEL_MISMATCH")
    assert f"({family}:" in mm.message and "(sd1)" in mm.message
    assert mm.evidence["lora_family"] == family and mm.evidence["base_family"] == "sd1"
    assert {x["arm"] for x in r.renders} == {"base"} and {s["arm"] for s in r.skipped} == set(LORA_ARMS)
    assert all("RUNTIME.BASE_MODEL_MISMATCH" in s["reason"] for s in r.skipped)
    assert r.verdict == "evaluation_invalid"


def test_toy_loras_fit_their_toy_bases(toy_base, toy_sdxl_base, lora_maker, tmp_path):
    sd1 = inspect_file(lora_maker(toy_base, tmp_path / "sd1.safetensors"))
    sdxl = inspect_file(lora_maker(toy_sdxl_base, tmp_path / "sdxl.safetensors"))
    assert sd1.architecture["family"] == "sd-unet" and sdxl.architecture["family"] == "sdxl"
    assert base_architecture(toy_base) == "sd1" and base_architecture(toy_sdxl_base) == "sdxl"
    assert check_lora_family(sd1, {"architecture": "sd1"}, "s") == []
    assert check_lora_family(sdxl, {"architecture": "sdxl"}, "s") == []
    # an SD-style UNet LoRA of unknown width on SDXL: the load decides (RUNTIME.LORA_INCOMPATIBLE)
    assert check_lora_family(sd1, {"architecture": "sdxl"}, "s") == []
    assert [x.code for x in check_lora_family(sdxl, {"architecture": "sd1", "name": "b"}, "s")] == [
        "RUNTIME.BASE_MODEL_MISMATCH"]


@pytest.mark.parametrize("cls,family", [
    ("StableDiffusion3Pipeline", "sd3"), ("FluxPipeline", "flux1"), ("Flux2Pipeline", "flux2"),
    ("Flux2KleinPipeline", "flux2"), ("StableDiffusionXLPipeline", "sdxl"), ("StableDiffusionPipeline", "sd1")])
def test_base_architecture_of_transformer_pipelines(tmp_path, cls, family):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": cls}))
    assert base_architecture(tmp_path) == family


def _alphas_only(src, dst):
    from safetensors import safe_open

    with safe_open(str(src), "np") as s:
        save_file({k: s.get_tensor(k) for k in s.keys() if k.endswith(".alpha")}, str(dst))  # noqa: SIM118


def _renamed(src, dst, rename):
    from safetensors import safe_open

    with safe_open(str(src), "np") as s:
        save_file({rename(k): s.get_tensor(k) for k in s.keys()}, str(dst), metadata=s.metadata())  # noqa: SIM118


def _full_model(toy_base, dst):
    dst.write_bytes((toy_base / "unet" / "diffusion_pytorch_model.safetensors").read_bytes())


SHAPES = {
    "full-model": ("RUNTIME.LORA_INVALID", lambda b, k, d: _full_model(b, d),
                   ["a full model checkpoint (", "tensors like `", "not a LoRA: give it under base_models, "
                    "or point the run at the LoRA file"]),
    "alphas-only": ("RUNTIME.LORA_INVALID", lambda b, k, d: _alphas_only(k, d),
                    ["holds only 32 alpha tensors and no weights: re-export the LoRA"]),
    "unknown-prefix-kohya": ("RUNTIME.LORA_INCOMPATIBLE",
                             lambda b, k, d: _renamed(k, d, lambda n: "model." + n.replace("lora_unet_",
                                                                                         "lora_diffusion_model_")),
                             ["holds 32 LoRA down/up pairs under the unknown key prefix `model.`: strip the prefix",
                              "known style"]),
    "unknown-prefix": ("RUNTIME.LORA_INCOMPATIBLE", lambda b, k, d: _renamed(k, d, lambda n: "model." + n),
                       ["holds 32 LoRA down/up pairs under the unknown key prefix `model.`: strip the prefix "
                        "(e.g. `model.lora_unet_"]),
}


@pytest.mark.parametrize("case", list(SHAPES))
def test_file_that_is_not_a_plain_lora_is_one_finding(toy_base, kohya_run, run_eval, facts_maker, tmp_path, case):
    code, build, says = SHAPES[case]
    f = tmp_path / f"{case}.safetensors"
    build(toy_base, kohya_run / "run-kohya.safetensors", f)
    findings, report = check_lora_file(f, facts_maker(toy_base, "sd1"), "s")
    assert [x.code for x in findings] == [code] and report is None, [(x.code, x.message) for x in findings]
    for s in says:
        assert s in findings[0].message, findings[0].message
    assert "\n" not in findings[0].message and findings[0].fix
    r = run_eval(toy_base, "sd1", f, tmp_path / "out")
    assert _codes(r.findings) == {code}, [(x.code, x.message) for x in r.findings]
    assert {x["arm"] for x in r.renders} == {"base"}


def test_alphas_only_and_unknown_prefix_say_so_in_inspect(kohya_run, tmp_path, capsys):
    from lora_pipeline.cli import main

    f = tmp_path / "prefixed.safetensors"
    _renamed(kohya_run / "run-kohya.safetensors", f, lambda n: "model." + n)
    assert main(["inspect", str(f)]) == 0
    out = capsys.readouterr().out
    assert "file shape:    holds 32 LoRA down/up pairs under the unknown key prefix `model.`" in out
    a = tmp_path / "alphas.safetensors"
    _alphas_only(kohya_run / "run-kohya.safetensors", a)
    assert main(["inspect", str(a), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["architecture"]["file_shape"]["kind"] == "alphas_only"
    assert np.isclose(doc["total_delta_norm"], 0.0)
