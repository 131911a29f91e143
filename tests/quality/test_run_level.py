"""Run-level findings from checkpoint documents: spec drift -> COMPARISON.UNCONTROLLED with the
differing fields; render quality worsening + training signals -> TRAINING.OVERTRAINING_SUSPECTED."""

from __future__ import annotations

import copy

from lora_pipeline.findings import Finding
from lora_pipeline.quality.run_level import run_findings
from lora_pipeline.training.record import CheckpointRecord, RunRecord


def _doc(ck: str, step: int, hf: float = 1.0, div: float = 1.0, steps: int = 30, **agg) -> dict:
    return {"run_id": "r", "checkpoint_id": ck, "step": step, "verdict": "ok", "findings": [],
            "provenance": {"eval": {"prompts": ["a {trigger}"], "seeds": [1, 2], "steps": steps, "width": 512,
                                    "height": 512, "guidance_scale": 7.0, "scheduler": None, "lora_scale": 1.0,
                                    "negative_prompt": ""},
                           "base_model": {"sha256": "a" * 64}, "trigger": "sks",
                           "runtime": {"dtype": "float16", "device": "cuda", "library_versions": {"torch": "2"}}},
            "quality": {"aggregate": {"lora_effect": 0.2, "trigger_effect": 0.1, "hf_ratio": hf,
                                      "seed_diversity_ratio": div, "nearest_training_distance": 20, "memorized": 0,
                                      "clip_lora_trigger": None, **agg}}}


def _run(findings=(), norms=(1.0, 1.1, 1.2)) -> RunRecord:
    cks = [CheckpointRecord(f"step-{s:08d}", f"/x/{s}.safetensors", "0" * 64, 1, step=s, total_delta_norm=n)
           for s, n in zip((100, 200, 300), norms, strict=True)]
    return RunRecord(run_id="r", folder="/x", format="native", checkpoints=cks, findings=list(findings))


def test_consistent_run_has_no_findings():
    docs = [_doc("step-00000100", 100), _doc("step-00000200", 200), _doc("step-00000300", 300)]
    found, section = run_findings(docs, _run())
    assert found == [] and section["spec_drift"] == {} and len(section["progression"]) == 3
    assert section["progression"][0]["hf_ratio"] == 1.0


def test_spec_drift_is_uncontrolled_with_the_differing_fields():
    docs = [_doc("step-00000100", 100), _doc("step-00000200", 200, steps=20), _doc("step-00000300", 300)]
    docs[2] = copy.deepcopy(docs[2])
    docs[2]["provenance"]["runtime"]["dtype"] = "float32"
    found, section = run_findings(docs, _run())
    [f] = found
    assert f.code == "COMPARISON.UNCONTROLLED" and f.severity == "error"
    assert set(f.evidence["differs"]) == {"eval.steps", "runtime.dtype"}
    assert f.evidence["differs"]["eval.steps"] == {"step-00000100": 30, "step-00000200": 20, "step-00000300": 30}
    assert "eval.steps" in f.message and section["spec_drift"] == f.evidence["differs"]


def test_overtraining_needs_render_worsening_and_training_signals():
    docs = [_doc("step-00000100", 100, hf=1.0, div=0.9), _doc("step-00000200", 200, hf=1.1, div=0.8),
            _doc("step-00000300", 300, hf=2.5, div=0.3)]
    found, section = run_findings(docs, _run())  # renders worsen, but training looks calm
    assert found == [] and {w["signal"] for w in section["render_worsening"]} == {"hf_ratio", "seed_diversity_ratio"}
    training_half = Finding("TRAINING.OVERTRAINING_SUSPECTED", "run r", "training half",
                            {"half": "training", "suspect_checkpoints": ["step-00000300"]})
    found, section = run_findings(docs, _run([training_half]))
    [f] = found
    assert f.code == "TRAINING.OVERTRAINING_SUSPECTED" and f.evidence["half"] == "renders"
    hf = next(w for w in f.evidence["render_worsening"] if w["signal"] == "hf_ratio")
    assert hf == {"signal": "hf_ratio", "best_checkpoint": "step-00000100", "best": 1.0,
                  "last_checkpoint": "step-00000300", "last": 2.5}
    assert f.evidence["training_signals"][0]["signal"] == "TRAINING.OVERTRAINING_SUSPECTED"
    # The delta norm growing across the worsening checkpoints is a training signal on its own.
    found, _ = run_findings(docs, _run(norms=(1.0, 2.0, 3.0)))
    assert [x.code for x in found] == ["TRAINING.OVERTRAINING_SUSPECTED"]
    assert found[0].evidence["training_signals"][0] == {"signal": "delta_norm_growth", "from": "step-00000100",
                                                       "to": "step-00000300", "ratio": 3.0, "threshold": 1.25}


def test_fading_trigger_effect_counts_only_when_the_trigger_once_worked():
    # The LoRA bleeds into prompts without the trigger: the trigger effect falls from a clear 0.1.
    docs = [_doc("step-00000100", 100, trigger_effect=0.1), _doc("step-00000200", 200, trigger_effect=0.05),
            _doc("step-00000300", 300, trigger_effect=0.02)]
    found, section = run_findings(docs, _run(norms=(1.0, 2.0, 3.0)))
    assert [f.code for f in found] == ["TRAINING.OVERTRAINING_SUSPECTED"]
    [w] = section["render_worsening"]
    assert w == {"signal": "trigger_effect", "best_checkpoint": "step-00000100", "best": 0.1,
                 "last_checkpoint": "step-00000300", "last": 0.02}
    # Between two values below the trigger-effect threshold the fall is noise: nothing is flagged.
    docs = [_doc("step-00000100", 100, trigger_effect=0.008), _doc("step-00000300", 300, trigger_effect=0.001)]
    found, section = run_findings(docs, _run(norms=(1.0, 2.0, 3.0)))
    assert found == [] and section["render_worsening"] == []
