"""Diagnosis of one checkpoint: the findings of every layer that applies, the verdict of CONTRACT
section 4, and `reports/<run_id>/<checkpoint_id>/report.json` (+ report.html), written atomically.

Where each layer's findings come from:
- dataset: the dataset checks (lora_pipeline.dataset.checks) on the snapshot the run trained on, or
  the dataset's latest snapshot when the run names none; plus the run record's dataset findings
  (DATASET.SOURCE_CHANGED, DATASET.NOT_SNAPSHOTTED from the training layer's dataset link);
- training: the run record's findings that are run-wide or name this checkpoint's file
  (TRAINING.LOSS_NOT_FINITE only from the step where the loss first went non-finite);
- provenance, runtime, comparison, operational, quality: the checkpoint's evaluation.json;
- review: REVIEW.REJECTED from reviews.jsonl.

report.json has exactly the keys of CONTRACT section 4. `renders[].path` is relative to the storage
root. `metrics` holds the rest: comparison metrics, quality signals, determinism, LoRA load evidence,
the four contracts (pass/fail with evidence), training facts at this step, reviews and counts.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lora_pipeline.config import Config
from lora_pipeline.findings import CATALOGUE, Finding, verdict
from lora_pipeline.fsutil import atomic_write_json, atomic_write_text
from lora_pipeline.report import reviews as rv
from lora_pipeline.storage import Storage

REPORT_FILE = "report.json"
HTML_FILE = "report.html"
EVALUATION_FILE = "evaluation.json"
REPORT_KEYS = ("schema_version", "run_id", "checkpoint_id", "step", "verdict", "findings", "provenance",
               "renders", "metrics")
RENDER_KEYS = ("path", "arm", "prompt", "negative_prompt", "seed", "width", "height", "steps", "guidance_scale",
               "scheduler", "token_counts", "sha256")
CONTRACTS = {"runtime": ("provenance", "runtime"), "dataset": ("dataset",), "comparison": ("comparison",),
             "operational": ("operational",)}
LAYER_ORDER = ("provenance", "runtime", "comparison", "operational", "dataset", "training", "quality", "review")


class ReportError(Exception):
    """A report cannot be built (no run record, no evaluation yet); one line naming the file."""


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        d = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ReportError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    return d if isinstance(d, dict) else None


def load_record(config: Config, run_id: str):
    from lora_pipeline.training.ingest import IngestError, load_run_record

    try:
        record = load_run_record(config.storage, run_id)
    except IngestError as e:
        raise ReportError(str(e)) from None
    if record is None:
        raise ReportError(f"{Storage(Path(config.storage)).run_record(run_id)}: no run record for run {run_id!r} "
                          "(ingest the run first)")
    from lora_pipeline.training.norms import with_norms
    from lora_pipeline.training.record import Roots

    # its paths in this workspace (even moved or copied), and the checkpoints' delta norms with the
    # findings made of them, which ingestion leaves out (lora_pipeline/training/norms.py)
    return with_norms(config, record.reanchored(Roots.of(config)))


def dataset_findings(config: Config, record) -> tuple[list[Finding], dict[str, Any]]:
    """The dataset checks on the snapshot the run trained on (else the dataset's latest snapshot)."""
    from lora_pipeline.dataset.checks import CheckInput, run_checks
    from lora_pipeline.dataset.findings_memo import record_key, snapshot_findings
    from lora_pipeline.dataset.snapshot import latest_snapshot, load_snapshot
    from lora_pipeline.dataset.tokens import token_memo_dir, tokenizer_folder

    name, sid = record.dataset.name, record.dataset.snapshot_id
    facts: dict[str, Any] = {"dataset": name, "snapshot_id": sid, "path": record.dataset.path}
    if not name:
        return [], facts
    snap, which = (load_snapshot(config.storage, name, sid), "trained on") if sid else (None, "")
    if snap is None:
        snap, which = latest_snapshot(config.storage, name), "latest (the run names no snapshot)"
    if snap is None:
        return [], {**facts, "which": "none"}
    ds, c = config.datasets.get(name), config.checks
    base = record.base_model.path if tokenizer_folder(record.base_model.path) else None
    settings = {"trigger": ds.trigger if ds and ds.trigger else record.trigger, "resolution": c.resolution,
                "min_images": c.min_images, "min_distinct_caption_ratio": c.min_distinct_caption_ratio,
                "near_duplicate_distance": c.near_duplicate_distance}
    facts.update(snapshot_id=snap.snapshot_id, which=which, created_at=snap.created_at,
                 manifest=str(snap.manifest_path), source_root=snap.source_root, files=len(snap.files))

    def compute() -> list[Finding]:
        return run_checks(CheckInput(snap.manifest(), name, snap.orphan_captions, snap.refused_symlinks,
                                     tokenizer_base=Path(base) if base else None,
                                     token_memo=token_memo_dir(config.storage), **settings))

    # The same immutable snapshot under every checkpoint's report: checked once (dataset/findings_memo.py).
    key = record_key(name, snap, settings, tokenizer_folder(base) if base else None)
    return snapshot_findings(config.storage, key, compute), facts


def record_findings(record, ck) -> list[Finding]:
    """Run-record findings that apply to this checkpoint (see the module docstring)."""
    own = {ck.path, *ck.aliases} if ck else set()
    other_files = {p for c in record.checkpoints for p in (c.path, *c.aliases)} - own
    out = []
    for f in record.findings:
        if f.subject in other_files or (f.subject not in own and not f.subject.startswith("run ")):
            continue
        first = f.evidence.get("first_step") if f.code == "TRAINING.LOSS_NOT_FINITE" else None
        if first is not None and ck is not None and ck.step is not None and ck.step < first:
            continue
        out.append(f)
    return out


def dedupe(findings: list[Finding]) -> list[Finding]:
    seen, out = set(), []
    for f in findings:
        key = (f.code, f.subject, f.message)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return sorted(out, key=lambda f: (LAYER_ORDER.index(f.layer), ("error", "warn", "info").index(f.severity)))


def counts(findings: list[Finding]) -> dict[str, int]:
    return {s: sum(f.severity == s for f in findings) for s in ("error", "warn", "info")}


def contracts(findings: list[Finding], ev: dict[str, Any], ds_facts: dict[str, Any]) -> dict[str, Any]:
    renders, skipped = ev.get("renders") or [], ev.get("skipped") or []
    evidence = {
        "runtime": {"lora_load": ev.get("lora_load") or {}, "base_model": (ev.get("provenance") or {}).get("base_model"),
                    "lora": (ev.get("provenance") or {}).get("lora")},
        "dataset": ds_facts,
        "comparison": {"arms": sorted({r["arm"] for r in renders}), "renders": len(renders),
                       "skipped": len(skipped), "determinism": ev.get("determinism") or {},
                       "metrics": ev.get("metrics") or {}},
        "operational": {"renders": len(renders), "skipped": skipped, "timings": ev.get("timings") or {},
                        "runtime": (ev.get("provenance") or {}).get("runtime") or {}},
    }
    out = {}
    for name, layers in CONTRACTS.items():
        errs = [f.code for f in findings if f.layer in layers and f.severity == "error"]
        out[name] = {"passed": not errs, "errors": sorted(set(errs)), "evidence": evidence[name]}
    return out


def _training_facts(record, ck) -> dict[str, Any]:
    loss_here = None
    if ck is not None and ck.step is not None:
        before = [v for s, v in record.loss if s <= ck.step]
        loss_here = before[-1] if before else None
    return {"step": ck.step if ck else None, "epoch": ck.epoch if ck else None,
            "loss_at_step": loss_here if loss_here is None or loss_here == loss_here else str(loss_here),
            "total_delta_norm": ck.total_delta_norm if ck else None, "format": record.format,
            "rank": record.rank, "alpha": record.alpha, "learning_rate": record.learning_rate,
            "steps": record.steps, "resolution": record.resolution}


def build_checkpoint_report(config: Config, run_id: str, checkpoint_id: str) -> dict[str, Any]:
    """The report.json document of one checkpoint (nothing written)."""
    storage = Storage(Path(config.storage))
    record = load_record(config, run_id)
    ck = record.checkpoint(checkpoint_id)
    ev_path = storage.renders_dir(run_id, checkpoint_id) / EVALUATION_FILE
    ev = read_json(ev_path)
    if ev is None:
        raise ReportError(f"{ev_path}: no evaluation for {run_id}/{checkpoint_id} yet (materialize eval_renders)")
    ds_found, ds_facts = dataset_findings(config, record)
    applicable = rv.reviews_for(rv.read_reviews(config.storage, run_id), run_id, checkpoint_id)
    findings = [Finding.from_dict(f) for f in ev.get("findings") or [] if f.get("code") in CATALOGUE]
    findings += ds_found + record_findings(record, ck)
    rejected = rv.rejected_finding(applicable, f"{run_id}/{checkpoint_id}")
    findings = dedupe(findings + ([rejected] if rejected else []))
    prov = dict(ev.get("provenance") or {})
    prov["dataset_snapshot"] = {**ds_facts, **({"evaluated_with": prov.get("dataset_snapshot")}
                                               if prov.get("dataset_snapshot") else {})}
    prov.setdefault("dagster_run_id", None)
    rel = Path("renders") / run_id / checkpoint_id
    renders = [{**{k: r.get(k) for k in RENDER_KEYS}, "path": (rel / r["path"]).as_posix(),
                "manifest": (rel / r["manifest"]).as_posix() if r.get("manifest") else None,
                "prompt_index": r.get("prompt_index")} for r in ev.get("renders") or []]
    return {
        "schema_version": 1, "run_id": run_id, "checkpoint_id": checkpoint_id,
        "step": ev.get("step") if ev.get("step") is not None else (ck.step if ck else None),
        "verdict": verdict(findings), "findings": [f.to_dict() for f in findings], "provenance": prov,
        "renders": renders,
        "metrics": {"comparison": ev.get("metrics") or {}, "quality": ev.get("quality") or {},
                    "determinism": ev.get("determinism") or {}, "lora_load": ev.get("lora_load") or {},
                    "contracts": contracts(findings, ev, ds_facts), "training": _training_facts(record, ck),
                    "severity_counts": counts(findings), "skipped": ev.get("skipped") or [],
                    "reviews": applicable, "evaluation": str(ev_path),
                    "generated_at": datetime.now(UTC).isoformat(timespec="seconds")},
    }


def write_checkpoint_report(config: Config, run_id: str, checkpoint_id: str) -> tuple[dict[str, Any], Path]:
    """Build and write report.json and report.html (each atomically); returns (document, folder)."""
    from lora_pipeline.report.checkpoint_html import render_checkpoint_html

    doc = build_checkpoint_report(config, run_id, checkpoint_id)
    storage = Storage(Path(config.storage))
    folder = storage.checkpoint_report_dir(run_id, checkpoint_id)
    html = render_checkpoint_html(doc, storage, folder)
    atomic_write_text(folder / HTML_FILE, html)
    atomic_write_json(folder / REPORT_FILE, doc)
    return doc, folder
