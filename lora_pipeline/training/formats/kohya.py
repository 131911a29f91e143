"""kohya sd-scripts: `{name}-step{step:08d}.safetensors`, `{name}-{epoch:06d}.safetensors`, final
`{name}.safetensors`, optional `*-state/train_state.json`, optional user `*.toml` config beside
them (sd-scripts does not copy its config), tensorboard logs under `logs/` or `log/`.
Most facts come from the `ss_*` header (lora_pipeline.training.header_facts)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

from lora_pipeline.training.common import (
    Candidate,
    ParsedRun,
    as_float,
    as_int,
    read_config,
    resolution,
    safetensors_in,
)
from lora_pipeline.training.tensorboard import loss_from_logs

_STEP = re.compile(r"^(?P<name>.+)-step(?P<n>\d{8})$")
_EPOCH = re.compile(r"^(?P<name>.+)-(?P<n>\d{6})$")


def _has_ss_header(path: Path) -> bool:
    """The header's __metadata__ has kohya's keys; any unreadable or odd header is simply "no"."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 10_000_000:
                return False
            doc = json.loads(f.read(n))
    except (OSError, ValueError, struct.error, RecursionError):
        return False
    md = doc.get("__metadata__") if isinstance(doc, dict) else None
    return isinstance(md, dict) and ("ss_network_module" in md or "ss_network_dim" in md)


def detect(folder: Path) -> bool:
    files = safetensors_in(folder)
    if any(_STEP.match(p.stem) or _EPOCH.match(p.stem) for p in files):
        return True
    return any(_has_ss_header(p) for p in files[:3])


def parse(folder: Path) -> ParsedRun:
    run = ParsedRun(format="kohya")
    files = safetensors_in(folder)
    names = set()
    for p in files:
        m = _STEP.match(p.stem)
        e = _EPOCH.match(p.stem)
        if m:
            names.add(m["name"])
            run.candidates.append(Candidate(p, step=int(m["n"])))
        elif e:
            names.add(e["name"])
            run.candidates.append(Candidate(p, epoch=int(e["n"])))
    for p in files:
        if not (_STEP.match(p.stem) or _EPOCH.match(p.stem)):
            final = p.stem in names or len(names) == 0
            run.candidates.append(Candidate(p, final=final))
            run.finished = run.finished or final
    for state in sorted(folder.glob("*-state/train_state.json")):
        doc = read_config(state, run, folder)
        if isinstance(doc, dict):
            run.extra.setdefault("train_states", []).append(
                {"dir": state.parent.name, "epoch": doc.get("current_epoch"), "step": doc.get("current_step")})
    for cfg in sorted(folder.glob("*.toml")):
        doc = read_config(cfg, run, folder)
        if isinstance(doc, dict):
            _toml_facts(doc, run, cfg.name)
    for logdir in ("logs", "log"):
        if (folder / logdir).is_dir():
            loss, tag = loss_from_logs(folder / logdir)
            if loss:
                run.loss, run.extra["loss_tag"] = loss, tag
                break
    return run


def _toml_facts(doc: dict, run: ParsedRun, src: str) -> None:
    """sd-scripts' --config_file keys (flat, or grouped in sections as --output_config writes)."""
    flat: dict = {}
    for k, v in doc.items():
        if isinstance(v, dict):
            flat.update(v)
        else:
            flat[k] = v
    run.fact("base_model.name", flat.get("pretrained_model_name_or_path"), src)
    run.fact("rank", as_int(flat.get("network_dim")), src)
    run.fact("alpha", as_float(flat.get("network_alpha")), src)
    run.fact("learning_rate", as_float(flat.get("unet_lr")) or as_float(flat.get("learning_rate")), src)
    run.fact("optimizer", flat.get("optimizer_type"), src)
    run.fact("steps", as_int(flat.get("max_train_steps")), src)
    run.fact("resolution", resolution(flat.get("resolution")), src)
    run.fact("dataset.path", flat.get("train_data_dir"), src)
    run.fact("name", flat.get("output_name"), src)
    run.fact("epochs", as_int(flat.get("max_train_epochs")), src)
