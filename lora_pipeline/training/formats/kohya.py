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
    KOHYA_NETWORK_ARCH,
    Candidate,
    ParsedRun,
    as_bool,
    as_float,
    as_int,
    read_config,
    resolution,
    safetensors_in,
)
from lora_pipeline.training.tensorboard import loss_from_logs

# modelspec.architecture `flux-1-dev/lora`, `stable-diffusion-3-5-large/lora` -> dev, 5-large
_VARIANT = re.compile(r"^(?:flux-1|stable-diffusion-3)-(?P<v>[^/]+)/")
_SD3_TYPES = {"medium", "5-medium", "5-large"}  # sd3_train_network.py's ss_base_model_version values
_STEP = re.compile(r"^(?P<name>.+)-step(?P<n>\d{8})$")
_EPOCH = re.compile(r"^(?P<name>.+)-(?P<n>\d{6})$")


def _metadata(path: Path) -> dict:
    """The header's __metadata__; any unreadable or odd header is simply empty (the checkpoint
    reader reports bad files)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 10_000_000:
                return {}
            doc = json.loads(f.read(n))
    except (OSError, ValueError, struct.error, RecursionError):
        return {}
    md = doc.get("__metadata__") if isinstance(doc, dict) else None
    return md if isinstance(md, dict) else {}


def _has_ss_header(path: Path) -> bool:
    md = _metadata(path)
    return "ss_network_module" in md or "ss_network_dim" in md


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
    newest = _newest(run.candidates)
    if newest is not None:
        _header_training_facts(_metadata(newest.path), run, f"header:{newest.path.relative_to(folder).as_posix()}")
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
    if flat.get("model_type") != "chroma":
        run.fact("base_model.architecture", KOHYA_NETWORK_ARCH.get(str(flat.get("network_module") or "")), src)
    # flux_train_network.py / sd3_train_network.py arguments (the header does not carry the T5 length)
    run.training_fact("t5_max_tokens", as_int(flat.get("t5xxl_max_token_length")), src)
    run.training_fact("t5_attn_mask", as_bool(flat.get("apply_t5_attn_mask")), src)
    run.training_fact("guidance_scale", as_float(flat.get("guidance_scale")), src)
    run.training_fact("timestep_sampling", flat.get("timestep_sampling"), src)
    run.training_fact("flow_shift", as_float(flat.get("discrete_flow_shift")), src)
    run.training_fact("prediction_type", flat.get("model_prediction_type"), src)
    run.training_fact("network_module", flat.get("network_module"), src)


def _newest(candidates: list[Candidate]) -> Candidate | None:
    """The final file, else the latest step/epoch: its header holds the run's settings."""
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c.final, c.step or -1, c.epoch or -1))


def _header_training_facts(md: dict, run: ParsedRun, src: str) -> None:
    """FLUX/SD3 facts sd-scripts writes beside the `ss_*` basics (`update_metadata` of
    flux_train_network.py and sd3_train_network.py); every value is a string."""
    spec = str(md.get("modelspec.architecture") or "")
    variant = _VARIANT.match(spec)
    version = str(md.get("ss_base_model_version") or "")
    run.training_fact("model_variant", variant["v"] if variant else version if version in _SD3_TYPES else None, src)
    if "ss_guidance_scale" in md:  # written by flux_train_network.py only
        run.training_fact("guidance_scale", as_float(md.get("ss_guidance_scale")), src)
    run.training_fact("t5_attn_mask", as_bool(md.get("ss_apply_t5_attn_mask")), src)
    run.training_fact("timestep_sampling", _text(md.get("ss_timestep_sampling")), src)
    run.training_fact("flow_shift", as_float(md.get("ss_discrete_flow_shift")), src)
    run.training_fact("prediction_type", _text(md.get("ss_model_prediction_type")), src)
    run.training_fact("network_module", _text(md.get("ss_network_module")), src)


def _text(v: object) -> str | None:
    """A header string; kohya writes str(None) for unset arguments."""
    return v.strip() if isinstance(v, str) and v.strip() not in ("", "None") else None
