"""report.html of a run: verdict of the run-level findings, per-checkpoint verdicts, candidates for the
best checkpoint with the reason, signal curves over steps (PIL-drawn PNGs, inline), the progression
grid (for each prompt x seed: checkpoints x arms), run-level findings, the training plots, reviews."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_pipeline.report.checkpoint_html import ARMS
from lora_pipeline.report.html_common import (
    VERDICT_COLOURS,
    data_uri,
    esc,
    findings_table,
    img_file,
    kv_table,
    linked_thumb,
    page,
    reviews_table,
)
from lora_pipeline.storage import Storage

PALETTE = [(20, 60, 200), (200, 90, 0), (30, 140, 60), (160, 40, 160)]


def signal_png(name: str, points: list[list[float]]) -> bytes:
    from lora_pipeline.training.curves import line_chart

    return line_chart(f"{name} over steps", [(name.split(".")[-1][:18], [(p[0], p[1]) for p in points], PALETTE[0])],
                      marks=[p[0] for p in points])


def checkpoints_html(doc: dict[str, Any]) -> str:
    rows = []
    for c in doc["checkpoints"]:
        v = c["verdict"] or "not evaluated"
        colour = VERDICT_COLOURS.get(c["verdict"] or "", "#777")
        link = f"<a href=\"{esc(c['checkpoint_id'])}/report.html\">report</a>" if c["report"] else "-"
        sc = c.get("severity_counts") or {}
        review = c.get("review")
        mark = (f"<br><small style=\"color:{'#b00020' if review.startswith('rejected') else '#555'}\">"
                f"{esc(review)}</small>") if review else ""
        rows.append(f"<tr><td><code>{esc(c['checkpoint_id'])}</code></td><td>{esc(c['step'])}</td>"
                    f"<td style=\"color:{colour};font-weight:600\">{esc(v)}{mark}</td>"
                    f"<td>{sc.get('error', 0)} / {sc.get('warn', 0)} / {sc.get('info', 0)}</td>"
                    f"<td>{esc(', '.join(c['error_codes']) or '-')}</td><td>{link}</td></tr>")
    return ("<table id=\"checkpoints\"><tr><th>checkpoint</th><th>step</th><th>verdict</th><th>error/warn/info</th>"
            "<th>error codes</th><th></th></tr>" + "".join(rows) + "</table>")


def candidates_html(doc: dict[str, Any]) -> str:
    if not doc["candidates"]:
        return ("<p>No candidate: every evaluated checkpoint has an error finding, no clear LoRA effect, a "
                "collapse finding or a rejection.</p>")
    rows = "".join(f"<tr><td>{'best' if i == 0 else i + 1}</td><td><code>{esc(c['checkpoint_id'])}</code></td>"
                   f"<td>{esc(c['step'])}</td><td>{esc(c['reason'])}</td></tr>" for i, c in enumerate(doc["candidates"]))
    return f"<table><tr><th>rank</th><th>checkpoint</th><th>step</th><th>why</th></tr>{rows}</table>"


def progression_html(rows: list[dict[str, Any]], storage: Storage, page_dir: Path) -> str:
    keys, by = set(), {}
    for row in rows:
        for r in (row.get("_doc") or {}).get("renders", []):
            keys.add((r.get("prompt_index") or 0, r["seed"]))
            by[(row["checkpoint_id"], r.get("prompt_index") or 0, r["seed"], r["arm"])] = r
    if not keys:
        return "<p>No renders yet.</p>"
    parts = []
    for pi, seed in sorted(keys):
        prompt = next((r["prompt"] for (_, p, s, a), r in by.items() if (p, s, a) == (pi, seed, "lora_trigger")), "")
        head = "<tr><th>checkpoint</th>" + "".join(f"<th>{esc(label)}</th>" for _, label in ARMS) + "</tr>"
        body = "".join(_progression_row(row, by, pi, seed, storage, page_dir) for row in rows)
        parts.append(f"<h3>prompt #{esc(pi)}, seed {esc(seed)}: <small>{esc(prompt)}</small></h3>"
                     f"<table class=\"grid progression\">{head}{body}</table>")
    return "".join(parts)


def _progression_row(row: dict[str, Any], by: dict, pi: int, seed: int, storage: Storage, page_dir: Path) -> str:
    cid = row["checkpoint_id"]
    cells = "".join(f"<td>{linked_thumb(storage.root, (by.get((cid, pi, seed, arm)) or {}).get('path'), page_dir, cid + ' ' + arm)}</td>"
                    for arm, _ in ARMS)
    return f"<tr><th>{esc(cid)}<br><small>{esc(row['verdict'] or 'not evaluated')}</small></th>{cells}</tr>"


def render_run_html(doc: dict[str, Any], rows: list[dict[str, Any]], storage: Storage, page_dir: Path) -> str:
    run = doc["run"]
    run_dir = storage.run_record(doc["run_id"]).parent
    curves = "".join(f'<img alt="{esc(k)}" src="{data_uri(signal_png(k, pts))}">' for k, pts in doc["signals"].items())
    body = [
        kv_table([("folder", esc(run["folder"])), ("format", esc(run["format"])),
                  ("trigger", f"<code>{esc(run['trigger'])}</code>"),
                  ("base model", esc(f"{run['base_model'].get('name')} ({run['base_model'].get('architecture')})")),
                  ("dataset snapshot", esc(f"{run['dataset'].get('dataset')} {run['dataset'].get('snapshot_id')}")),
                  ("rank / alpha / lr / steps", esc(f"{run['rank']} / {run['alpha']} / {run['learning_rate']} / {run['steps']}")),
                  ("best checkpoint", f"<code>{esc(doc['best'] or 'none')}</code>")]),
        "<h2>Checkpoints</h2>", checkpoints_html(doc),
        "<h2>Candidates for the best checkpoint</h2>", candidates_html(doc),
        "<h2>Run-level findings</h2>", findings_table(doc["findings"]),
        "<h2>Signals over steps</h2>", f"<div class=\"plots\">{curves or '<p>No signals yet.</p>'}</div>",
        "<h2>Training</h2><div class=\"plots\">", img_file(run_dir / "loss.png", "loss curve"),
        img_file(run_dir / "delta_norm.png", "weight-norm curve"), "</div>",
        "<h2>Progression</h2>", progression_html(rows, storage, page_dir),
        "<h2>Reviews</h2>", reviews_table(doc["reviews"]),
    ]
    return page(f"run {doc['run_id']}", doc["verdict"], f"run-level; best checkpoint: {doc['best'] or 'none'}",
                "".join(body))
