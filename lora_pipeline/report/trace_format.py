"""The text form of a trace (`lora-pipeline trace IMAGE` without `--json`).

Values that came from the image's chunk are printed with control characters escaped, so a forged
chunk cannot rewrite the terminal; the last lines count match / mismatch / unverifiable and give the
reason of every check that is not a match.
"""

from __future__ import annotations

from typing import Any


def _safe(line: str) -> str:
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in line)


def _short(v: Any) -> str:
    return f"{str(v)[:16]}..." if v else "(none)"


def _st(c: dict[str, Any] | None) -> str:
    if not c:
        return ""
    if c["status"] == "ok":
        return "[hash ok]"
    if c["status"] == "missing":
        return "[MISSING on disk now]"
    if c["status"] == "unverifiable":
        return f"[UNVERIFIABLE: {c['reason']}]"
    if c.get("now") and c["now"] != c.get("expected"):
        return f"[MISMATCH: recorded {_short(c['expected'])}, on disk now {_short(c['now'])}]"
    return f"[MISMATCH: {c['reason']}]"


def _dg(d: dict[str, Any]) -> str:
    return f"{d['asset']}[{d['partition'] or '?'}] run {d['run_id'] or '(not materialized through Dagster)'}"


def format_trace(t: dict[str, Any]) -> str:
    r, b, ck = t["render"], t["base_model"], t["checkpoint"]
    render_check = next((c for c in t["checks"] if c["what"].startswith("render file")), None)
    lines = [f"render            {t['image']} {_st(render_check)}",
             f"  manifest        arm {r['arm']}, prompt {r['prompt_index']}, seed {r['seed']}, {r['size']}, "
             f"{r['steps']} steps, {r['scheduler']}, cfg {r['guidance_scale']}: {r['prompt']!r}",
             f"  dagster         {_dg(r['dagster'])}",
             f"base model        {b.get('name')} {b.get('path')} sha256 {_short(b.get('sha256'))} {_st(b['check'])}",
             f"checkpoint        {ck['checkpoint_id']} step {ck['step']} {ck['path'] or ck['claimed_path']} sha256 "
             f"{_short(ck['sha256_at_ingestion'] or ck['sha256_at_render'])} {_st(ck['check'])}",
             f"  dagster         {_dg(ck['dagster'])}"]
    run = t["run"]
    if "missing" in run:
        lines.append(f"training run      {run['run_id']}: {run['missing']}")
    else:
        lines += [f"training run      {run['run_id']} ({run['format']}) {run['folder']}; config: "
                  f"{', '.join(map(str, run['config_files'])) or 'none'}", f"  dagster         {_dg(run['dagster'])}"]
        ds = t["dataset_snapshot"]
        if "missing" in ds:
            lines.append(f"dataset snapshot  {ds.get('dataset')} {ds.get('snapshot_id')}: {ds['missing']}")
        else:
            lines += [f"dataset snapshot  {ds['dataset']} {ds['snapshot_id']} manifest {ds['manifest']}",
                      f"  dagster         {_dg(ds['dagster'])}", f"source files      {ds['files']} under {ds['source_root']}"]
            for f in t["source_files"]:
                src = {"status": f["status"], "expected": f["sha256"], "now": f["sha256_now"], "reason": f["reason"]}
                stored = {"status": f["stored_copy_status"], "expected": f["sha256"],
                          "now": f["stored_copy_sha256_now"], "reason": "see below"}
                lines.append(f"  {f['relative_path']}  {_short(f['sha256'])}  {_st(src)}  stored copy {_st(stored)}")
    for fd in t.get("findings") or []:
        lines.append(f"finding           {fd['code']} ({fd['severity']}): {fd['message']}")
    s = t["summary"]
    lines.append(f"checks: {s['match']} match, {s['mismatch']} mismatch, {s['unverifiable']} unverifiable")
    for c in t["checks"]:
        if c["status"] != "ok":
            label = "MISMATCH" if c["status"] == "mismatch" else c["status"].upper()
            lines.append(f"  {label:<12} {c['what']}: {c['reason'] or 'recorded hash differs from the file now'}")
    return "\n".join(_safe(line) for line in lines)
