"""One checkpoint evaluation on a toy base, as the tests run it: a tiny eval spec, run facts that
match the toy base, and `evaluate` calling the production `evaluate_checkpoint`. Shared by
tests/render and tests/lora_files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

TRIGGER = "sks_chair"
# Toy renders (64 px, 2 steps, tiny random or briefly trained LoRAs) move by 0.1-1 8-bit levels, far
# below the real-model defaults of the quality checks (lora_pipeline/quality): these tests judge the
# runtime contract, so the effect thresholds are lowered to what a toy LoRA does reach.
TOY_QUALITY = {"min_lora_effect": 1e-5, "min_trigger_effect": 1e-5}


def tiny_spec(**kw):
    from lora_pipeline.render.spec import EvalSpec

    base = EvalSpec(prompts=("a photo of {trigger} on a white background",), negative_prompt="blurry, lowres",
                    seeds=(11,), width=64, height=64, steps=2, guidance_scale=5.0)
    return replace(base, **kw)


def facts_for(base_path: Path, arch: str, **kw):
    from lora_pipeline.render.contract import base_identity
    from lora_pipeline.render.spec import DeclaredBase, RunFacts

    args = dict(run_id="run-a", checkpoint_id="step-00000010", trigger=TRIGGER, rank=4, alpha=8.0, resolution=64,
                base=DeclaredBase(f"toy-{arch}", str(base_path), base_identity(base_path), arch),
                caption_trigger=TRIGGER, step=10)
    args.update(kw)
    return RunFacts(**args)


def evaluate(base: Path, arch: str, lora: Path, out: Path, spec=None, facts=None, call_hook=None, log=None):
    from lora_pipeline.render.evaluate import EvaluationInputs, evaluate_checkpoint
    from lora_pipeline.render.spec import BaseChoice, CheckpointInput

    facts = facts or facts_for(base, arch)
    inp = EvaluationInputs(facts=facts, spec=spec or tiny_spec(), base=BaseChoice(f"toy-{arch}", base, "name"),
                           checkpoint=CheckpointInput(Path(lora)), out_dir=out, quality_thresholds=TOY_QUALITY)
    return evaluate_checkpoint(inp, log=log or (lambda _m: None), call_hook=call_hook)
