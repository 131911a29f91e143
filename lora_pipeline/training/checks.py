"""Training findings with evidence, from the run record alone (loss series, settings, checkpoint
delta norms). Ingestion gives `loss_and_settings_findings`; the delta norms are computed after it
(training/norms.py, which adds `norm_findings`). Thresholds live in `checks.*` of the config
(lora_pipeline.config.ChecksConfig) and are documented in docs/training.md.

- TRAINING.LOSS_NOT_FINITE: any NaN/Inf in the loss series.
- TRAINING.LOSS_DIVERGED: the EMA-smoothed loss (weight `loss_ema_alpha`) stays above
  `loss_diverged_ratio` x its minimum over the last `loss_diverged_tail` of the series, the minimum
  lying before that tail.
- TRAINING.AGGRESSIVE_SETTINGS: rank > `max_rank_per_image` x images; learning rate above
  `max_learning_rate[<optimizer family>]`; steps per image > `max_steps_per_image`.
- TRAINING.WEIGHTS_EXPLODING: between consecutive checkpoints the total delta norm grows more than
  `weights_jump_ratio` x the growth that linear-in-steps would give (or turns NaN/Inf).
- TRAINING.OVERTRAINING_SUSPECTED (training half): checkpoints past `overtrain_steps_per_image`
  whose delta norm is still growing by more than `overtrain_norm_growth`; the evidence lists them so
  the evaluation can confirm with renders.
"""

from __future__ import annotations

import math
from typing import Any

from lora_pipeline.config import ChecksConfig
from lora_pipeline.findings import Finding
from lora_pipeline.training.record import CheckpointRecord, RunRecord

MIN_POINTS = 10  # fewer loss points than this are too few to call a divergence


def smooth(values: list[float], alpha: float) -> list[float]:
    """EMA over the finite values (non-finite points carry the previous smoothed value)."""
    out: list[float] = []
    s = None
    for v in values:
        if math.isfinite(v):
            s = v if s is None else alpha * v + (1 - alpha) * s
        out.append(s if s is not None else float("nan"))
    return out


def optimizer_family(name: str | None) -> str | None:
    n = (name or "").lower()
    for key in ("prodigy", "dadapt", "lion", "adafactor", "sgd", "adam"):
        if key in n:
            return key
    return None


def _loss_findings(r: RunRecord, c: ChecksConfig) -> list[Finding]:
    out = []
    subject = f"run {r.run_id}"
    bad = [(s, v) for s, v in r.loss if not math.isfinite(v)]
    if bad:
        out.append(Finding("TRAINING.LOSS_NOT_FINITE", subject,
                           f"The training loss became {bad[0][1]} at step {bad[0][0]} ({len(bad)} non-finite point(s)).",
                           {"first_step": bad[0][0], "count": len(bad), "points": len(r.loss),
                            "steps": [s for s, _ in bad[:20]]}))
    finite = [(s, v) for s, v in r.loss if math.isfinite(v)]
    if len(finite) < MIN_POINTS:
        return out
    ema = smooth([v for _, v in finite], c.loss_ema_alpha)
    i_min = min(range(len(ema)), key=ema.__getitem__)
    tail = max(3, math.ceil(c.loss_diverged_tail * len(ema)))
    start = len(ema) - tail
    lo = ema[i_min]
    if lo > 0 and i_min < start and all(v > c.loss_diverged_ratio * lo for v in ema[start:]):
        out.append(Finding(
            "TRAINING.LOSS_DIVERGED", subject,
            f"The smoothed loss stayed above {c.loss_diverged_ratio:g}x its minimum ({lo:.4g} at step "
            f"{finite[i_min][0]}) from step {finite[start][0]} to the end ({ema[-1]:.4g}).",
            {"min_smoothed": lo, "min_step": finite[i_min][0], "final_smoothed": ema[-1],
             "ratio": ema[-1] / lo, "threshold_ratio": c.loss_diverged_ratio, "tail_from_step": finite[start][0],
             "tail_points": tail, "ema_alpha": c.loss_ema_alpha}))
    return out


def _steps(r: RunRecord) -> int | None:
    steps = [ck.step for ck in r.checkpoints if ck.step is not None]
    return r.steps or (max(steps) if steps else None)


def _settings_findings(r: RunRecord, c: ChecksConfig) -> list[Finding]:
    rules: list[dict[str, Any]] = []
    if r.rank and r.images and r.rank > c.max_rank_per_image * r.images:
        rules.append({"rule": "rank_per_image", "rank": r.rank, "images": r.images,
                      "threshold": f"rank > {c.max_rank_per_image:g} x images"})
    fam = optimizer_family(r.optimizer)
    limit = c.max_learning_rate.get(fam) if fam else None
    if r.learning_rate is not None and limit is not None and r.learning_rate > limit:
        rules.append({"rule": "learning_rate", "learning_rate": r.learning_rate, "optimizer": r.optimizer,
                      "family": fam, "threshold": limit})
    steps = _steps(r)
    if steps and r.images and steps / r.images > c.max_steps_per_image:
        rules.append({"rule": "steps_per_image", "steps": steps, "images": r.images,
                      "steps_per_image": steps / r.images, "threshold": c.max_steps_per_image})
    if not rules:
        return []
    what = ", ".join(x["rule"].replace("_", " ") for x in rules)
    return [Finding("TRAINING.AGGRESSIVE_SETTINGS", f"run {r.run_id}",
                    f"Settings above the documented thresholds: {what}.", {"rules": rules})]


def _ordered(r: RunRecord) -> list[CheckpointRecord]:
    ck = [c for c in r.checkpoints if c.total_delta_norm is not None]
    return sorted(ck, key=lambda c: (c.step if c.step is not None else (c.epoch or 0), c.final))


def _position(c: CheckpointRecord, i: int) -> float:
    return float(c.step if c.step is not None else (c.epoch if c.epoch is not None else i + 1))


def _weights_findings(r: RunRecord, c: ChecksConfig) -> list[Finding]:
    ck = _ordered(r)
    jumps = []
    for i in range(1, len(ck)):
        a, b = ck[i - 1], ck[i]
        na, nb = a.total_delta_norm or 0.0, b.total_delta_norm
        if nb is None or na <= 0 or not math.isfinite(na):
            continue
        pa, pb = _position(a, i - 1), _position(b, i)
        growth = pb / pa if pa > 0 and pb > pa else 1.0
        ratio = nb / na if math.isfinite(nb) else float("inf")
        if ratio > c.weights_jump_ratio * growth:
            jumps.append({"from": a.checkpoint_id, "to": b.checkpoint_id, "norm_from": na,
                          "norm_to": nb if math.isfinite(nb) else str(nb), "norm_ratio": ratio if math.isfinite(ratio) else "inf",
                          "step_ratio": growth})
    if not jumps:
        return []
    j = jumps[0]
    ratio_s = j["norm_ratio"] if isinstance(j["norm_ratio"], str) else f"{j['norm_ratio']:.3g}"
    return [Finding("TRAINING.WEIGHTS_EXPLODING", f"run {r.run_id}",
                    f"The LoRA delta norm jumped {ratio_s}x "
                    f"from {j['from']} to {j['to']} (steps grew {j['step_ratio']:.3g}x).",
                    {"jumps": jumps, "threshold": f"norm ratio > {c.weights_jump_ratio:g} x step ratio",
                     "norms": {x.checkpoint_id: x.total_delta_norm for x in ck}})]


def _overtraining_findings(r: RunRecord, c: ChecksConfig) -> list[Finding]:
    ck = [x for x in _ordered(r) if x.step is not None]
    if not r.images or len(ck) < 2:
        return []
    late = [x for x in ck if x.step / r.images > c.overtrain_steps_per_image]
    if not late:
        return []
    i0 = ck.index(late[0])
    ref = ck[i0 - 1] if i0 > 0 else late[0]
    if ref is late[-1] or not ref.total_delta_norm:
        return []
    growth = (late[-1].total_delta_norm or 0.0) / ref.total_delta_norm
    if not growth > c.overtrain_norm_growth:
        return []
    return [Finding("TRAINING.OVERTRAINING_SUSPECTED", f"run {r.run_id}",
                    f"{len(late)} checkpoint(s) are past {c.overtrain_steps_per_image:g} steps per image and the "
                    f"weights kept growing ({growth:.3g}x since {ref.checkpoint_id}); the renders decide.",
                    {"suspect_checkpoints": [x.checkpoint_id for x in late], "images": r.images,
                     "steps_per_image": {x.checkpoint_id: x.step / r.images for x in late},
                     "norm_growth": growth, "reference_checkpoint": ref.checkpoint_id,
                     "threshold_steps_per_image": c.overtrain_steps_per_image,
                     "threshold_norm_growth": c.overtrain_norm_growth, "half": "training"})]


NORM_CODES = ("TRAINING.WEIGHTS_EXPLODING", "TRAINING.OVERTRAINING_SUSPECTED")


def is_norm_finding(f: Finding) -> bool:
    """A finding `norm_findings` makes (the render half of OVERTRAINING_SUSPECTED is not one)."""
    return f.code in NORM_CODES and (f.evidence or {}).get("half", "training") == "training"


def loss_and_settings_findings(r: RunRecord, c: ChecksConfig) -> list[Finding]:
    """What ingestion finds: the loss series and the settings."""
    return _loss_findings(r, c) + _settings_findings(r, c)


def norm_findings(r: RunRecord, c: ChecksConfig) -> list[Finding]:
    """What the checkpoints' delta norms show (`CheckpointRecord.total_delta_norm`, filled by
    training/norms.py): TRAINING.WEIGHTS_EXPLODING and the training half of OVERTRAINING_SUSPECTED."""
    return _weights_findings(r, c) + _overtraining_findings(r, c)


def training_findings(r: RunRecord, c: ChecksConfig) -> list[Finding]:
    return loss_and_settings_findings(r, c) + norm_findings(r, c)
