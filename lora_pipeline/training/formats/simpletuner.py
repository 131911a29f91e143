"""bghira/SimpleTuner: `checkpoint-<step>/pytorch_lora_weights.safetensors` (+ training_state.json),
final `pytorch_lora_weights.safetensors`, `training_metrics.jsonl` ({"schema_version", "timestamp",
"step", "metrics": {...}}) and the `training_metrics.json` manifest (run_name, status, config
subset)."""

from __future__ import annotations

import re
from pathlib import Path

from lora_pipeline.training.common import (
    Candidate,
    ParsedRun,
    architecture,
    as_float,
    as_int,
    as_loss,
    iso_time,
    read_config,
    read_jsonl,
    resolution,
)

WEIGHTS = "pytorch_lora_weights.safetensors"
_CKPT = re.compile(r"^checkpoint-(\d+)$")
LOSS_KEYS = ("train_loss", "loss", "train/loss")


def detect(folder: Path) -> bool:
    if (folder / "training_metrics.jsonl").is_file() or (folder / "training_metrics.json").is_file():
        return True
    return any(folder.glob("checkpoint-*/training_state*.json"))


def checkpoint_dirs(folder: Path, run: ParsedRun) -> None:
    for d in sorted(folder.glob("checkpoint-*")):
        m = _CKPT.match(d.name)
        if m and (d / WEIGHTS).is_file():
            run.candidates.append(Candidate(d / WEIGHTS, step=int(m[1])))
    if (folder / WEIGHTS).is_file():
        run.candidates.append(Candidate(folder / WEIGHTS, final=True))
        run.finished = True


def parse(folder: Path) -> ParsedRun:
    run = ParsedRun(format="simpletuner")
    checkpoint_dirs(folder, run)
    for c in run.candidates:
        states = sorted(c.path.parent.glob("training_state*.json")) if not c.final else []
        if states:
            doc = read_config(states[0], run, folder)
            if isinstance(doc, dict):
                c.step = as_int(doc.get("global_step")) or c.step
                c.epoch = as_int(doc.get("current_epoch", doc.get("epoch")))
    manifest = folder / "training_metrics.json"
    if manifest.is_file():
        doc = read_config(manifest, run, folder)
        if isinstance(doc, dict):
            cfg = doc.get("config") if isinstance(doc.get("config"), dict) else {}
            src = manifest.name
            run.fact("name", doc.get("run_name"), src)
            run.fact("base_model.name", cfg.get("pretrained_model_name_or_path"), src)
            run.fact("base_model.architecture", architecture(cfg.get("model_family")), src)
            run.fact("learning_rate", as_float(cfg.get("learning_rate", cfg.get("lr"))), src)
            run.fact("resolution", resolution(cfg.get("resolution")), src)
            run.fact("rank", as_int(cfg.get("lora_rank")), src)
            run.fact("alpha", as_float(cfg.get("lora_alpha")), src)
            run.fact("optimizer", cfg.get("optimizer"), src)
            run.fact("steps", as_int(cfg.get("max_train_steps")), src)
            run.fact("dataset.path", cfg.get("instance_data_dir") or cfg.get("data_dir"), src)
            run.fact("started_at", iso_time(doc.get("started_at")), src)
            run.extra["status"] = doc.get("status")
            if doc.get("status") in ("completed", "finished"):
                run.finished = True
    log = folder / "training_metrics.jsonl"
    if log.is_file():
        rows = read_jsonl(log, run, folder)
        for row in rows:
            metrics = row.get("metrics") if isinstance(row.get("metrics"), dict) else {}
            key = next((k for k in LOSS_KEYS if k in metrics), None)
            step = as_int(row.get("step"))
            loss = as_loss(metrics.get(key)) if key else None
            if step is not None and loss is not None:
                run.loss.append((step, loss))
        if rows:
            run.fact("started_at", iso_time(rows[0].get("timestamp")), log.name)
    return run
