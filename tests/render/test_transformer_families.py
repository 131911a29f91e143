"""The runtime contract on the transformer families (toy SD3, FLUX.1, FLUX.2 Klein): a LoRA loads,
is verified by value and probed on the transformer; every encoder is counted against the limit the
pipeline applies; guidance semantics are recorded; a negative prompt the pipeline ignores is said."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.evaluation_helpers import evaluate, facts_for, tiny_spec

FAMILIES = ["sd3", "flux1", "flux2"]


@pytest.fixture(scope="session")
def family_bases(toy_sd3_base, toy_flux1_base, toy_flux2_base) -> dict[str, Path]:
    return {"sd3": toy_sd3_base, "flux1": toy_flux1_base, "flux2": toy_flux2_base}


def transformer_lora(base: Path, out: Path, seed: int = 0) -> Path:
    """A peft LoRA on the toy's transformer attention, saved by the family's own save_lora_weights
    with its adapter metadata (r 4, alpha 8: scale 2)."""
    import diffusers
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    cls = getattr(diffusers, json.loads((base / "model_index.json").read_text())["_class_name"])
    pipe = cls.from_pretrained(str(base))
    cfg = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v"])
    torch.manual_seed(seed)
    pipe.transformer.add_adapter(cfg)
    with torch.no_grad():
        for n, p in pipe.transformer.named_parameters():
            if "lora_B" in n:
                p.mul_(0.3)
    cls.save_lora_weights(out.parent / f".save-{out.stem}", transformer_lora_layers=get_peft_model_state_dict(
        pipe.transformer), weight_name=out.name, transformer_lora_adapter_metadata=cfg.to_dict())
    (out.parent / f".save-{out.stem}" / out.name).replace(out)
    return out


@pytest.fixture(scope="session")
def family_loras(tmp_path_factory, family_bases) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("family-loras")
    return {fam: transformer_lora(base, d / f"{fam}.safetensors") for fam, base in family_bases.items()}


@pytest.fixture(scope="session")
def evaluated(tmp_path_factory, family_bases, family_loras):
    d = tmp_path_factory.mktemp("family-evals")
    return {fam: evaluate(family_bases[fam], fam, family_loras[fam], d / fam) for fam in FAMILIES}


@pytest.mark.parametrize("fam", FAMILIES)
def test_lora_loads_verifies_by_value_and_changes_the_transformer(evaluated, fam):
    r = evaluated[fam]
    assert r.verdict != "evaluation_invalid", [(f.code, f.message) for f in r.findings if f.severity == "error"]
    assert {x["arm"] for x in r.renders} == {"base", "lora_no_trigger", "lora_trigger"}
    load = r.document["lora_load"]
    assert load["by_value"]["statuses"] == {"ok": load["by_value"]["modules_in_file"]} and load["components"]["transformer"]
    assert load["file_defines"]["scales"] == [2.0]
    assert load["probe"] == "transformer" and load["probe_rel_delta"] > 1e-5
    assert r.document["metrics"]["base_vs_lora_trigger_mean_abs"] > 0


@pytest.mark.parametrize(("fam", "kind", "negative"), [("sd3", "cfg", "applied"), ("flux1", "distilled", "ignored"),
                                                       ("flux2", "cfg", "unsupported")])
def test_guidance_semantics_are_recorded_and_an_ignored_negative_prompt_is_said(evaluated, fam, kind, negative):
    r = evaluated[fam]
    side = json.loads((r.path.parent / r.renders[0]["manifest"]).read_text())
    assert side["guidance"]["family"] == fam and side["guidance"]["kind"] == kind
    assert side["guidance"]["negative_prompt"] == negative
    said = [f for f in r.findings if f.code == "RUNTIME.SETTINGS_CHANGED"]
    if negative == "applied":
        assert not said
    else:
        (f,) = said
        assert f.severity == "warn" and f.evidence["changes"]["negative_prompt"]["applied"] is False
        assert "negative prompt is not applied" in f.message
    if negative == "unsupported":  # nothing passed, nothing recorded as passed
        assert all(x["negative_prompt"] == "" for x in r.renders)


def test_each_encoder_is_counted_against_the_limit_its_pipeline_applies(family_bases, family_loras, tmp_path):
    """CLIP stops at 77 while T5 goes on to the pipeline's max_sequence_length (SD3 256, not the
    tokenizer's 512; FLUX.1 512): a trigger at the end of a long prompt is lost exactly for the
    encoders whose count passes their limit."""
    from lora_pipeline.render.families import text_encoders
    from lora_pipeline.toy.base import build_toy_pipeline

    long = " ".join(["a red wooden chair in a bright studio,"] * 12) + " {trigger}"
    for fam, t5 in (("sd3", "tokenizer_3"), ("flux1", "tokenizer_2")):
        limits = {name: enc.limit for name, enc in text_encoders(build_toy_pipeline(seed=0, family=fam)).items()}
        assert limits[t5] == {"sd3": 256, "flux1": 512}[fam] and limits["tokenizer"] == 77
        r = evaluate(family_bases[fam], fam, family_loras[fam], tmp_path / fam, spec=tiny_spec(prompts=(long,)))
        counts = r.renders[0]["token_counts"]["prompt"]
        over = {name for name, n in counts.items() if n > limits[name]}
        lost = {f.evidence["tokenizer"] for f in r.findings if f.code == "RUNTIME.TRIGGER_TRUNCATED"}
        cut = {f.evidence["tokenizer"]: f.evidence["limit"] for f in r.findings
               if f.code == "RUNTIME.PROMPT_TRUNCATED" and f.evidence["which"] == "prompt"}
        assert "tokenizer" in over and lost == over and cut == {name: limits[name] for name in over}, (fam, counts)


def test_flux2_counts_its_prompt_inside_the_chat_template(family_bases, evaluated):
    from lora_pipeline.render.families import text_encoders
    from lora_pipeline.toy.base import build_toy_pipeline

    pipe = build_toy_pipeline(seed=0, family="flux2")
    enc = text_encoders(pipe)["tokenizer"]
    assert enc.limit == 512
    bare = len(enc.tokenizer("a photo of sks_chair").input_ids)
    framed = len(enc.tokenizer(enc.frame("a photo of sks_chair")).input_ids)
    assert framed > bare  # chat markup counts toward the 512
    counts = evaluated["flux2"].renders[0]["token_counts"]
    assert set(counts) == {"prompt"}  # no negative prompt reaches Klein: none is counted


def test_a_lora_of_another_family_is_base_model_mismatch(family_bases, tmp_path):
    """An SD3 LoRA (real SD3 widths and block names) on the FLUX.1 base: both families named."""
    from tests.safetensors_bytes import write_lora

    mods = {f"transformer.transformer_blocks.{i}.{m}": (1536, 6144 if "ff_context" in m else 1536)
            for i in range(2) for m in ("attn.to_q", "attn.add_q_proj", "ff_context.net.0.proj")}
    f = write_lora(tmp_path / "sd3-lora.safetensors", mods)
    r = evaluate(family_bases["flux1"], "flux1", f, tmp_path / "out", facts=facts_for(family_bases["flux1"], "flux1"))
    (mm,) = [x for x in r.findings if x.code == "RUNTIME.BASE_MODEL_MISMATCH"]
    assert "sd3" in mm.message and "flux1" in mm.message
    assert {x["arm"] for x in r.renders} == {"base"} and "RUNTIME.LORA_NOT_APPLIED" not in {x.code for x in r.findings}


@pytest.mark.parametrize(("fam", "encoders"), [("sd3", {"text_encoder", "text_encoder_2", "text_encoder_3"}),
                                               ("flux1", {"text_encoder", "text_encoder_2"}),
                                               ("flux2", {"text_encoder"})])
def test_phases_are_timed_per_text_encoder(evaluated, fam, encoders):
    """Warm-up vs stall works as on SD1.x: the phases (encode, per encoder, denoise steps, decode) are
    timed in every manifest."""
    r = evaluated[fam]
    for row in r.renders:
        side = json.loads((r.path.parent / row["manifest"]).read_text())
        phases = side["phase_timings"]
        assert set(phases["text_encoder_s"]) == encoders and all(v > 0 for v in phases["text_encoder_s"].values())
        assert phases["encode_s"] > 0 and phases["denoise_s"] > 0 and phases["decode_s"] > 0
        assert len(phases["step_s"]) == 2 and "pipeline_load" in phases


def test_a_dead_render_of_a_transformer_family_is_worker_lost_and_redone(family_bases, family_loras, tmp_path):
    from lora_pipeline.render import ops

    out = tmp_path / "out"
    (out / ops.HEARTBEAT_DIR).mkdir(parents=True)
    (out / ops.HEARTBEAT_DIR / "lora_trigger__0-11.json").write_text(json.dumps(
        {"pid": 999999, "host": "elsewhere", "updated": 0, "phase": "encode:text_encoder_2",
         "output": str(out / "lora_trigger/0-11.png")}))
    r = evaluate(family_bases["flux1"], "flux1", family_loras["flux1"], out)
    lost = next(f for f in r.findings if f.code == "OPERATIONAL.WORKER_LOST")
    assert lost.evidence["phase"] == "encode:text_encoder_2" and lost.evidence["recovered"] is True
    assert lost.severity == "info" and (out / "lora_trigger" / "0-11.png").is_file()


def _rewrite(src: Path, out: Path, change) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), "pt") as fh:
        meta = fh.metadata()
    save_file({k: v.contiguous() for k, v in change(load_file(str(src))).items()}, str(out), metadata=meta)
    return out


@pytest.mark.parametrize("fam", FAMILIES)
def test_wrong_prefix_is_not_applied_and_zero_file_is_no_effect(family_bases, family_loras, fam, tmp_path):
    wrong = _rewrite(family_loras[fam], tmp_path / "prefix.safetensors",  # a UNet prefix on transformer keys
                     lambda sd: {k.replace("transformer.", "unet.", 1): v for k, v in sd.items()})
    r = evaluate(family_bases[fam], fam, wrong, tmp_path / "wrong")
    codes = {f.code for f in r.findings if f.severity == "error"}
    assert codes == {"RUNTIME.LORA_NOT_APPLIED", "COMPARISON.ARM_MISSING"}, codes
    assert {x["arm"] for x in r.renders} == {"base"}
    zero = _rewrite(family_loras[fam], tmp_path / "zero.safetensors",
                    lambda sd: {k: (v * 0 if "lora_B" in k else v) for k, v in sd.items()})
    r = evaluate(family_bases[fam], fam, zero, tmp_path / "zero")
    codes = {f.code for f in r.findings}
    assert "QUALITY.NO_LORA_EFFECT" in codes and "RUNTIME.LORA_NOT_APPLIED" not in codes


@pytest.mark.parametrize(("fam", "long_encoder"), [("sd3", "tokenizer_3"), ("flux1", "tokenizer_2"),
                                                    ("flux2", "tokenizer")])
def test_trigger_past_the_long_encoders_limit_is_truncated(family_bases, family_loras, fam, long_encoder, tmp_path):
    """T5 (SD3 256, FLUX.1 512) and Qwen (Klein 512): a prompt past the limit with the trigger at its end."""
    long = " ".join(["a red wooden chair in a bright studio with soft light,"] * 70) + " {trigger}"
    r = evaluate(family_bases[fam], fam, family_loras[fam], tmp_path / "out", spec=tiny_spec(prompts=(long,)))
    lost = {f.evidence["tokenizer"]: f.evidence["limit"] for f in r.findings if f.code == "RUNTIME.TRIGGER_TRUNCATED"}
    assert long_encoder in lost and lost[long_encoder] == {"sd3": 256, "flux1": 512, "flux2": 512}[fam], lost
