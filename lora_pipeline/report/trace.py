"""The backward walk (CONTRACT section 6): a render -> its manifest (from the PNG's own
`lora_pipeline` chunk, so a copied file works) -> the base model and the checkpoint file (path, sha256,
step) -> the training run (folder, format, config files) -> the dataset snapshot (id, manifest) ->
the source files (paths, sha256). Each step names the Dagster asset and partition that produced it and
the Dagster run id (the render's from its manifest; the others from the instance, when one exists).

Every recorded hash is re-checked against what is on disk now; `checks` lists each comparison with
status ok | mismatch | missing, so a checkpoint file replaced after the render is reported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_pipeline.config import Config
from lora_pipeline.fsutil import model_hash, sha256_file
from lora_pipeline.storage import Storage, checkpoint_partition_key


class TraceError(Exception):
    """The image cannot be traced at all (unreadable, not a lora-pipeline render); one line."""


class _Checks:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def file(self, what: str, path: str | None, expected: str | None, hasher=sha256_file) -> dict[str, Any]:
        p = Path(path) if path else None
        if p is None or not p.exists():
            item = {"what": what, "path": path, "expected": expected, "now": None, "status": "missing"}
        else:
            now = hasher(p)
            item = {"what": what, "path": str(p), "expected": expected, "now": now,
                    "status": "ok" if expected in (None, now) else "mismatch"}
        self.items.append(item)
        return item


RunLookup = Callable[[str, str], "str | None"]  # (asset, partition) -> Dagster run id of its latest materialization


def trace_image(config: Config, image: str | os.PathLike, run_lookup: RunLookup | None = None) -> dict[str, Any]:
    """The backward walk. `run_lookup` comes from the Dagster layer (assets/lookup.py); without it
    the walk works the same, with the run ids the files themselves record."""
    from lora_pipeline.render.manifest import read_png_chunks

    img = Path(image)
    if not img.is_file():
        raise TraceError(f"{img}: no such file")
    try:
        chunks = read_png_chunks(img)
    except (OSError, ValueError) as e:
        raise TraceError(f"{img}: not a readable PNG with a lora_pipeline chunk ({type(e).__name__})") from None
    m = chunks.get("lora_pipeline")
    if not isinstance(m, dict) or "run_id" not in m:
        raise TraceError(f"{img}: no lora_pipeline chunk: not a lora-pipeline render (or its metadata was stripped)")
    storage = Storage(Path(config.storage))
    runs = run_lookup or (lambda _asset, _partition: None)
    checks = _Checks()
    run_id, cid = m["run_id"], m["checkpoint_id"]
    ckey = checkpoint_partition_key(run_id, cid)
    name = f"{m.get('prompt_index')}-{m.get('seed')}"
    stored_png = storage.renders_dir(run_id, cid) / m["arm"] / f"{name}.png"
    ev = _read(storage.renders_dir(run_id, cid) / "evaluation.json") or {}
    entry = next((r for r in ev.get("renders") or [] if r.get("arm") == m["arm"]
                  and f"{r.get('prompt_index')}-{r.get('seed')}" == name), {})
    checks.file("render file (as recorded by its evaluation)", str(img), entry.get("sha256"))
    sidecar = _read(stored_png.with_suffix(".json"))
    render = {"path": str(img.resolve()), "stored_path": str(stored_png), "arm": m["arm"], "prompt": m.get("prompt"),
              "negative_prompt": m.get("negative_prompt"), "seed": m.get("seed"),
              "size": f"{m.get('width')}x{m.get('height')}", "steps": m.get("steps"), "scheduler": m.get("scheduler"),
              "guidance_scale": m.get("guidance_scale"), "created_at": m.get("created_at"),
              "sidecar_matches_chunk": sidecar == m if sidecar is not None else None,
              "parameters": chunks.get("parameters"),
              "dagster": {"asset": "eval_renders", "partition": ckey, "run_id": m.get("dagster_run_id")}}
    b = m.get("base_model") or {}
    base = {**b, "check": checks.file("base model", b.get("path"), b.get("sha256"), model_hash)}
    from lora_pipeline.training.ingest import IngestError, load_run_record

    try:
        record = load_run_record(config.storage, run_id)
    except IngestError as e:
        raise TraceError(str(e)) from None
    ck = record.checkpoint(cid) if record else None
    lora = m.get("lora") or {}
    ck_path = lora.get("path") or (ck.path if ck else None)
    checkpoint = {"checkpoint_id": cid, "path": ck_path, "sha256_at_render": lora.get("sha256"),
                  "sha256_at_ingestion": ck.sha256 if ck else None, "step": ck.step if ck else None,
                  "epoch": ck.epoch if ck else None, "used_by_this_render": bool(lora),
                  "check": checks.file("checkpoint file", ck_path, lora.get("sha256") or (ck.sha256 if ck else None)),
                  "dagster": {"asset": "lora_checkpoint", "partition": ckey, "run_id": runs("lora_checkpoint", ckey)}}
    out: dict[str, Any] = {"image": str(img.resolve()), "render": render, "base_model": base, "checkpoint": checkpoint}
    if record is None:
        out["run"] = {"run_id": run_id, "missing": f"{storage.run_record(run_id)}: no run record"}
        return _finish(out, checks)
    out["run"] = {"run_id": run_id, "folder": record.folder, "format": record.format, "run_json": str(storage.run_record(run_id)),
                  "config_files": record.config_files, "started_at": record.started_at, "trigger": record.trigger,
                  "rank": record.rank, "alpha": record.alpha, "learning_rate": record.learning_rate,
                  "steps": record.steps, "resolution": record.resolution, "sources": record.sources,
                  "dagster": {"asset": "training_run", "partition": run_id, "run_id": runs("training_run", run_id)}}
    out["dataset_snapshot"], out["source_files"] = _snapshot(config, record, checks, runs)
    return _finish(out, checks)


def _snapshot(config: Config, record, checks: _Checks, runs) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from lora_pipeline.dataset.snapshot import load_snapshot

    name, sid = record.dataset.name, record.dataset.snapshot_id
    if not (name and sid):
        return {"dataset": name, "snapshot_id": sid, "missing": "the run is not linked to a dataset snapshot"}, []
    snap = load_snapshot(config.storage, name, sid)
    if snap is None:
        return {"dataset": name, "snapshot_id": sid, "missing": "the snapshot is not in storage"}, []
    storage = Storage(Path(config.storage))
    files = []
    for rel, sha in sorted(snap.files.items()):
        item = checks.file(f"source file {rel}", str(Path(snap.source_root) / rel), sha)
        files.append({"relative_path": rel, "path": item["path"], "sha256": sha, "status": item["status"],
                      "sha256_now": item["now"], "stored_copy": str(storage.object(sha)),
                      "stored_copy_present": storage.object(sha).is_file()})
    info = {"dataset": name, "snapshot_id": sid, "created_at": snap.created_at, "folder": str(snap.path),
            "manifest": str(snap.manifest_path), "source_root": snap.source_root, "files": len(snap.files),
            "dagster": {"asset": "dataset_snapshot", "partition": name, "run_id": runs("dataset_snapshot", name)}}
    return info, files


def _read(path: Path) -> dict[str, Any] | None:
    try:
        d = json.loads(path.read_text("utf-8"))
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


def _finish(out: dict[str, Any], checks: _Checks) -> dict[str, Any]:
    out["checks"] = checks.items
    out["mismatches"] = [c for c in checks.items if c["status"] != "ok"]
    return out


def format_trace(t: dict[str, Any]) -> str:
    def st(c: dict[str, Any] | None) -> str:
        if not c:
            return ""
        if c["status"] == "ok":
            return "[hash ok]"
        if c["status"] == "missing":
            return "[MISSING on disk now]"
        return f"[MISMATCH: recorded {str(c['expected'])[:16]}..., on disk now {str(c['now'])[:16]}...]"

    r, b, ck = t["render"], t["base_model"], t["checkpoint"]
    render_check = next((c for c in t["checks"] if c["what"].startswith("render")), None)
    lines = [f"render            {t['image']} {st(render_check) if render_check and render_check['expected'] else ''}",
             f"  manifest        arm {r['arm']}, seed {r['seed']}, {r['size']}, {r['steps']} steps, {r['scheduler']}, "
             f"cfg {r['guidance_scale']}: {r['prompt']!r}",
             f"  dagster         {_dg(r['dagster'])}",
             f"base model        {b.get('name')} {b.get('path')} sha256 {str(b.get('sha256'))[:16]}... {st(b['check'])}",
             f"checkpoint        {ck['checkpoint_id']} step {ck['step']} {ck['path']} sha256 "
             f"{str(ck['sha256_at_render'] or ck['sha256_at_ingestion'])[:16]}... {st(ck['check'])}",
             f"  dagster         {_dg(ck['dagster'])}"]
    run = t["run"]
    if "missing" in run:
        lines.append(f"training run      {run['missing']}")
    else:
        lines += [f"training run      {run['run_id']} ({run['format']}) {run['folder']}; config: "
                  f"{', '.join(run['config_files']) or 'none'}", f"  dagster         {_dg(run['dagster'])}"]
        ds = t["dataset_snapshot"]
        if "missing" in ds:
            lines.append(f"dataset snapshot  {ds.get('dataset')} {ds.get('snapshot_id')}: {ds['missing']}")
        else:
            lines += [f"dataset snapshot  {ds['dataset']} {ds['snapshot_id']} manifest {ds['manifest']}",
                      f"  dagster         {_dg(ds['dagster'])}", f"source files      {ds['files']} under {ds['source_root']}"]
            lines += [f"  {f['relative_path']}  {f['sha256'][:16]}...  {st({'status': f['status'], 'expected': f['sha256'], 'now': f['sha256_now']})}"
                      for f in t["source_files"]]
    bad = t["mismatches"]
    lines.append(f"{len(bad)} hash check(s) failed: " + "; ".join(f"{c['what']} {c['status']}" for c in bad)
                 if bad else f"all {len(t['checks'])} hash checks match what is on disk now")
    return "\n".join(lines)


def _dg(d: dict[str, Any]) -> str:
    return f"{d['asset']}[{d['partition']}] run {d['run_id'] or '(not materialized through Dagster)'}"
