"""Device/dtype resolution and the per-process base pipeline cache.

A base pipeline is loaded lazily, once per process, and cached by (base identity, dtype, device):
an in-process Dagster run (or any loop in one process) reuses it across checkpoints. `BASE_LOADS`
counts real loads (tests assert on it). Memory settings are fixed (no attention slicing, no VAE
tiling or slicing, no offload: each changes pixels) and recorded in every manifest.

Loading goes through diffusers' auto pipelines (`AutoPipelineForText2Image`), so SD1.x/2.x, SDXL and
FLUX folders all work; SD1.x and SDXL are tested on toy models, FLUX is written but untested. A folder
whose `model_index.json` names a text-to-image class that the auto pipeline maps to itself
(`DIRECT_CLASSES`) is loaded through that class directly: the same call the auto pipeline makes,
without importing its table of every pipeline diffusers has (~0.4 s, ControlNets included).
A single-file base (`.safetensors`) uses `from_single_file` of the SD/SDXL/FLUX class by architecture
(untested: it needs the matching config available offline).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MEMORY_SETTINGS = {"attention_slicing": False, "vae_slicing": False, "vae_tiling": False,
                   "cpu_offload": False, "fuse_lora": False, "batch_size": 1}

# Text-to-image classes that AutoPipelineForText2Image resolves to themselves (its
# AUTO_TEXT2IMAGE_PIPELINES_MAPPING): loading them directly is the call it would make.
DIRECT_CLASSES = frozenset({"StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline",
                            "FluxPipeline", "Flux2Pipeline", "Flux2KleinPipeline"})
_CACHE: dict[tuple[str, str, str], CachedPipeline] = {}
_LOCK = threading.RLock()
BASE_LOADS: dict[str, int] = {"count": 0}


class PipelineLoadError(RuntimeError):
    """The base model could not be loaded; one line naming the path."""


@dataclass
class CachedPipeline:
    pipe: Any
    key: tuple[str, str, str]
    load_s: float
    scheduler_name: str
    calls: int = 0  # renders done on this pipeline (the first is the warm-up)
    first_call_s: float | None = None
    checks: dict[str, Any] = field(default_factory=dict)  # e.g. determinism results per spec


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineLoadError(f"runtime.device {device}: CUDA is not available on this worker")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise PipelineLoadError("runtime.device mps: MPS is not available on this worker")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """auto: float16 on CUDA, float32 elsewhere (CONTRACT section 1); bf16 must be supported."""
    import torch

    if dtype == "auto":
        return "float16" if device.startswith("cuda") else "float32"
    if dtype == "bfloat16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise PipelineLoadError(f"runtime.dtype bfloat16: not supported on {device}")
    return dtype


def get_pipeline(base_path: Path, identity: str, architecture: str, dtype: str, device: str) -> tuple[CachedPipeline, bool]:
    """(cached pipeline, cold) for this base identity, dtype and device; loads it on first use."""
    key = (identity, dtype, device)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            return hit, False
        t0 = time.perf_counter()
        pipe = _load(Path(base_path), architecture, dtype, device)
        BASE_LOADS["count"] += 1
        entry = CachedPipeline(pipe=pipe, key=key, load_s=time.perf_counter() - t0,
                               scheduler_name=type(pipe.scheduler).__name__)
        _CACHE[key] = entry
        return entry, True


def discard(entry: CachedPipeline) -> None:
    """Drop a pipeline that cannot be trusted (adapters left after an error) or freed after OOM."""
    with _LOCK:
        if _CACHE.get(entry.key) is entry:
            del _CACHE[entry.key]
    entry.pipe = None
    empty_device_cache()


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
    empty_device_cache()


def cached_keys() -> list[tuple[str, str, str]]:
    return list(_CACHE)


def empty_device_cache() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _load(path: Path, architecture: str, dtype: str, device: str) -> Any:
    from lora_pipeline.quiet import quiet_libraries

    quiet_libraries()
    import diffusers
    import torch

    torch_dtype = getattr(torch, dtype)
    try:
        if path.is_file():
            cls = {"sdxl": "StableDiffusionXLPipeline", "flux": "FluxPipeline"}.get(architecture,
                                                                                  "StableDiffusionPipeline")
            pipe = getattr(diffusers, cls).from_single_file(str(path), dtype=torch_dtype,
                                                            local_files_only=True)
        else:
            direct = _direct_class(path)
            loader = getattr(diffusers, direct) if direct else diffusers.AutoPipelineForText2Image
            pipe = loader.from_pretrained(str(path), dtype=torch_dtype, local_files_only=True, use_safetensors=True)
        pipe = pipe.to(device)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
        raise PipelineLoadError(f"{path}: cannot load the base model ({type(e).__name__}: "
                                f"{(str(e).splitlines() or [type(e).__name__])[0][:200]})") from None
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None  # never black out images under test
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _direct_class(folder: Path) -> str | None:
    """The folder's pipeline class when it is one of DIRECT_CLASSES, else None (the auto pipeline decides)."""
    import json

    try:
        name = json.loads((folder / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if name in DIRECT_CLASSES else None
