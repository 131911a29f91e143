"""Run-level judgement over the evaluated checkpoints of one run (the reports layer calls this).

`run_findings(checkpoint_documents, run)`: the documents are the checkpoints' `evaluation.json`
(ordered by step); returns (findings, section):

- COMPARISON.UNCONTROLLED when checkpoints were rendered with different settings: any field of the
  eval spec, the base model hash, trigger, dtype, device or library versions that differs; the
  evidence lists each differing field with its value per checkpoint. Progressions across such
  checkpoints compare unlike things.
- TRAINING.OVERTRAINING_SUSPECTED (the render half): a quality signal is worse at the last checkpoint
  than at the best earlier one by more than `worsening` (relative: HF-energy ratio up, seed-diversity
  ratio down, nearest-training distance down, trigger effect down from a clear one, more QUALITY
  findings) *and* the training side agrees:
  the run record carries the training half of the finding or TRAINING.LOSS_DIVERGED, or the LoRA
  delta norm grew by more than `norm_growth` between those two checkpoints. Both come from the record
  as the reports load it: ingestion computes no norm, `lora_pipeline.training.norms.with_norms` adds
  the checkpoints' norms and the training half (report/diagnosis.py `load_record`).

Section: {progression [{checkpoint_id, step, verdict, lora_effect, trigger_effect, hf_ratio,
seed_diversity_ratio, nearest_training_distance, memorized, clip_lora_trigger, quality_findings}],
spec_drift {field: {checkpoint_id: value}}, render_worsening [...], training_signals [...]}.
"""

from __future__ import annotations

from typing import Any

from lora_pipeline.findings import Finding
from lora_pipeline.quality import thresholds as resolve_thresholds

_SIGNALS = ("lora_effect", "trigger_effect", "hf_ratio", "seed_diversity_ratio", "nearest_training_distance",
            "memorized", "clip_lora_trigger")
# signal -> +1 when higher is worse, -1 when lower is worse
_WORSE = {"hf_ratio": +1, "seed_diversity_ratio": -1, "nearest_training_distance": -1, "quality_findings": +1,
          "trigger_effect": -1}
NORM_GROWTH = 1.25  # ChecksConfig.overtrain_norm_growth default


def _spec_fields(doc: dict[str, Any]) -> dict[str, Any]:
    prov = doc.get("provenance") or {}
    runtime = prov.get("runtime") or {}
    out = {f"eval.{k}": v for k, v in (prov.get("eval") or {}).items()}
    out.update({"base_model.sha256": (prov.get("base_model") or {}).get("sha256"), "trigger": prov.get("trigger"),
                "runtime.dtype": runtime.get("dtype"), "runtime.device": runtime.get("device"),
                "runtime.library_versions": {k: v for k, v in (runtime.get("library_versions") or {}).items()
                                             if k != "lora_pipeline"}})
    return out


def spec_drift(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    per = {d.get("checkpoint_id", str(i)): _spec_fields(d) for i, d in enumerate(docs)}
    fields = sorted({f for v in per.values() for f in v})
    drift = {}
    for f in fields:
        vals = {ck: v.get(f) for ck, v in per.items()}
        if len({repr(x) for x in vals.values()}) > 1:
            drift[f] = vals
    return drift


def progression(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for d in docs:
        agg = ((d.get("quality") or {}).get("aggregate")) or {}
        rows.append({"checkpoint_id": d.get("checkpoint_id"), "step": d.get("step"), "verdict": d.get("verdict"),
                     **{k: agg.get(k) for k in _SIGNALS},
                     "quality_findings": sum(1 for f in d.get("findings") or []
                                             if str(f.get("code", "")).startswith("QUALITY."))})
    return rows


def render_worsening(rows: list[dict[str, Any]], worsening: float, min_trigger_effect: float = 0.0
                     ) -> list[dict[str, Any]]:
    """Signals worse at the last checkpoint than at the best earlier one, by more than `worsening`.

    A trigger effect that fades (the LoRA bleeding into prompts without the trigger) counts only when
    the trigger once had a clear effect (>= `min_trigger_effect`): a fall between two values that are
    both noise says nothing."""
    if len(rows) < 2:
        return []
    last, earlier = rows[-1], rows[:-1]
    out = []
    for sig, sign in _WORSE.items():
        pts = [r for r in earlier if r.get(sig) is not None]
        if last.get(sig) is None or not pts:
            continue
        best = min(pts, key=lambda r: sign * r[sig])
        b, v = float(best[sig]), float(last[sig])
        if sig == "trigger_effect" and b < min_trigger_effect:
            continue
        if sig == "quality_findings":
            worse = v > b
        elif sign > 0:
            worse = v > b * (1 + worsening) and v > b
        else:
            worse = v < b * (1 - worsening)
        if worse:
            out.append({"signal": sig, "best_checkpoint": best["checkpoint_id"], "best": b,
                        "last_checkpoint": last["checkpoint_id"], "last": v})
    return out


def training_signals(run: Any, first_ck: str | None, last_ck: str | None, norm_growth: float) -> list[dict]:
    out = []
    for f in getattr(run, "findings", []) or []:
        if f.code in ("TRAINING.OVERTRAINING_SUSPECTED", "TRAINING.LOSS_DIVERGED") and \
                (f.evidence or {}).get("half", "training") == "training":
            out.append({"signal": f.code, "message": f.message})
    norms = {c.checkpoint_id: c.total_delta_norm for c in getattr(run, "checkpoints", []) or []}
    a, b = norms.get(first_ck), norms.get(last_ck)
    if a and b and b / a > norm_growth:
        out.append({"signal": "delta_norm_growth", "from": first_ck, "to": last_ck, "ratio": round(b / a, 4),
                    "threshold": norm_growth})
    return out


def run_findings(checkpoint_documents: list[dict[str, Any]], run: Any, *, thresholds: dict[str, float] | None = None,
                 norm_growth: float = NORM_GROWTH) -> tuple[list[Finding], dict[str, Any]]:
    t = resolve_thresholds(thresholds)
    docs = list(checkpoint_documents)
    run_id = getattr(run, "run_id", None) or (docs[0].get("run_id") if docs else "?")
    subject = f"run {run_id}"
    findings: list[Finding] = []
    drift = spec_drift(docs)
    if drift:
        findings.append(Finding("COMPARISON.UNCONTROLLED", subject,
                                f"The checkpoints of run {run_id} were rendered with different settings "
                                f"({', '.join(drift)}): their progression compares unlike things.",
                                {"differs": drift, "checkpoints": [d.get("checkpoint_id") for d in docs]}))
    rows = progression(docs)
    worse = render_worsening(rows, t["worsening"], t["min_trigger_effect"])
    first = worse[0]["best_checkpoint"] if worse else None
    signals = training_signals(run, first, rows[-1]["checkpoint_id"] if rows else None, norm_growth) if worse else []
    if worse and signals:
        findings.append(Finding("TRAINING.OVERTRAINING_SUSPECTED", subject,
                                f"Render quality worsened after {first} ({', '.join(w['signal'] for w in worse)}) "
                                f"while training signals agree ({', '.join(s['signal'] for s in signals)}).",
                                {"half": "renders", "render_worsening": worse, "training_signals": signals,
                                 "threshold_worsening": t["worsening"]}))
    return findings, {"progression": rows, "spec_drift": drift, "render_worsening": worse,
                      "training_signals": signals}
