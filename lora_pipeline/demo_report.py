"""What `lora-pipeline demo` prints after the graph ran: one row per checkpoint (run, checkpoint,
verdict, top findings), the run-level findings, and where the reports are.

Reads only the files of CONTRACT section 3 (`reports/<run>/<ckpt>/report.json`,
`reports/<run>/report.json`), so it shows exactly what a user or script would find.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lora_pipeline.findings import VERDICT_ORDER

RUN_WIDE_LAYERS = ("dataset", "training")
_SEVERITY_RANK = {"error": 0, "warn": 1, "info": 2}
_LAYER_RANK = {layer: i for i, layer in enumerate(
    [ly for layers, _ in VERDICT_ORDER for ly in layers] + ["review"])}


def top_codes(findings: list[dict[str, Any]], n: int = 4) -> list[str]:
    """The most important distinct codes: errors first, then by the verdict's layer order."""
    ranked = sorted(findings, key=lambda f: (_SEVERITY_RANK.get(f.get("severity"), 3),
                                             _LAYER_RANK.get(f.get("layer"), 99), f.get("code", "")))
    out: list[str] = []
    for f in ranked:
        label = f"{f['code']}({f.get('severity', '?')[0]})"
        if label not in out:
            out.append(label)
    return out[:n]


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def summarise(storage: Path) -> tuple[list[tuple[str, ...]], list[str], list[Path]]:
    """(table rows, run-level lines, run report paths) from the reports under `storage`."""
    rows: list[tuple[str, ...]] = []
    lines: list[str] = []
    paths: list[Path] = []
    reports = storage / "reports"
    for run_dir in sorted(p for p in reports.iterdir() if p.is_dir()) if reports.is_dir() else []:
        for ck in sorted(p for p in run_dir.iterdir() if p.is_dir()):
            doc = _load(ck / "report.json")
            if doc is None:
                rows.append((run_dir.name, ck.name, "(no report)", ""))
                continue
            # Dataset and training findings hold for the whole run: they are listed once per run below.
            own = [f for f in doc.get("findings", []) if f.get("layer") not in RUN_WIDE_LAYERS]
            rows.append((doc.get("run_id", run_dir.name), doc.get("checkpoint_id", ck.name), doc.get("verdict", "?"),
                         " ".join(top_codes(own)) or "-"))
        run_doc = _load(run_dir / "report.json")
        if run_doc is not None:
            paths.append(run_dir / "report.html")
            codes = top_codes(run_doc.get("findings", []), n=6)
            lines.append(f"{run_dir.name}: {' '.join(codes) if codes else 'no run-level findings'}")
    return rows, lines, paths


def print_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    all_rows = [header, *rows]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    for i, r in enumerate(all_rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def print_summary(storage: Path) -> int:
    """Print the demo's closing summary; returns the number of checkpoints with a report."""
    rows, lines, paths = summarise(storage)
    print()
    print_table(rows, ("run", "checkpoint", "verdict", "checkpoint findings (e=error, w=warn, i=info)"))
    if lines:
        print("\nrun-wide findings (dataset, training, progression):")
        for line in lines:
            print(f"  {line}")
    if paths:
        print("\nrun reports:")
        for p in paths:
            print(f"  {p}")
    return sum(1 for r in rows if r[2] != "(no report)")
