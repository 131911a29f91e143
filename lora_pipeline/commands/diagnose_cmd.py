"""`lora-pipeline diagnose [--run ID] [--checkpoint ID] [--json] [--fail-on invalid|error|warn]`: the
findings and verdicts of the latest reports in storage (reports/<run>/<checkpoint>/report.json and
reports/<run>/report.json), each verdict with the latest review decision beside it (read from
reviews.jsonl now, so a review recorded after the report was written shows too).

`--fail-on LEVEL` gates a release (CI): exit 1 with one line naming the checkpoints when a selected
checkpoint reaches LEVEL:
- `invalid`: its verdict is `evaluation_invalid` (the evaluation path itself is broken);
- `error`: it has a finding of severity `error` (any layer; equivalently, its verdict is not `ok`);
- `warn`: it has a finding of severity `warn` or `error`;
and at every level: a reviewer's latest decision for it is `reject`. No checkpoint report selected is
also exit 1 (nothing to gate on). Otherwise exit 0 (CONTRACT section 6).
"""

from __future__ import annotations

import argparse
import json

FAIL_ON = ("invalid", "error", "warn")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", metavar="ID", help="only this run")
    p.add_argument("--checkpoint", metavar="ID", help="only this checkpoint")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--fail-on", choices=FAIL_ON, default=None,
                   help="exit 1 when a selected checkpoint reaches this level: invalid (verdict "
                        "evaluation_invalid), error (an error finding), warn (a warn or error finding); "
                        "a checkpoint a reviewer rejected reaches every level")


def collect(storage_root, run: str | None, checkpoint: str | None) -> dict:
    from lora_pipeline.demo_report import Standing, best_of, best_text
    from lora_pipeline.storage import Storage

    base = Storage(storage_root).root / "reports"
    out = {"reports_dir": str(base), "runs": []}
    if not base.is_dir():
        return out
    standing = Standing(Storage(storage_root).root)
    for run_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        if run and run_dir.name != run:
            continue
        run_doc = _read(run_dir / "report.json")
        entry = {"run_id": run_dir.name, "verdict": run_doc.get("verdict") if run_doc else None,
                 "best": best_of(run_doc, standing), "best_text": best_text(run_doc, standing),
                 "findings": run_doc.get("findings", []) if run_doc else [],
                 "report": str(run_dir / "report.html") if run_doc else None, "checkpoints": []}
        for ck_dir in sorted(p for p in run_dir.iterdir() if p.is_dir()):
            if checkpoint and ck_dir.name != checkpoint:
                continue
            doc = _read(ck_dir / "report.json")
            if doc:
                ck_id = str(doc.get("checkpoint_id") or ck_dir.name)
                entry["checkpoints"].append({k: doc.get(k) for k in ("checkpoint_id", "step", "verdict", "findings")}
                                            | {"review": standing.of(run_dir.name, ck_id),
                                               "report": str(ck_dir / "report.html")})
        if run_doc or entry["checkpoints"]:
            out["runs"].append(entry)
    return out


def reaches(c: dict, level: str) -> bool:
    """True when checkpoint entry `c` (of collect) reaches `level` (module docstring)."""
    if (c.get("review") or "").startswith("rejected"):
        return True
    severities = {f.get("severity") for f in c.get("findings") or [] if isinstance(f, dict)}
    if level == "invalid":
        return c.get("verdict") == "evaluation_invalid"
    if level == "error":
        return "error" in severities
    return bool(severities & {"error", "warn"})


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
    checkpoints = [(r["run_id"], c) for r in found["runs"] for c in r["checkpoints"]]
    failing = [f"{r}/{c['checkpoint_id']} ({c['verdict']}{', ' + c['review'] if c.get('review') else ''})"
               for r, c in checkpoints if args.fail_on and reaches(c, args.fail_on)]
    if args.fail_on:
        found["fail_on"] = {"level": args.fail_on, "checkpoints": len(checkpoints), "failing": failing}
    if args.json:
        print(json.dumps(found, indent=1, default=str))
    else:
        _print(found)
    if args.fail_on and not checkpoints:
        raise WorkFailed(f"--fail-on {args.fail_on}: no checkpoint report selected, nothing to gate on "
                         "(evaluate the checkpoints first)")
    if failing:
        shown = ", ".join(failing[:5]) + (f" (+{len(failing) - 5} more)" if len(failing) > 5 else "")
        raise WorkFailed(f"--fail-on {args.fail_on}: {len(failing)} of {len(checkpoints)} checkpoint(s) reach "
                         f"it: {shown}")
    return 0


def _print(found: dict) -> None:
    from lora_pipeline.demo_report import with_review

    for r in found["runs"]:
        print(f"run {r['run_id']}: run-level verdict {r['verdict'] or '(no run report)'}; {r['best_text']}")
        for f in r["findings"]:
            print(_line(f))
        for c in r["checkpoints"]:
            print(f"  {c['checkpoint_id']}: {with_review(c['verdict'], c.get('review'))}  ({c['report']})")
            for f in c["findings"] or []:
                print("  " + _line(f))
    if "fail_on" in found:
        fo = found["fail_on"]
        print(f"--fail-on {fo['level']}: {len(fo['failing'])} of {fo['checkpoints']} checkpoint(s) reach it")
