"""Nerogar/OneTrainer: `save/{prefix}{YYYY-mm-dd_HH-MM-SS}-save-{global_step}-{epoch}-{epoch_step}
.safetensors`, the packed config `config/{prefix}{ts}.json`, `backup/.../onetrainer_config/
args.json`, tensorboard logs under `tensorboard/` (loss/train_step)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from lora_pipeline.training.common import (
    Candidate,
    ParsedRun,
    architecture,
    as_float,
    as_int,
    dig,
    read_config,
    resolution,
    safetensors_in,
)
from lora_pipeline.training.tensorboard import loss_from_logs

_SAVE = re.compile(r"(?P<ts>\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})-save-(?P<gs>\d+)-(?P<ep>\d+)-(?P<es>\d+)$")


def detect(folder: Path) -> bool:
    if any(_SAVE.search(p.stem) for p in safetensors_in(folder / "save")):
        return True
    return (folder / "config").is_dir() and (folder / "save").is_dir()


def parse(folder: Path) -> ParsedRun:
    run = ParsedRun(format="onetrainer")
    started = None
    for p in safetensors_in(folder / "save"):
        m = _SAVE.search(p.stem)
        if m:
            run.candidates.append(Candidate(p, step=int(m["gs"]), epoch=int(m["ep"])))
            try:
                ts = datetime.strptime(m["ts"], "%Y-%m-%d_%H-%M-%S").replace(tzinfo=UTC).isoformat()
            except ValueError:  # a file name with an impossible date (month 13) still names a checkpoint
                continue
            started = min(started or ts, ts)
        else:
            run.candidates.append(Candidate(p))
    configs = sorted((folder / "config").glob("*.json")) if (folder / "config").is_dir() else []
    if not configs:
        configs = sorted(folder.glob("backup/*/onetrainer_config/args.json"))[-1:]
    doc = read_config(configs[-1], run, folder) if configs else None
    if isinstance(doc, dict):
        src = configs[-1].relative_to(folder).as_posix()
        run.fact("base_model.name", doc.get("base_model_name"), src)
        run.fact("base_model.architecture", architecture(doc.get("model_type")), src)
        run.fact("rank", as_int(doc.get("lora_rank")), src)
        run.fact("alpha", as_float(doc.get("lora_alpha")), src)
        run.fact("learning_rate", as_float(doc.get("learning_rate")), src)
        opt = doc.get("optimizer")
        run.fact("optimizer", opt.get("optimizer") if isinstance(opt, dict) else opt, src)
        run.fact("resolution", resolution(doc.get("resolution")), src)
        run.fact("epochs", as_int(doc.get("epochs")), src)
        run.fact("dataset.path", dig(doc, "concepts", 0, "path"), src)
        out = doc.get("output_model_destination")
        if isinstance(out, str) and out:
            dest = (folder / out) if not Path(out).is_absolute() else Path(out)
            if dest.is_file() and dest.suffix == ".safetensors" and dest.resolve().is_relative_to(folder.resolve()):
                run.candidates.append(Candidate(dest, final=True))
                run.finished = True
    run.fact("started_at", started, "save/ file names")
    if (folder / "tensorboard").is_dir():
        run.loss, run.extra["loss_tag"] = loss_from_logs(folder / "tensorboard")
    return run
