"""report.html of one checkpoint: verdict banner, the four contracts with evidence, findings by layer
with fixes, provenance, the comparison grid (prompt x seed rows; base | LoRA without trigger | LoRA with
trigger), quality signals, loss and weight-norm plots, reviews. Self-contained: images are inline
(thumbnails link the full renders by relative path), no script, no network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lora_pipeline.report.html_common import (
    esc,
    findings_table,
    kv_table,
    linked_thumb,
    page,
    reviews_table,
    training_plots,
)
from lora_pipeline.storage import Storage

ARMS = (("base", "base"), ("lora_no_trigger", "LoRA without trigger"), ("lora_trigger", "LoRA with trigger"))
LAYERS = ("provenance", "runtime", "comparison", "operational", "dataset", "training", "quality", "review")


def _pre(obj: Any, limit: int = 3000) -> str:
    return f"<pre>{esc(json.dumps(obj, indent=1, default=str)[:limit])}</pre>"


def contracts_html(contracts: dict[str, Any]) -> str:
    rows = []
    for name, c in contracts.items():
        cls, word = ("pass", "pass") if c["passed"] else ("fail", "FAIL")
        rows.append(f"<tr><th>{esc(name)}</th><td class=\"{cls}\">{word}</td><td>{esc(', '.join(c['errors']) or '-')}"
                    f"</td><td><details><summary>evidence</summary>{_pre(c['evidence'])}</details></td></tr>")
    return "<table><tr><th>contract</th><th>result</th><th>errors</th><th>evidence</th></tr>" + "".join(rows) + "</table>"


def findings_by_layer(findings: list[dict[str, Any]]) -> str:
    parts = []
    for layer in LAYERS:
        fs = [f for f in findings if f["layer"] == layer]
        if fs:
            parts.append(f"<h3>{esc(layer)} ({len(fs)})</h3>{findings_table(fs, with_layer=False)}")
    return "".join(parts) or "<p>No findings in any layer.</p>"


def provenance_html(doc: dict[str, Any]) -> str:
    p, renders = doc["provenance"], doc["renders"]
    b, lora = p.get("base_model") or {}, p.get("lora") or {}
    ev, rt = p.get("eval") or {}, p.get("runtime") or {}
    first = renders[0] if renders else {}
    tokens = {f"{r['arm']} {r.get('prompt_index')}-{r['seed']}": r.get("token_counts") for r in renders}
    rows = [
        ("model modes", esc(", ".join(sorted({r["arm"] for r in renders})) or "none rendered")),
        ("base model", esc(f"{b.get('name')} ({b.get('architecture')}) {b.get('path')}")),
        ("base model sha256", f"<code>{esc(b.get('sha256'))}</code>"),
        ("LoRA path", esc(lora.get("path"))), ("LoRA sha256", f"<code>{esc(lora.get('sha256'))}</code>"),
        ("LoRA scale / alpha source", esc(f"{lora.get('scale')} / {lora.get('alpha_source')}")),
        ("LoRA as applied", esc(_as_applied(lora))),
        ("LoRA load proof", esc(_proof((doc.get("metrics") or {}).get("lora_load") or {}))),
        ("trigger", f"<code>{esc(p.get('trigger'))}</code>"),
        ("prompts", "<br>".join(esc(x) for x in ev.get("prompts") or [])),
        ("negative prompt", esc(ev.get("negative_prompt"))), ("seeds", esc(ev.get("seeds"))),
        ("size", esc(f"{first.get('width', ev.get('width'))}x{first.get('height', ev.get('height'))}")),
        ("steps", esc(first.get("steps", ev.get("steps")))),
        ("scheduler", esc(first.get("scheduler") or ev.get("scheduler"))),
        ("guidance", esc(first.get("guidance_scale", ev.get("guidance_scale")))),
        ("dtype / device", esc(f"{rt.get('dtype')} / {rt.get('device')}")),
        ("library versions", esc(", ".join(f"{k} {v}" for k, v in (rt.get("library_versions") or {}).items()))),
        ("token counts", f"<details><summary>per render</summary>{_pre(tokens)}</details>"),
        ("dataset snapshot", _pre(p.get("dataset_snapshot"))),
        ("Dagster run", f"<code>{esc(p.get('dagster_run_id'))}</code>"),
    ]
    return kv_table(rows)


def grid_html(renders: list[dict[str, Any]], storage_root: Path, page_dir: Path) -> str:
    by = {(r.get("prompt_index"), r["seed"], r["arm"]): r for r in renders}
    keys = sorted({(r.get("prompt_index"), r["seed"]) for r in renders}, key=lambda k: (k[0] or 0, k[1]))
    if not keys:
        return "<p>No renders.</p>"
    head = "<tr><th>prompt x seed</th>" + "".join(f"<th>{esc(label)}</th>" for _, label in ARMS) + "</tr>"
    rows = []
    for pi, seed in keys:
        prompt = next((by[(pi, seed, a)]["prompt"] for a in ("lora_trigger", "base") if (pi, seed, a) in by), "")
        cells = "".join(f"<td>{linked_thumb(storage_root, (by.get((pi, seed, arm)) or {}).get('path'), page_dir, f'{arm} {pi}-{seed}')}</td>"
                        for arm, _ in ARMS)
        rows.append(f"<tr><th>#{esc(pi)} seed {esc(seed)}<br><small>{esc(prompt)}</small></th>{cells}</tr>")
    return f"<table class=\"grid\" id=\"comparison-grid\">{head}{''.join(rows)}</table>"


def render_checkpoint_html(doc: dict[str, Any], storage: Storage, page_dir: Path) -> str:
    m = doc["metrics"]
    c = m.get("severity_counts") or {}
    run_dir = storage.run_record(doc["run_id"]).parent
    body = [
        f"<p>Run <code>{esc(doc['run_id'])}</code>, checkpoint <code>{esc(doc['checkpoint_id'])}</code>, step "
        f"{esc(doc['step'])}. Findings: {c.get('error', 0)} error, {c.get('warn', 0)} warn, {c.get('info', 0)} info. "
        f"Run report: <a href=\"../report.html\">../report.html</a></p>",
        "<h2>Contracts</h2>", contracts_html(m.get("contracts") or {}),
        "<h2>Findings by layer</h2>", findings_by_layer(doc["findings"]),
        "<h2>Comparison grid</h2><p>Rows: prompt x seed. Thumbnails link the full renders.</p>",
        grid_html(doc["renders"], storage.root, page_dir),
        "<h2>Quality signals</h2>", kv_table([("comparison", _pre(m.get("comparison"))),
                                              ("quality", _pre(m.get("quality"))),
                                              ("determinism", _pre(m.get("determinism")))]),
        "<h2>Training</h2>", kv_table([(k, esc(v)) for k, v in (m.get("training") or {}).items()]),
        training_plots(run_dir),
        "<h2>Provenance</h2>", provenance_html(doc),
        "<h2>Reviews</h2>", reviews_table(m.get("reviews") or []),
    ]
    from lora_pipeline.report.reviews import standing

    review = standing(m.get("reviews") or [])
    return page(f"{doc['run_id']} / {doc['checkpoint_id']}", doc["verdict"],
                f"{doc['run_id']} {doc['checkpoint_id']}" + (f" · {review.upper()}" if review else ""),
                "".join(body))


def _as_applied(lora: dict) -> str:
    """What the renders applied, verified by value against the file (lora/verify.py)."""
    if not lora.get("applied"):
        return "not rendered with the LoRA"
    how = "as the file defines it" if lora["applied"] == "as_file" else "PARTIAL: not as the file defines it"
    return (f"{how} ({lora.get('modules_as_file')} modules by value); rank {lora.get('file_ranks')}, "
            f"alpha {lora.get('file_alphas')} ({', '.join(lora.get('file_alpha_sources') or [])}), "
            f"scale alpha/rank {lora.get('file_scales')} x strength {lora.get('scale')}")


def _proof(lora_load: dict) -> str:
    """Where the load proof comes from: this evaluation, or a proof record (render/replay.py)."""
    reused = lora_load.get("proof_reused")
    if isinstance(reused, dict):
        return (f"reused: proven {reused.get('created_at')} in Dagster run {reused.get('dagster_run_id')} on the same "
                "base, file, settings and library versions; every render came from the render cache and the base "
                "was not loaded")
    return "made in this evaluation" if lora_load else "none (the LoRA was not loaded)"
