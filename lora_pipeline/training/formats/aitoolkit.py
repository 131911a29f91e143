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
    as_bool,
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
    arch = _model_facts(proc, run, src)
    rank, alpha = as_int(dig(proc, "network", "linear")), as_float(dig(proc, "network", "linear_alpha"))
    run.fact("rank", rank, src)
    if _peft_format(arch, dig(proc, "network", "type")) and rank:
        # ai-toolkit trains and saves transformer LoRAs in PEFT form with alpha = rank (no alpha tensor),
        # whatever linear_alpha says (toolkit/lora_special.py): the effective alpha is the rank.
        run.fact("alpha", float(rank), f"{src} (network.linear: alpha = rank for {arch})")
        if alpha is not None and alpha != rank:
            run.training_fact("config_alpha_ignored", alpha, src)
    else:
        run.fact("alpha", alpha, src)
    run.fact("learning_rate", as_float(dig(proc, "train", "lr")), src)
    run.fact("optimizer", dig(proc, "train", "optimizer"), src)
    run.fact("steps", as_int(dig(proc, "train", "steps")), src)
    run.fact("dataset.path", dig(proc, "datasets", 0, "folder_path"), src)
    run.fact("resolution", resolution(dig(proc, "datasets", 0, "resolution")), src)
    run.training_fact("sample_guidance_scale", as_float(dig(proc, "sample", "guidance_scale")), src)
    run.training_fact("sample_steps", as_int(dig(proc, "sample", "sample_steps")), src)
    run.extra["training_folder"] = proc.get("training_folder")
    return name


def _model_facts(proc: dict, run: ParsedRun, src: str) -> str | None:
    """Base model name, architecture and the FLUX facts the config fixes; returns the architecture."""
    model = proc.get("model")
    if not isinstance(model, dict):
        return None
    base = model.get("name_or_path") if isinstance(model.get("name_or_path"), str) else None
    run.fact("base_model.name", base, src)
    raw = model.get("arch").split(":")[0] if isinstance(model.get("arch"), str) else ""  # UI: `arch:tag`
    arch = architecture(raw)
    for flag, a in (("is_flux", "flux1"), ("is_v3", "sd3"), ("is_xl", "sdxl"), ("is_v2", "sd2")):
        if model.get(flag) is True:
            arch = arch or a
    arch = arch or architecture(base)
    run.fact("base_model.architecture", arch, src)
    run.training_fact("model_variant", raw or None, src)
    train = proc.get("train") if isinstance(proc.get("train"), dict) else {}
    klein = "klein" in f"{raw} {base}".lower()  # FLUX.2 klein has no guidance embedding
    if arch in ("flux1", "flux2") and not klein:
        # the guidance embedding FLUX trains with is train.cfg_scale (default 1.0), unless guidance loss
        if as_bool(train.get("do_guidance_loss")):
            run.training_fact("guidance_mode", "guidance_loss", src)
        elif train.get("cfg_scale") is not None:
            run.training_fact("guidance_scale", as_float(train.get("cfg_scale")), src)
        else:
            run.training_fact("guidance_scale", 1.0, f"{src} (train.cfg_scale unset: ai-toolkit's default)")
    if arch == "flux1":
        run.training_fact("t5_max_tokens", 512, "ai-toolkit (FLUX.1 prompts are encoded to 512 T5 tokens)")
        run.training_fact("t5_attn_mask", as_bool(model.get("attn_masking")) or False, src)
    return arch


def _peft_format(arch: str | None, network_type: object) -> bool:
    """ai-toolkit's LoRA for FLUX, SD3 and other transformers (not SD1/2/XL UNets; not LoKr)."""
    return arch in ("flux1", "flux2", "sd3") and str(network_type or "lora").lower() != "lokr"


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
