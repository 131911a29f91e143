"""Planted faults on real toy SD1.x and SDXL models: each asserts its exact finding code, and that a
failed LoRA contract renders the base arm only, with the reason, and leaves no adapter behind."""

from __future__ import annotations

import pytest

from lora_pipeline.render.spec import LORA_ARMS


def _assert_base_only(result, code):
    assert code in result.codes(), [(f.code, f.message) for f in result.findings]
    arms = {r["arm"] for r in result.renders}
    assert arms == {"base"}
    assert {s["arm"] for s in result.skipped} == set(LORA_ARMS)
    assert all(code in s["reason"] for s in result.skipped)
    assert "COMPARISON.ARM_MISSING" in result.codes()
    assert result.verdict == "evaluation_invalid"
    _assert_no_adapter()


def _assert_no_adapter():
    from resources.diffusion_runtime import DiffusionRuntime

    assert all(not v for v in DiffusionRuntime.adapters_loaded().values())


def test_clean_lora_renders_all_arms(clean_loras, run_eval, tmp_path):
    r = run_eval(clean_loras["base"], clean_loras["arch"], clean_loras["clean"], tmp_path / "out")
    assert {x["arm"] for x in r.renders} == {"base", "lora_no_trigger", "lora_trigger"}
    assert r.verdict == "ok", [(f.code, f.message) for f in r.findings]
    ev = r.document["lora_load"]
    assert ev["loaded_tensors"] == ev["file_tensors"] > 0 and ev["probe_rel_delta"] > 1e-4
    assert r.document["metrics"]["base_vs_lora_trigger_mean_abs"] > 0
    _assert_no_adapter()


def test_wrong_key_prefix_is_not_applied(clean_loras, run_eval, lora_maker, tmp_path):
    def rename(sd):
        return {k.replace("unet.", "diffusion_model.", 1): v for k, v in sd.items()}

    f = lora_maker(clean_loras["base"], tmp_path / "prefix.safetensors", mutate=rename)
    r = run_eval(clean_loras["base"], clean_loras["arch"], f, tmp_path / "out")
    _assert_base_only(r, "RUNTIME.LORA_NOT_APPLIED")
    nf = next(x for x in r.findings if x.code == "RUNTIME.LORA_NOT_APPLIED")
    assert nf.evidence["unused_keys"] == nf.evidence["file_tensors"] > 0


def test_lora_from_a_differently_shaped_unet_is_incompatible(clean_loras, run_eval, lora_maker, tmp_path):
    f = lora_maker(clean_loras["base"], tmp_path / "wide.safetensors", unet_overrides={"block_out_channels": [64, 128]})
    r = run_eval(clean_loras["base"], clean_loras["arch"], f, tmp_path / "out")
    _assert_base_only(r, "RUNTIME.LORA_INCOMPATIBLE")
    assert "size mismatch" in next(x for x in r.findings if x.code == "RUNTIME.LORA_INCOMPATIBLE").evidence["message"]


def test_sd1_lora_on_sdxl_base_is_incompatible(toy_base, toy_sdxl_base, run_eval, lora_maker, tmp_path):
    f = lora_maker(toy_base, tmp_path / "sd1.safetensors")
    r = run_eval(toy_sdxl_base, "sdxl", f, tmp_path / "out")
    _assert_base_only(r, "RUNTIME.LORA_INCOMPATIBLE")


def test_partial_key_overlap_lists_what_did_not_land(clean_loras, run_eval, lora_maker, tmp_path):
    f = lora_maker(clean_loras["base"], tmp_path / "deeper.safetensors", unet_overrides={"layers_per_block": 2})
    r = run_eval(clean_loras["base"], clean_loras["arch"], f, tmp_path / "out")
    partial = next(x for x in r.findings if x.code == "RUNTIME.LORA_PARTIAL")
    ev = partial.evidence
    assert 0 < ev["loaded_tensors"] < ev["file_tensors"]
    assert ev["unused_keys"] == ev["file_tensors"] - ev["loaded_tensors"] and ev["not_landed"]
    missing = ev["by_value"]["statuses"]["missing"]
    assert missing > 0 and f"{missing} name no module of this base model" in partial.message
    # Still rendered, so the user sees what the runtime applies, and marked partial everywhere.
    assert {x["arm"] for x in r.renders} == {"base", "lora_no_trigger", "lora_trigger"}
    assert r.verdict == "evaluation_invalid"
    assert r.document["provenance"]["lora"]["applied"] == "partial"
    import json

    side = json.loads((tmp_path / "out" / r.renders[-1]["manifest"]).read_text())
    assert side["lora"]["applied"] == "partial"
    _assert_no_adapter()


def test_zero_weight_lora_is_no_lora_effect(clean_loras, run_eval, lora_maker, tmp_path):
    def zero(sd):
        return {k: (v * 0 if ".up." in k or "lora_B" in k else v) for k, v in sd.items()}

    f = lora_maker(clean_loras["base"], tmp_path / "zero.safetensors", mutate=zero)
    r = run_eval(clean_loras["base"], clean_loras["arch"], f, tmp_path / "out")
    assert "QUALITY.NO_LORA_EFFECT" in r.codes()
    assert "RUNTIME.LORA_NOT_APPLIED" not in r.codes()
    assert r.verdict == "quality_problem"


def test_nan_weights_are_invalid(clean_loras, run_eval, lora_maker, tmp_path):
    def nan(sd):
        k = sorted(sd)[0]
        sd[k] = sd[k].clone()
        sd[k][0, 0] = float("nan")
        return sd

    f = lora_maker(clean_loras["base"], tmp_path / "nan.safetensors", mutate=nan)
    _assert_base_only(run_eval(clean_loras["base"], clean_loras["arch"], f, tmp_path / "out"), "RUNTIME.LORA_INVALID")


def test_missing_file(clean_loras, run_eval, tmp_path):
    r = run_eval(clean_loras["base"], clean_loras["arch"], tmp_path / "nope.safetensors", tmp_path / "out")
    _assert_base_only(r, "RUNTIME.LORA_MISSING")


@pytest.mark.parametrize("name", ["evil.ckpt", "evil.safetensors"])
def test_pickle_refused_never_loaded(clean_loras, run_eval, tmp_path, name):
    import torch

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    f = tmp_path / name
    torch.save({"unet.x.lora_A.weight": torch.zeros(1), "evil": Evil()}, f)
    r = run_eval(clean_loras["base"], clean_loras["arch"], f, tmp_path / "out")
    _assert_base_only(r, "RUNTIME.LORA_INVALID")
    assert not marker.exists()


def test_alpha_lost(clean_loras, run_eval, lora_maker, tmp_path):
    f = lora_maker(clean_loras["base"], tmp_path / "noalpha.safetensors", metadata=False)
    r = run_eval(clean_loras["base"], clean_loras["arch"], f, tmp_path / "out")
    assert "RUNTIME.LORA_ALPHA_UNKNOWN" in r.codes()
    assert r.document["lora_load"]["peft_alpha"] == 4  # loaded at alpha == rank: strength halved


def test_wrong_base(clean_loras, run_eval, facts_maker, tmp_path):
    from lora_pipeline.render.spec import DeclaredBase

    base, arch = clean_loras["base"], clean_loras["arch"]
    facts = facts_maker(base, arch, base=DeclaredBase(f"toy-{arch}", str(base), "0" * 64, arch))
    _assert_base_only(run_eval(base, arch, clean_loras["clean"], tmp_path / "out", facts=facts),
                      "RUNTIME.BASE_MODEL_MISMATCH")


def test_unmatched_or_invisible_base_is_missing(toy_base, tmp_path):
    from lora_pipeline.render.contract import check_base, resolve_base
    from lora_pipeline.render.spec import BaseChoice, DeclaredBase

    declared = DeclaredBase("other", "/nowhere/other", "1" * 64, "sd1")
    assert resolve_base(declared, {"toy-sd1": toy_base}) is None
    assert check_base(declared, None, "s")[0][0].code == "RUNTIME.BASE_MODEL_MISSING"
    gone = check_base(declared, BaseChoice("other", tmp_path / "gone"), "s")[0]
    assert gone[0].code == "RUNTIME.BASE_MODEL_MISSING"
    assert resolve_base(DeclaredBase(None, None, None), {"x": toy_base}) is None
    from lora_pipeline.render.contract import base_identity

    assert resolve_base(DeclaredBase("renamed", None, base_identity(toy_base)), {"x": toy_base}).matched_by == "hash"


def test_trigger_respelled(clean_loras, run_eval, facts_maker, tmp_path):
    base, arch = clean_loras["base"], clean_loras["arch"]
    facts = facts_maker(base, arch, caption_trigger="sks-chair")
    r = run_eval(base, arch, clean_loras["clean"], tmp_path / "out", facts=facts)
    f = next(x for x in r.findings if x.code == "RUNTIME.TRIGGER_MISMATCH")
    assert f.evidence["reference"] == "sks-chair" and f.evidence["token_ids"]


def test_90_token_prompt_with_trigger_at_the_end(clean_loras, run_eval, spec_maker, tmp_path):
    long = " ".join(["a red wooden chair in a bright studio,"] * 11) + " {trigger}"
    r = run_eval(clean_loras["base"], clean_loras["arch"], clean_loras["clean"], tmp_path / "out",
                 spec=spec_maker(prompts=(long,)))
    codes = r.codes()
    assert "RUNTIME.TRIGGER_TRUNCATED" in codes and "RUNTIME.PROMPT_TRUNCATED" in codes
    tokenizers = {f.evidence["tokenizer"] for f in r.findings if f.code == "RUNTIME.TRIGGER_TRUNCATED"}
    assert tokenizers == ({"tokenizer"} if clean_loras["arch"] == "sd1" else {"tokenizer", "tokenizer_2"})
    counts = r.renders[0]["token_counts"]["prompt"]
    assert all(n > 77 for n in counts.values())


def test_long_negative_prompt_is_counted(clean_loras, run_eval, spec_maker, tmp_path):
    neg = " ".join(["blurry lowres watermark text signature"] * 20)
    r = run_eval(clean_loras["base"], clean_loras["arch"], clean_loras["clean"], tmp_path / "out",
                 spec=spec_maker(negative_prompt=neg))
    assert any(f.code == "RUNTIME.PROMPT_TRUNCATED" and f.evidence["which"] == "negative_prompt" for f in r.findings)


def test_contradicting_negative_prompt(clean_loras, run_eval, spec_maker, tmp_path):
    r = run_eval(clean_loras["base"], clean_loras["arch"], clean_loras["clean"], tmp_path / "out",
                 spec=spec_maker(prompts=("a photo of {trigger}, red chair",), negative_prompt="red, blurry"))
    f = next(x for x in r.findings if x.code == "RUNTIME.NEGATIVE_CONTRADICTS")
    assert f.evidence["words"] == ["red"]


def test_eval_size_below_training(clean_loras, run_eval, facts_maker, tmp_path):
    base, arch = clean_loras["base"], clean_loras["arch"]
    r = run_eval(base, arch, clean_loras["clean"], tmp_path / "out", facts=facts_maker(base, arch, resolution=128))
    assert "RUNTIME.RESOLUTION_BELOW_TRAINING" in r.codes()


def test_a_code_path_that_lowers_steps(clean_loras, run_eval, tmp_path):
    def memory_policy(kwargs):  # the kind of "helpful" code that dodges memory by cutting steps
        kwargs["num_inference_steps"] = 1
        return kwargs

    r = run_eval(clean_loras["base"], clean_loras["arch"], clean_loras["clean"], tmp_path / "out",
                 call_hook=memory_policy)
    f = next(x for x in r.findings if x.code == "RUNTIME.SETTINGS_CHANGED")
    assert f.evidence["changes"]["num_inference_steps"] == {"spec": 2, "passed": 1}
    assert f.evidence["changes"]["observed_steps_run"] == {"spec": 2, "observed": 1}
