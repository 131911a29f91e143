"""bghira/SimpleTuner: `checkpoint-<step>/pytorch_lora_weights.safetensors` (+ training_state.json),
final `pytorch_lora_weights.safetensors`, `training_metrics.jsonl` ({"schema_version", "timestamp",
"step", "metrics": {...}}) and the `training_metrics.json` manifest (run_name, status, config
subset), the training arguments where the run folder has them (simpletuner_args.py), tensorboard
events under `logs/`."""

from __future__ import annotations

import re
from pathlib import Path

from lora_pipeline.training.common import (
    Candidate,
    ParsedRun,
    as_int,
    as_loss,
    config_unknown,
    iso_time,
    read_config,
    read_jsonl,
)
from lora_pipeline.training.formats.simpletuner_args import args_facts
from lora_pipeline.training.tensorboard import loss_from_logs

WEIGHTS = "pytorch_lora_weights.safetensors"
_CKPT = re.compile(r"^checkpoint-(\d+)$")
LOSS_KEYS = ("train_loss", "loss", "train/loss")


def detect(folder: Path) -> bool:
    if any((folder / n).is_file() for n in ("training_metrics.jsonl", "training_metrics.json",
                                              "simpletuner_config.json")):
        return True
    if any(folder.glob("checkpoint-*/training_state*.json")):
        return True
    # a run with only its final weights and tensorboard logs: accelerate's copy of the arguments
    # has SimpleTuner's `model_family` (the diffusers example scripts have no such argument)
    return any(_mentions(p, b"model_family:") for p in sorted((folder / "logs").glob("*/*/hparams.yml"))[:5])


def _mentions(path: Path, text: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return text in f.read(1_000_000)
    except OSError:
        return False


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
    for path in _argument_files(folder):
        doc = read_config(path, run, folder)
        rel = path.relative_to(folder).as_posix()
        if isinstance(doc, dict):
            args_facts({k.lstrip("-"): v for k, v in doc.items() if isinstance(k, str)}, run, rel, full=True)
        elif doc is not None:
            run.findings.append(config_unknown(path, f"{rel}: not a table of arguments ({type(doc).__name__})",
                                               file=rel, error=f"top level is {type(doc).__name__}"))
    manifest = folder / "training_metrics.json"
    if manifest.is_file():
        doc = read_config(manifest, run, folder)
        if isinstance(doc, dict):
            cfg = doc.get("config") if isinstance(doc.get("config"), dict) else {}
            src = manifest.name
            run.fact("name", doc.get("run_name"), src)
            args_facts(cfg, run, src, full=False)
            run.fact("started_at", iso_time(doc.get("created_at") or doc.get("started_at")), src)
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
        if rows and not any(f == "started_at" for f, _, _ in run.facts):  # the manifest's created_at is earlier
            run.fact("started_at", iso_time(rows[0].get("timestamp")), log.name)
    if not run.loss and (folder / "logs").is_dir():  # --report_to=tensorboard: accelerate's event files
        loss, tag = loss_from_logs(folder / "logs")
        if loss:
            run.loss, run.extra["loss_tag"] = loss, tag
    return run


def _argument_files(folder: Path) -> list[Path]:
    """Where a run folder holds SimpleTuner's arguments, most complete first: `simpletuner_config.json`
    (written when publishing), accelerate's `logs/<project>/<time>/hparams.yml` (--report_to
    tensorboard), a `config.json`/`config.toml` the user keeps beside the run."""
    out = [folder / "simpletuner_config.json"]
    if (folder / "logs").is_dir():
        out += sorted((folder / "logs").rglob("hparams.yml"), key=lambda p: p.parent.name)[-1:]
    out += [folder / "config.json", folder / "config.toml"]
    return [p for p in out if p.is_file()]
