"""What `lora-pipeline demo` prints after building the workspace.

Until the full asset graph lands, the demo shows what exists: every checkpoint of every run,
inspected (format, rank/alpha, weight-delta norm, NaN/Inf), as one table.
"""

from __future__ import annotations

from pathlib import Path

from lora_pipeline.config import Config


def _checkpoints(runs_dir: Path) -> list[tuple[str, Path]]:
    out = []
    for run in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out += [(run.name, f) for f in sorted(run.rglob("*.safetensors"))]
    return out


def run_demo_graph(config: Config) -> int:
    from lora_pipeline.lora.inspect import inspect_file

    rows = [("run", "checkpoint", "format", "rank", "alpha", "delta norm", "NaN/Inf")]
    for run, f in _checkpoints(config.training_runs):
        r = inspect_file(f)
        alphas = sorted({m.alpha for m in r.modules if m.alpha is not None})
        rows.append((run, f.name, r.key_format, ",".join(map(str, r.ranks)), ",".join(f"{a:g}" for a in alphas),
                     f"{r.total_delta_norm:.4g}", str(len(r.nonfinite_tensors))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    return 0
