"""`lora-pipeline diagnose [--run ID] [--checkpoint ID] [--json]`: the findings and verdicts of the
latest reports in storage (reports/<run>/<checkpoint>/report.json and reports/<run>/report.json)."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", metavar="ID", help="only this run")
    p.add_argument("--checkpoint", metavar="ID", help="only this checkpoint")
    p.add_argument("--json", action="store_true", help="print one JSON document")


def collect(storage_root, run: str | None, checkpoint: str | None) -> dict:
    from lora_pipeline.storage import Storage

    base = Storage(storage_root).root / "reports"
    out = {"reports_dir": str(base), "runs": []}
    if not base.is_dir():
        return out
    for run_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        if run and run_dir.name != run:
            continue
        run_doc = _read(run_dir / "report.json")
        entry = {"run_id": run_dir.name, "verdict": run_doc.get("verdict") if run_doc else None,
                 "best": run_doc.get("best") if run_doc else None,
                 "findings": run_doc.get("findings", []) if run_doc else [], "checkpoints": []}
        for ck_dir in sorted(p for p in run_dir.iterdir() if p.is_dir()):
            if checkpoint and ck_dir.name != checkpoint:
                continue
            doc = _read(ck_dir / "report.json")
            if doc:
                entry["checkpoints"].append({k: doc.get(k) for k in ("checkpoint_id", "step", "verdict", "findings")}
                                            | {"report": str(ck_dir / "report.html")})
        if run_doc or entry["checkpoints"]:
            out["runs"].append(entry)
    return out


def _read(path):
    try:
        d = json.loads(path.read_text("utf-8"))
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


def _line(f: dict) -> str:
    return f"    {f['severity']:5} {f['code']}: {f['message']}"


def run(args: argparse.Namespace) -> int:
    from lora_pipeline.cli import WorkFailed
    from lora_pipeline.config import load_config

    config = load_config(args.config)
    found = collect(config.storage, args.run, args.checkpoint)
    if not found["runs"]:
        what = " ".join(x for x in (args.run and f"run {args.run}", args.checkpoint and f"checkpoint {args.checkpoint}") if x)
        raise WorkFailed(f"no report{' for ' + what if what else ''} under {found['reports_dir']} "
                         "(materialize checkpoint_report / run_report first)")
    if args.json:
        print(json.dumps(found, indent=1, default=str))
        return 0
    for r in found["runs"]:
        print(f"run {r['run_id']}: run-level verdict {r['verdict'] or '(no run report)'}; best checkpoint {r['best'] or 'none'}")
        for f in r["findings"]:
            print(_line(f))
        for c in r["checkpoints"]:
            rejected = next((f for f in c["findings"] if f.get("code") == "REVIEW.REJECTED"), None)
            said = f", REJECTED by {(rejected.get('evidence') or {}).get('by') or 'a reviewer'}" if rejected else ""
            print(f"  {c['checkpoint_id']}: {c['verdict']}{said}  ({c['report']})")
            for f in c["findings"]:
                print("  " + _line(f))
    return 0
