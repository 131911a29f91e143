"""Comparison checks over the manifests of one checkpoint evaluation (CONTRACT section 2).

- COMPARISON.ARM_MISSING: a prompt x seed without all three arms (the reason is kept);
- COMPARISON.UNCONTROLLED: arms of one prompt x seed that differ in anything but weights/trigger;
- COMPARISON.NONDETERMINISTIC: a base image re-rendered with the same inputs differs by more than
  `NONDETERMINISM_TOLERANCE` (8-bit levels: CPU renders are bit-identical; GPU kernels may differ
  by a level here and there, so max 2 levels and mean 0.05 levels are tolerated).
"""

from __future__ import annotations

from typing import Any

from lora_pipeline.findings import Finding
from lora_pipeline.render.prompts import arm_prompt
from lora_pipeline.render.spec import ARMS, EvalSpec

NONDETERMINISM_TOLERANCE = {"max_abs": 2, "mean_abs": 0.05}
# Facts every arm of a prompt x seed must share.
_SHARED = ("seed", "width", "height", "steps", "guidance_scale", "scheduler", "negative_prompt", "dtype",
           "device", "generator", "memory_settings")


def arm_missing(spec: EvalSpec, manifests: list[dict[str, Any]], reasons: dict[tuple, str],
                subject: str) -> list[Finding]:
    have = {(m["prompt_index"], m["seed"], m["arm"]) for m in manifests}
    out = []
    for pi in range(len(spec.prompts)):
        for seed in spec.seeds:
            missing = [a for a in ARMS if (pi, seed, a) not in have]
            if missing:
                out.append(Finding("COMPARISON.ARM_MISSING", subject,
                                   f"Prompt {pi} seed {seed} lacks the {', '.join(missing)} arm(s).",
                                   {"prompt_index": pi, "seed": seed, "missing": missing,
                                    "reasons": {a: reasons.get((pi, seed, a), "not rendered") for a in missing}}))
    return out


def uncontrolled(spec: EvalSpec, manifests: list[dict[str, Any]], trigger: str | None, subject: str) -> list[Finding]:
    groups: dict[tuple, dict[str, dict]] = {}
    for m in manifests:
        groups.setdefault((m["prompt_index"], m["seed"]), {})[m["arm"]] = m
    out = []
    for (pi, seed), arms in sorted(groups.items()):
        diffs: dict[str, Any] = {}
        ref = next(iter(arms.values()))
        for k in _SHARED:
            vals = {a: m.get(k) for a, m in arms.items()}
            if len({repr(v) for v in vals.values()}) > 1:
                diffs[k] = vals
        bases = {a: (m.get("base_model") or {}).get("sha256") for a, m in arms.items()}
        if len(set(bases.values())) > 1:
            diffs["base_model"] = bases
        template = spec.prompts[pi] if pi < len(spec.prompts) else ref.get("prompt_template", "")
        expect = {"base": arm_prompt(template, trigger, True), "lora_trigger": arm_prompt(template, trigger, True),
                  "lora_no_trigger": arm_prompt(template, trigger, False)}
        for a, m in arms.items():
            if m.get("prompt") != expect.get(a):
                diffs.setdefault("prompt", {})[a] = {"expected": expect.get(a), "rendered": m.get("prompt")}
        loras = {a: m.get("lora") for a, m in arms.items() if a != "base"}
        if len({repr(v) for v in loras.values()}) > 1:
            diffs["lora"] = loras
        if diffs:
            out.append(Finding("COMPARISON.UNCONTROLLED", subject,
                               f"The arms of prompt {pi} seed {seed} differ in {', '.join(diffs)}, not only in "
                               "weights and trigger.", {"prompt_index": pi, "seed": seed, "differs": diffs}))
    return out


def pixel_diff(a: Any, b: Any) -> dict[str, float]:
    import numpy as np

    x = np.asarray(a.convert("RGB"), dtype=np.int16)
    y = np.asarray(b.convert("RGB"), dtype=np.int16)
    if x.shape != y.shape:
        return {"max_abs": 255.0, "mean_abs": 255.0, "shape_differs": 1.0}
    d = np.abs(x - y)
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean())}


def determinism(reference: Any, image: Any, seed: int, subject: str) -> tuple[dict[str, Any], list[Finding]]:
    """`evaluation.json`'s determinism section for base image 0-<seed> rendered twice, and its finding."""
    diff = pixel_diff(reference, image)
    return ({"reference": f"base 0-{seed}", **diff, "tolerance": NONDETERMINISM_TOLERANCE},
            nondeterministic(diff, {"arm": "base", "prompt_index": 0, "seed": seed}, subject))


def determinism_reused(seed: int) -> dict[str, Any]:
    """The determinism section when base image 0-<seed> came from the render cache: nothing to compare."""
    return {"reference": f"base 0-{seed}", "skipped": "base render reused from the render cache (rendered and "
                                                      "checked for determinism when it was first made)"}


def nondeterministic(diff: dict[str, float], where: dict[str, Any], subject: str) -> list[Finding]:
    tol = NONDETERMINISM_TOLERANCE
    if diff["max_abs"] <= tol["max_abs"] and diff["mean_abs"] <= tol["mean_abs"]:
        return []
    return [Finding("COMPARISON.NONDETERMINISTIC", subject,
                    f"Re-rendering a base image with the same inputs changed pixels by up to {diff['max_abs']:g} "
                    f"levels (mean {diff['mean_abs']:.3g}), beyond the tolerance.",
                    {**where, **diff, "tolerance": tol})]
