"""The run report: `reports/<run_id>/report.json` and `report.html` (CONTRACT section 3).

    {schema_version: 1, run_id, verdict (of the run-level findings, CONTRACT section 4 rule),
     findings [run-level: the run record's dataset and training findings, the dataset checks of its
               snapshot, and lora_pipeline.quality.run_level when installed (render half of
               TRAINING.OVERTRAINING_SUSPECTED, COMPARISON.UNCONTROLLED spec drift)],
     run {folder, format, trigger, base_model, dataset, rank, alpha, learning_rate, steps, resolution},
     checkpoints [{checkpoint_id, step, verdict, severity_counts, error_codes, report, evaluated,
                   review (the latest reviewer decision in words, or null)}],
     candidates [{checkpoint_id, step, reason}] best first, best (checkpoint id or null),
     signals {name: [[step, value], ...]} (the quality thresholds are not signals: they are in
              signal_thresholds {signal name: {threshold, value, bound: "min"|"max"}}, drawn on the
              signal's plot), run_level {what run_findings returned}, reviews, generated_at}

A checkpoint is a candidate for the best one when its report has no error finding, the LoRA clearly
changes the renders (no QUALITY.NO_LORA_EFFECT, base-vs-LoRA difference above zero), nothing collapsed
(no QUALITY.NOISE_COLLAPSE / QUALITY.SEED_COLLAPSE) and no reviewer rejected it. Order: accepted by a
reviewer first, then fewer warnings, then the stronger trigger effect, then the earlier step.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lora_pipeline.config import Config
from lora_pipeline.findings import Finding, verdict
from lora_pipeline.fsutil import atomic_write_json, atomic_write_text
from lora_pipeline.report import reviews as rv
from lora_pipeline.report.diagnosis import (
    EVALUATION_FILE,
    HTML_FILE,
    REPORT_FILE,
    dataset_findings,
    dedupe,
    load_record,
    read_json,
    write_checkpoint_report,
)
from lora_pipeline.storage import Storage

COLLAPSE = {"QUALITY.NOISE_COLLAPSE", "QUALITY.SEED_COLLAPSE"}
MAX_SIGNALS = 12
# quality threshold (lora_pipeline.quality.DEFAULT_THRESHOLDS) -> (the signal it bounds, "min" | "max")
THRESHOLD_OF = {"min_lora_effect": ("quality.aggregate.lora_effect", "min"),
                "min_trigger_effect": ("quality.aggregate.trigger_effect", "min"),
                "max_hf_ratio": ("quality.aggregate.hf_ratio", "max"),
                "min_seed_diversity_ratio": ("quality.aggregate.seed_diversity_ratio", "min"),
                "memorization_distance": ("quality.aggregate.nearest_training_distance", "min")}


def _run_level(ev_docs: list[dict[str, Any]], record) -> tuple[list[Finding], dict[str, Any]]:
    """The quality layer's run-level findings (issue 6), when that module is installed."""
    try:
        from lora_pipeline.quality.run_level import run_findings
    except ModuleNotFoundError as e:
        if e.name not in ("lora_pipeline.quality", "lora_pipeline.quality.run_level"):
            raise
        return [], {"skipped": "lora_pipeline.quality.run_level is not installed"}
    found, extra = run_findings(ev_docs, record)
    return list(found), dict(extra or {})


def _numeric_leaves(prefix: str, obj: Any, depth: int = 0) -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(obj, bool):
        return out
    if isinstance(obj, int | float):
        if math.isfinite(obj):
            out[prefix] = float(obj)
    elif isinstance(obj, dict) and depth < 2:
        for k, v in obj.items():
            out.update(_numeric_leaves(f"{prefix}.{k}", v, depth + 1))
    return out


def signals_of(rows: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """Numeric signals per checkpoint over steps (checkpoints without a step use their position)."""
    series: dict[str, list[list[float]]] = {}
    for i, row in enumerate(rows):
        doc = row.get("_doc")
        x = float(row["step"] if row["step"] is not None else i)
        values = {}
        if row.get("total_delta_norm") is not None:
            values["weights.total_delta_norm"] = row["total_delta_norm"]
        if doc:
            m = doc.get("metrics") or {}
            values.update(_numeric_leaves("comparison", m.get("comparison") or {}))
            values.update(_numeric_leaves("quality", m.get("quality") or {}))
            loss = (m.get("training") or {}).get("loss_at_step")
            if isinstance(loss, int | float) and math.isfinite(loss):
                values["training.loss_at_step"] = float(loss)
        for k, v in values.items():
            if not k.startswith("quality.thresholds."):  # settings, not signals: signal_thresholds()
                series.setdefault(k, []).append([x, v])
    keep = sorted(series, key=lambda k: (not k.startswith(("comparison", "weights")), k))[:MAX_SIGNALS]
    return {k: series[k] for k in keep}


def signal_thresholds(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The quality thresholds of the latest evaluated checkpoint, keyed by the signal each bounds."""
    docs = [row["_doc"] for row in rows if row.get("_doc")]
    limits = ((docs[-1].get("metrics") or {}).get("quality") or {}).get("thresholds") or {} if docs else {}
    out = {}
    for name, value in limits.items():
        if name in THRESHOLD_OF and isinstance(value, int | float) and not isinstance(value, bool):
            signal, bound = THRESHOLD_OF[name]
            out[signal] = {"threshold": name, "value": float(value), "bound": bound}
    return out


def candidates(rows: list[dict[str, Any]], reviews: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        doc = row.get("_doc")
        if not doc:
            continue
        codes = {f["code"] for f in doc["findings"]}
        errors = [f for f in doc["findings"] if f["severity"] == "error"]
        comp = (doc["metrics"].get("comparison") or {})
        effect = comp.get("base_vs_lora_trigger_mean_abs")
        trig = comp.get("lora_trigger_vs_no_trigger_mean_abs")
        if errors or "QUALITY.NO_LORA_EFFECT" in codes or codes & COLLAPSE or "REVIEW.REJECTED" in codes:
            continue
        if not isinstance(effect, int | float) or effect <= 0:
            continue
        mine = rv.reviews_for(reviews, doc["run_id"], doc["checkpoint_id"])
        if mine and mine[-1]["decision"] == "reject":  # rejected after its report was written
            continue
        accepted = bool(mine) and mine[-1]["decision"] == "accept"
        warns = sum(f["severity"] == "warn" for f in doc["findings"])
        reason = (f"no error finding; the LoRA changes the renders (mean abs difference from base {effect:.4g}"
                  + (f", trigger on vs off {trig:.4g}" if isinstance(trig, int | float) else "")
                  + f"); no collapse finding; {warns} warning(s)" + ("; accepted by a reviewer" if accepted else ""))
        out.append({"checkpoint_id": doc["checkpoint_id"], "step": doc["step"], "reason": reason,
                    "_key": (not accepted, warns, -(trig or 0.0), row["step"] if row["step"] is not None else 0)})
    out.sort(key=lambda c: c.pop("_key"))
    return out


def build_run_report(config: Config, run_id: str) -> dict[str, Any]:
    storage = Storage(Path(config.storage))
    record = load_record(config, run_id)
    reviews = rv.read_reviews(config.storage, run_id)
    cks = sorted(record.checkpoints, key=lambda c: (c.step is None, c.step or 0, c.epoch or 0, c.checkpoint_id))
    rows, ev_docs = [], []
    for ck in cks:
        folder = storage.checkpoint_report_dir(run_id, ck.checkpoint_id)
        doc = read_json(folder / REPORT_FILE)
        ev = read_json(storage.renders_dir(run_id, ck.checkpoint_id) / EVALUATION_FILE)
        if ev is not None:
            ev_docs.append(ev)
            if doc is None:
                doc, _ = write_checkpoint_report(config, run_id, ck.checkpoint_id)
        rows.append({"checkpoint_id": ck.checkpoint_id, "step": ck.step, "total_delta_norm": ck.total_delta_norm,
                     "verdict": doc["verdict"] if doc else None, "evaluated": ev is not None,
                     "severity_counts": (doc or {}).get("metrics", {}).get("severity_counts"),
                     "error_codes": sorted({f["code"] for f in (doc or {}).get("findings", []) if f["severity"] == "error"}),
                     "report": f"{ck.checkpoint_id}/{REPORT_FILE}" if doc else None,
                     "review": rv.standing(rv.reviews_for(reviews, run_id, ck.checkpoint_id)), "_doc": doc})
    ds_found, ds_facts = dataset_findings(config, record)
    run_found, run_level = _run_level(ev_docs, record)
    findings = dedupe(list(record.findings) + ds_found + run_found)
    b = record.base_model
    doc = {
        "schema_version": 1, "run_id": run_id, "verdict": verdict(findings),
        "findings": [f.to_dict() for f in findings],
        "run": {"folder": record.folder, "format": record.format, "trigger": record.trigger,
                "base_model": {"name": b.name, "path": b.path, "sha256": b.sha256, "architecture": b.architecture},
                "dataset": ds_facts, "rank": record.rank, "alpha": record.alpha,
                "learning_rate": record.learning_rate, "steps": record.steps, "resolution": record.resolution},
        "checkpoints": [{k: v for k, v in r.items() if not k.startswith("_") and k != "total_delta_norm"} for r in rows],
        "candidates": candidates(rows, reviews), "signals": signals_of(rows),
        "signal_thresholds": signal_thresholds(rows), "run_level": run_level,
        "reviews": reviews, "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    doc["best"] = doc["candidates"][0]["checkpoint_id"] if doc["candidates"] else None
    doc["_rows"] = rows
    return doc


def write_run_report(config: Config, run_id: str) -> tuple[dict[str, Any], Path]:
    from lora_pipeline.report.run_html import render_run_html

    doc = build_run_report(config, run_id)
    rows = doc.pop("_rows")
    storage = Storage(Path(config.storage))
    folder = storage.run_report_dir(run_id)
    atomic_write_text(folder / HTML_FILE, render_run_html(doc, rows, storage, folder))
    atomic_write_json(folder / REPORT_FILE, doc)
    return doc, folder
