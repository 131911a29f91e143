"""Each misdiagnosis of the "prove the LoRA by value" issue, on the real-format files: the right
code(s), and none of the false ones the old path gave."""

from __future__ import annotations

import json

import pytest

from tests.lora_files.cases import LORA_FAMILY

# Codes the old path gave these files falsely (or that would hide a wrong strength).
FALSE = {"RUNTIME.LORA_PARTIAL", "RUNTIME.LORA_INVALID", "RUNTIME.LORA_INCOMPATIBLE", "RUNTIME.LORA_NOT_APPLIED",
         "RUNTIME.LORA_ALPHA_UNKNOWN", "QUALITY.NO_LORA_EFFECT", "TRAINING.CONFIG_UNKNOWN"}


def _codes(ev) -> set[str]:
    return {f.code for f in ev.result.findings}


def _load(ev) -> dict:
    return ev.result.document["lora_load"]


@pytest.mark.parametrize("name", [*LORA_FAMILY, "lycoris_loha", "lycoris_lokr", "lycoris_sdxl_loha",
                                  "lycoris_sdxl_lokr"])
def test_renders_as_the_file_defines_with_no_false_code(evaluated, name):
    ev = evaluated(name)
    assert not _codes(ev) & FALSE, sorted(_codes(ev) & FALSE)
    load = _load(ev)
    statuses = load["by_value"]["statuses"]
    assert statuses == {"ok": load["by_value"]["modules_in_file"]}, load["by_value"]
    assert load["loaded_tensors"] == load["file_tensors"] and load["unused_keys"] == 0
    lora = ev.result.document["provenance"]["lora"]
    assert lora["applied"] == "as_file"
    side = json.loads(ev.trigger_pngs[0].with_suffix(".json").read_text())
    assert side["lora"]["applied"] == "as_file"


@pytest.mark.parametrize(("name", "encoders"), [("kohya_sd1", {"text_encoder"}), ("peft_sd1", {"text_encoder"}),
                                                ("peft_sd1_tf5_names", {"text_encoder"}),
                                                ("kohya_sdxl_sgm", {"text_encoder", "text_encoder_2"}),
                                                ("peft_sdxl", {"text_encoder", "text_encoder_2"}),
                                                ("lycoris_sdxl_loha", {"text_encoder", "text_encoder_2"})])
def test_text_encoder_modules_land_and_verify(evaluated, name, encoders):
    """The old landed-key comparison expected `text_model.` names transformers 5 no longer has: every
    file with text-encoder keys got a false LORA_PARTIAL and no LoRA arm."""
    ev = evaluated(name)
    comps = _load(ev)["components"]
    assert encoders <= {c for c, n in comps.items() if n > 0} and comps.get("unet", 0) > 0, comps
    assert "RUNTIME.LORA_PARTIAL" not in _codes(ev)


@pytest.mark.parametrize(("name", "scales"), [("peft_sd1", [0.5]), ("native", [2.0])])
def test_alpha_of_the_adapter_metadata_is_applied(evaluated, name, scales):
    """A PEFT file with r 4 / alpha 2 rendered at scale 1.0, and the native format at half its alpha,
    while provenance said `alpha_source: lora_adapter_metadata`."""
    ev = evaluated(name)
    load = _load(ev)
    assert load["file_defines"]["scales"] == scales
    assert load["file_defines"]["alpha_sources"] == ["lora_adapter_metadata"]
    assert load["peft_alpha"] == ev.built.alpha  # diffusers got the header this time
    assert load["corrections"] == []


def test_per_module_kohya_alphas_are_corrected_and_recorded(evaluated):
    """diffusers 0.42.1 writes alpha_pattern keys that match no module: the layers come out at the
    default alpha; the by-value check sets them right, records it and verifies again."""
    ev = evaluated("kohya_sd1_block_alpha_dynamic")
    load = _load(ev)
    assert len(load["file_defines"]["scales"]) > 1
    (fix,) = load["corrections"]
    assert fix["kind"] == "scale" and fix["modules"] > 0
    assert load["by_value"]["statuses"] == {"ok": load["by_value"]["modules_in_file"]}


def test_dora_magnitudes_dropped_are_partial_and_still_rendered(evaluated):
    ev = evaluated("lycoris_dora")
    partial = next(f for f in ev.result.findings if f.code == "RUNTIME.LORA_PARTIAL")
    lost = partial.evidence["by_value"]["statuses"]["dora_lost"]
    assert lost == partial.evidence["by_value"]["modules_in_file"] > 0
    assert f"{lost} lost their DoRA magnitude" in partial.message
    assert partial.evidence["unused_keys"] == lost  # exactly the dora_scale tensors
    assert all(k.endswith(".dora_scale") for k in partial.evidence["not_landed"])
    assert ev.trigger_pngs, "the LoRA arms still render"
    assert ev.result.document["provenance"]["lora"]["applied"] == "partial"
    assert not _codes(ev) & (FALSE - {"RUNTIME.LORA_PARTIAL"})


@pytest.mark.parametrize(("name", "algorithm"), [("lycoris_loha", "loha"), ("lycoris_lokr", "lokr"),
                                                 ("lycoris_locon", "lora")])
def test_inspect_names_the_lycoris_algorithm_and_its_deltas(lora_files, name, algorithm):
    from lora_pipeline.lora.inspect import format_report, inspect_file

    r = inspect_file(lora_files[name].path)
    assert r.algorithms == [algorithm]
    assert not r.all_zero and all(m.delta_norm and m.delta_norm > 0 for m in r.modules)
    assert all(m.alpha_source == "tensor" for m in r.modules)
    text = format_report(r)
    assert "ALL ZERO" not in text and algorithm in text


def _rewrite(src, out, change):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), "pt") as fh:
        meta = fh.metadata()
    save_file(change(load_file(str(src))), str(out), metadata=meta)
    return out


def test_unsupported_lycoris_algorithm_is_incompatible_naming_it(lora_files, bases, tmp_path):
    from tests.lora_files.conftest import evaluate

    key = ""

    def to_full(sd):  # one module as LyCORIS "full" (diff) writes it
        nonlocal key
        key = next(k for k in sd if k.endswith(".hada_w1_a")).rsplit(".", 1)[0]
        w = sd[f"{key}.hada_w1_a"] @ sd[f"{key}.hada_w1_b"]
        return {**{k: v for k, v in sd.items() if not k.startswith(key + ".")}, f"{key}.diff": w.contiguous()}

    f = _rewrite(lora_files["lycoris_loha"].path, tmp_path / "full.safetensors", to_full)
    r = evaluate(bases["sd1"], "sd1", f, tmp_path / "out")
    (inc,) = [x for x in r.findings if x.code == "RUNTIME.LORA_INCOMPATIBLE"]
    assert "algorithm full" in inc.message and f"layer {key}" in inc.message
    assert {x["arm"] for x in r.renders} == {"base"}
    assert not {x.code for x in r.findings} & {"QUALITY.NO_LORA_EFFECT", "RUNTIME.LORA_ALPHA_UNKNOWN"}


def test_lycoris_layer_that_maps_to_nothing_is_incompatible_naming_it(lora_files, bases, tmp_path):
    from tests.lora_files.conftest import evaluate

    def misname(sd):
        key = next(k for k in sd if k.endswith(".hada_w1_a")).rsplit(".", 1)[0]
        return {(k.replace(key, "lora_unet_down_blocks_9_nowhere", 1) if k.startswith(key + ".") else k): v
                for k, v in sd.items()}

    f = _rewrite(lora_files["lycoris_loha"].path, tmp_path / "misnamed.safetensors", misname)
    r = evaluate(bases["sd1"], "sd1", f, tmp_path / "out")
    (inc,) = [x for x in r.findings if x.code == "RUNTIME.LORA_INCOMPATIBLE"]
    assert "lora_unet_down_blocks_9_nowhere" in inc.message and "loha" in inc.message
    assert inc.evidence["unmapped"] == ["lora_unet_down_blocks_9_nowhere"]


def test_the_evaluations_light_file_check_answers_as_the_full_analysis_on_every_real_file(lora_files):
    """The evaluation reads each file with the light pass (no delta norms, render/contract.py): on every
    file kohya, diffusers/PEFT and LyCORIS write it gives the full analysis's answers for what the
    evaluation uses (planted NaN/Inf and zero tensors: tests/training/test_light_analysis.py)."""
    from lora_pipeline.lora.inspect import analyse
    from lora_pipeline.lora.safetensors_file import read_safetensors

    for name, built in lora_files.items():
        light, full = analyse(read_safetensors(built.path), norms=False), analyse(read_safetensors(built.path))
        for what in ("sha256", "key_format", "ranks", "nonfinite_tensors", "malformed", "all_zero", "declared",
                     "unmatched_keys", "architecture", "components"):
            assert getattr(light, what) == getattr(full, what), (name, what)
        assert [m.alpha_source for m in light.modules] == [m.alpha_source for m in full.modules], name
