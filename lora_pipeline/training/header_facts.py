"""Run facts from a checkpoint's safetensors header (`ss_*`, `modelspec.*`, `lora_adapter_metadata`,
ai-toolkit's `training_info`/`software`, SimpleTuner's `global_step`/`trained_words`) and from the
weights themselves (rank from tensor shapes, alpha tensors, architecture from key names)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from lora_pipeline.training import common
from lora_pipeline.training.common import KOHYA_NETWORK_ARCH, architecture


def _safe(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`fn`, or None where a header value breaks it (a 400-digit step, a timestamp past year 9999):
    header values are the file writer's, and one bad value must not cost the run its ingestion."""
    def call(v: Any) -> Any:
        try:
            return fn(v)
        except (ValueError, TypeError, OverflowError, OSError, RecursionError):
            return None
    return call


as_float = _safe(common.as_float)
as_int = _safe(common.as_int)
iso_time = _safe(common.iso_time)
resolution = _safe(common.resolution)


def _json(v: Any) -> Any:
    if isinstance(v, str) and v[:1] in "{[":
        try:
            return json.loads(v)
        except (ValueError, RecursionError):  # not JSON, nested past the recursion limit, huge integers
            return None
    return v


def step_epoch(md: dict[str, Any]) -> tuple[int | None, int | None]:
    """The step/epoch a checkpoint's header says it was saved at."""
    info = _json(md.get("training_info"))
    if isinstance(info, dict):
        return as_int(info.get("step")), as_int(info.get("epoch"))
    step = as_int(md.get("ss_steps")) or as_int(md.get("global_step"))
    return step, as_int(md.get("ss_epoch"))


def _trigger(md: dict[str, Any]) -> str | None:
    if md.get("modelspec.trigger_phrase"):
        return str(md["modelspec.trigger_phrase"])
    words = _json(md.get("trained_words"))
    if isinstance(words, list) and words:
        return str(words[0])
    if isinstance(words, str) and words.strip():
        return words.split(",")[0].strip()
    software = _json(md.get("software"))
    freq = _json(md.get("ss_tag_frequency"))
    if isinstance(software, dict) and software.get("name") == "ai-toolkit" and isinstance(freq, dict):
        # ai-toolkit writes a synthetic {"1_<trigger>": {"<trigger>": 1}} when trigger_word is set
        for key, tags in freq.items():
            if isinstance(tags, dict) and len(tags) == 1 and key == f"1_{next(iter(tags))}":
                return next(iter(tags))
    return None


def _network_arch(md: dict[str, Any]) -> str | None:
    if str(md.get("ss_base_model_version") or "").lower() == "chroma":
        return None
    return KOHYA_NETWORK_ARCH.get(str(md.get("ss_network_module") or "").strip())


def header_facts(analysis: dict[str, Any], source: str) -> list[tuple[str, Any, str]]:
    md: dict[str, Any] = analysis.get("metadata") or {}
    declared: dict[str, Any] = analysis.get("declared") or {}
    out: list[tuple[str, Any, str]] = []

    def put(fact: str, value: Any) -> None:
        if value is not None and value != "":
            out.append((fact, value, source))

    put("base_model.name", md.get("ss_sd_model_name"))
    put("base_model.sha256", md.get("ss_new_sd_model_hash"))
    put("base_model.architecture", architecture(md.get("ss_base_model_version"))
        or architecture(md.get("modelspec.architecture")) or _network_arch(md))
    put("trigger", _trigger(md))
    put("rank", as_int(declared.get("rank")))
    put("alpha", as_float(declared.get("alpha")))
    put("learning_rate", as_float(md.get("ss_learning_rate")) or as_float(md.get("ss_unet_lr")))
    put("optimizer", md.get("ss_optimizer"))
    put("steps", as_int(md.get("ss_max_train_steps")))
    # with a dataset config kohya writes no ss_resolution, and modelspec.resolution falls back to the
    # family's default (1024 for FLUX/SD3): the datasets' own resolutions come first
    put("resolution", resolution(md.get("ss_resolution")) or _datasets_resolution(md)
        or _modelspec_resolution(md.get("modelspec.resolution")))
    put("started_at", iso_time(md.get("ss_training_started_at")))
    put("name", md.get("ss_output_name") or md.get("name") or md.get("modelspec.title"))
    put("epochs", as_int(md.get("ss_num_epochs")))
    dirs = _json(md.get("ss_dataset_dirs"))
    if isinstance(dirs, dict) and dirs:
        counts = [as_int(v.get("img_count")) for v in dirs.values() if isinstance(v, dict)]
        if counts and all(c is not None for c in counts):
            put("images", sum(counts))  # type: ignore[arg-type]
    return out


def _modelspec_resolution(v: Any) -> int | None:
    """SimpleTuner writes int(--resolution) here, so a megapixel setting (1.0) reads `1x1`: no size."""
    px = resolution(v)
    return px if px is not None and px >= 16 else None


def _datasets_resolution(md: dict[str, Any]) -> int | None:
    """The largest `resolution` of kohya's `ss_datasets` (one entry per dataset of a dataset config)."""
    datasets = _json(md.get("ss_datasets"))
    if not isinstance(datasets, list):
        return None
    sizes = [resolution(d.get("resolution")) for d in datasets if isinstance(d, dict)]
    return max((s for s in sizes if s), default=None)


def weight_facts(analysis: dict[str, Any], source: str) -> list[tuple[str, Any, str]]:
    """What the tensors themselves say: rank (shapes), alpha (alpha tensors), architecture (keys)."""
    out: list[tuple[str, Any, str]] = []
    ranks = analysis.get("ranks") or []
    if len(ranks) == 1:
        out.append(("rank", int(ranks[0]), source))
    alphas = {m.get("alpha") for m in analysis.get("modules") or [] if m.get("alpha_source") == "tensor"}
    if len(alphas) == 1 and None not in alphas:
        out.append(("alpha", float(alphas.pop()), source))
    family = (analysis.get("architecture") or {}).get("family")
    if family in ("sd1", "sd2", "sdxl", "sd3", "flux1", "flux2"):  # not the generic sd-unet / flux
        out.append(("base_model.architecture", family, source))
    return out


def dataset_dirs(analysis: dict[str, Any]) -> list[str]:
    """kohya's `ss_dataset_dirs` folder names (`10_chairs`): hints for dataset linking."""
    dirs = _json((analysis.get("metadata") or {}).get("ss_dataset_dirs"))
    return sorted(dirs) if isinstance(dirs, dict) else []
