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
    kv_table,
    linked_thumb,
    page,
    reviews_table,
    training_plots,
)
from lora_pipeline.storage import Storage

PALETTE = [(20, 60, 200), (200, 90, 0), (30, 140, 60), (160, 40, 160)]
# signal -> what its plot is titled (plain English; the signal's name stays in the image's alt text)
SIGNAL_TITLES = {
    "weights.total_delta_norm": "LoRA weight change (norm of delta W, all modules)",
    "training.loss_at_step": "Training loss at the checkpoint's step",
    "comparison.base_vs_lora_trigger_mean_abs": "LoRA effect: base vs LoRA with trigger (mean abs pixel difference, 0-255)",
    "comparison.lora_trigger_vs_no_trigger_mean_abs": "Trigger effect: LoRA with vs without trigger (mean abs pixel difference, 0-255)",
    "quality.aggregate.lora_effect": "LoRA effect: base vs LoRA with trigger (mean abs difference, 0-1)",
    "quality.aggregate.trigger_effect": "Trigger effect: LoRA with vs without trigger (mean abs difference, 0-1)",
    "quality.aggregate.hf_ratio": "High-frequency energy, LoRA / base (noise when high)",
    "quality.aggregate.seed_diversity_ratio": "Diversity across seeds, LoRA / base (collapse when low)",
    "quality.aggregate.nearest_training_distance": "Distance to the nearest training image (pHash bits; low: memorized)",
    "quality.aggregate.memorized": "Renders that copy a training image",
    "quality.training_images.count": "Training images the renders were compared with",
    "quality.aggregate.clip_base": "CLIP similarity of base renders to the prompt",
    "quality.aggregate.clip_lora_trigger": "CLIP similarity of LoRA renders (with trigger) to the prompt",
}
# a signal that is another one on a different scale: plotted only when that one is missing
SAME_AS = {"comparison.base_vs_lora_trigger_mean_abs": "quality.aggregate.lora_effect",
           "comparison.lora_trigger_vs_no_trigger_mean_abs": "quality.aggregate.trigger_effect"}


# signals plotted in another section of the report
ELSEWHERE = {"weights.total_delta_norm": "Training"}


def signal_title(name: str) -> str:
    """The plain-English title of a signal; an unknown one as words from its name after the group."""
    if name in SIGNAL_TITLES:
        return SIGNAL_TITLES[name]
    words = [w for w in name.split(".")[1:] if w != "aggregate"] or [name]
    return " ".join(words).replace("_", " ").capitalize()


def signal_png(name: str, points: list[list[float]], threshold: dict[str, Any] | None = None) -> bytes:
    from lora_pipeline.training.curves import line_chart

    refs = [(threshold["value"], f"{threshold['bound']} allowed: {threshold['value']:g} ({threshold['threshold']})")] \
        if threshold else None
    return line_chart(f"{signal_title(name)}, per checkpoint step", [(name, [(p[0], p[1]) for p in points], PALETTE[0])],
                      marks=[p[0] for p in points], refs=refs)


def key_signal_pngs(doc: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    """(signal, title, PNG) of the LoRA and trigger effects over steps, for the Dagster asset page; only
    those whose curve shows something."""
    from lora_pipeline.training.curves import informative

    signals, out = doc.get("signals") or {}, []
    for name in ("quality.aggregate.lora_effect", "quality.aggregate.trigger_effect"):
        name = name if name in signals else next((k for k, v in SAME_AS.items() if v == name), name)
        if informative(signals.get(name) or []):
            png = signal_png(name, signals[name], (doc.get("signal_thresholds") or {}).get(name))
            out.append((name, signal_title(name), png))
    return out


def signals_html(signals: dict[str, list[list[float]]], thresholds: dict[str, dict[str, Any]]) -> str:
    """A plot per signal that moves; one sentence for those that do not (constant, one point, or the
    same measure as another plot on another scale)."""
    from lora_pipeline.training.curves import informative

    plots, quiet = [], []
    for name, pts in signals.items():
        if SAME_AS.get(name) in signals or name in ELSEWHERE:
            continue  # the same numbers as SAME_AS[name] (x 255), or drawn in another section
        if informative(pts):
            plots.append(f'<img alt="{esc(name)}" title="{esc(name)}" src="{data_uri(signal_png(name, pts, thresholds.get(name)))}">')
        elif pts:
            values = sorted({f"{p[1]:.4g}" for p in pts})
            quiet.append(f"<li>{esc(signal_title(name))} (<code>{esc(name)}</code>): "
                         + (f"{esc(values[0])} at every checkpoint ({len(pts)})" if len(values) == 1
                            else f"{len(pts)} finite point(s), nothing to plot") + "</li>")
    if not plots and not quiet:
        return "<p>No signals yet.</p>"
    note = (f"<p>Not plotted, since a line would show nothing:</p><ul id=\"flat-signals\">{''.join(quiet)}</ul>"
            if quiet else "")
    return f"<div class=\"plots\">{''.join(plots)}</div>{note}"


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
        "<h2>Signals over steps</h2>", signals_html(doc["signals"], doc.get("signal_thresholds") or {}),
        "<h2>Training</h2>", training_plots(run_dir),
        "<h2>Progression</h2>", progression_html(rows, storage, page_dir),
        "<h2>Reviews</h2>", reviews_table(doc["reviews"]),
    ]
    return page(f"run {doc['run_id']}", doc["verdict"], f"run-level; best checkpoint: {doc['best'] or 'none'}",
                "".join(body))
