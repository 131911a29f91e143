"""ostris/ai-toolkit: `config.yaml` (the job config), `{name}_{step:09d}.safetensors`, final
`{name}.safetensors`, `loss_log.db` (sqlite: steps(step, wall_time), metrics(step, key,
value_real, value_text), metric_keys)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from lora_pipeline.training.common import (
    Candidate,
    ParsedRun,
    architecture,
    as_float,
    as_int,
    config_unknown,
    dig,
    iso_time,
    read_config,
    resolution,
    safetensors_in,
)

_STEP = re.compile(r"^(?P<name>.+)_(?P<n>\d{9})$")
LOSS_KEYS = ("loss", "loss/loss", "train/loss", "loss/train")


def detect(folder: Path) -> bool:
    if (folder / "loss_log.db").is_file() or (folder / ".job_config.json").is_file():
        return True
    if any(_STEP.match(p.stem) for p in safetensors_in(folder)):
        return True
    cfg = folder / "config.yaml"
    try:
        return cfg.is_file() and "process:" in cfg.read_text("utf-8", errors="replace")
    except OSError:
        return False


def parse(folder: Path) -> ParsedRun:
    run = ParsedRun(format="ai-toolkit")
    name = None
    if (folder / "config.yaml").is_file():
        doc = read_config(folder / "config.yaml", run, folder)
        if isinstance(doc, dict):
            name = _config_facts(doc, run)
    names = set()
    for p in safetensors_in(folder):
        m = _STEP.match(p.stem)
        if m:
            names.add(m["name"])
            run.candidates.append(Candidate(p, step=int(m["n"])))
    for p in safetensors_in(folder):
        if not _STEP.match(p.stem):
            final = p.stem == name or p.stem in names
            run.candidates.append(Candidate(p, final=final))
            run.finished = run.finished or final
    db = folder / "loss_log.db"
    if db.is_file():
        run.config_files.append(db.name)
        _read_loss_db(db, run)
    return run


def _config_facts(doc: dict, run: ParsedRun) -> str | None:
    src = "config.yaml"
    name = dig(doc, "config", "name")
    proc = dig(doc, "config", "process", 0) or {}
    if not isinstance(proc, dict):
        return name
    run.fact("name", name, src)
    run.fact("trigger", proc.get("trigger_word"), src)
    run.fact("rank", as_int(dig(proc, "network", "linear")), src)
    run.fact("alpha", as_float(dig(proc, "network", "linear_alpha")), src)
    run.fact("learning_rate", as_float(dig(proc, "train", "lr")), src)
    run.fact("optimizer", dig(proc, "train", "optimizer"), src)
    run.fact("steps", as_int(dig(proc, "train", "steps")), src)
    run.fact("dataset.path", dig(proc, "datasets", 0, "folder_path"), src)
    run.fact("resolution", resolution(dig(proc, "datasets", 0, "resolution")), src)
    model = proc.get("model") or {}
    if isinstance(model, dict):
        base = model.get("name_or_path")
        run.fact("base_model.name", base, src)
        arch = architecture(model.get("arch"))
        for flag, a in (("is_flux", "flux"), ("is_xl", "sdxl"), ("is_v2", "sd2")):
            if model.get(flag) is True:
                arch = arch or a
        run.fact("base_model.architecture", arch or architecture(base), src)
    run.extra["training_folder"] = proc.get("training_folder")
    return name


def _read_loss_db(db: Path, run: ParsedRun) -> None:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            keys = {k for (k,) in con.execute("SELECT DISTINCT key FROM metrics")}
            key = next((k for k in LOSS_KEYS if k in keys), None)
            if key:
                rows = con.execute("SELECT step, value_real, value_text FROM metrics WHERE key = ? ORDER BY step",
                                   (key,)).fetchall()
                for step, real, text in rows:
                    v = real if real is not None else as_float(text)
                    if v is not None:
                        run.loss.append((int(step), float(v)))
                run.extra["loss_tag"] = key
            first = con.execute("SELECT MIN(wall_time) FROM steps").fetchone()
            if first and first[0] is not None:
                run.fact("started_at", iso_time(first[0]), db.name)
        finally:
            con.close()
    except sqlite3.Error as e:
        run.findings.append(config_unknown(db, f"{db.name}: cannot read the loss log ({e})",
                                           file=db.name, error=f"{e.__class__.__name__}: {e}"))
