"""kohya sd-scripts LoRA files: key naming and `ss_*` / `modelspec.*` header metadata.

kohya names a UNet module `lora_unet_<module path with dots as underscores>` (SD1.x/2.x use the
diffusers-style module paths) with `.lora_down.weight` (A), `.lora_up.weight` (B) and a scalar
`.alpha`; scale = alpha / rank. Every metadata value is a string, JSON values serialised.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

_DIFFUSERS_KEY = re.compile(r"^(?:unet\.)?(?P<module>.+?)\.lora(?:\.|_)(?P<kind>down|up|A|B)\.weight$")


def to_kohya_key(module: str, prefix: str = "lora_unet") -> str:
    return f"{prefix}_{module.replace('.', '_')}"


def diffusers_to_kohya(state_dict: dict, alpha: float) -> dict:
    """diffusers/peft LoRA keys (`<module>.lora.down.weight` or `.lora_A.weight`) -> kohya keys."""
    import torch

    out: dict = {}
    modules: set[str] = set()
    for key, tensor in state_dict.items():
        m = _DIFFUSERS_KEY.match(key)
        if not m:
            raise ValueError(f"not a UNet LoRA key: {key}")
        kind = {"down": "lora_down", "A": "lora_down", "up": "lora_up", "B": "lora_up"}[m["kind"]]
        k = to_kohya_key(m["module"])
        out[f"{k}.{kind}.weight"] = tensor.detach().to("cpu").contiguous()
        modules.add(k)
    for k in sorted(modules):
        out[f"{k}.alpha"] = torch.tensor(float(alpha))
    return out


def tag_frequency(captions: list[str]) -> dict[str, int]:
    """kohya's `ss_tag_frequency` counting: comma-split, lower-cased tags."""
    freq: Counter = Counter()
    for caption in captions:
        freq.update(t.strip().lower() for t in caption.split(",") if t.strip())
    return dict(freq)


def metadata(run: dict, step: int, epoch: int, output_name: str) -> dict[str, str]:
    """The `ss_*` and `modelspec.*` header a kohya sd-scripts LoRA carries, from our run record."""
    ds = run["dataset"]
    dataset_dir = Path(ds["path"]).name
    started = datetime.fromisoformat(run["started_at"]).timestamp()
    res = run["resolution"]
    md = {
        "ss_session_id": str(zlib.crc32(run["name"].encode())),
        "ss_training_started_at": str(started),
        "ss_output_name": output_name,
        "ss_sd_model_name": run["base_model"]["name"],
        "ss_new_sd_model_hash": run["base_model"]["sha256"],
        "ss_base_model_version": "sd_v1",
        "ss_v2": "False",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(run["network"]["rank"]),
        "ss_network_alpha": str(run["network"]["alpha"]),
        "ss_learning_rate": str(run["learning_rate"]),
        "ss_unet_lr": str(run["learning_rate"]),
        "ss_text_encoder_lr": "0.0",
        "ss_optimizer": "torch.optim.adamw.AdamW",
        "ss_lr_scheduler": "constant",
        "ss_max_train_steps": str(run["steps"]),
        "ss_steps": str(step),
        "ss_epoch": str(epoch),
        "ss_num_epochs": str(max(1, run["steps"] // max(1, ds["examples_with_repeats"]))),
        "ss_num_train_images": str(ds["examples_with_repeats"]),
        "ss_num_reg_images": "0",
        "ss_resolution": f"({res}, {res})",
        "ss_seed": str(run["seed"]),
        "ss_mixed_precision": "no",
        "ss_dataset_dirs": json.dumps({dataset_dir: {"n_repeats": 1, "img_count": ds["images"]}}),
        "ss_tag_frequency": json.dumps({dataset_dir: ds.get("tag_frequency", {})}),
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": output_name,
        "modelspec.resolution": f"{res}x{res}",
        "modelspec.date": datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "modelspec.prediction_type": "epsilon",
        "modelspec.trigger_phrase": run["trigger"],
    }
    return md


def safetensors_hashes(tensors: dict, header: dict[str, str]) -> dict[str, str]:
    """`sshs_model_hash` / `sshs_legacy_hash` as sd-scripts precomputes them: over the file the tensors
    and only the `ss_*` keys would make (so later header edits do not change them), the sha256 of the
    bytes after the safetensors header (A1111's "addnet" hash), and the first 8 hex digits of the
    sha256 of 64 KiB at offset 1 MiB (A1111's legacy model hash)."""
    import hashlib
    import struct

    from safetensors.torch import save

    data = save(tensors, metadata={k: v for k, v in header.items() if k.startswith("ss_")})
    (n,) = struct.unpack("<Q", data[:8])
    return {"sshs_model_hash": hashlib.sha256(data[8 + n:]).hexdigest(),
            "sshs_legacy_hash": hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]}


def save(path: str | Path, diffusers_state_dict: dict, alpha: float, header: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tensors = diffusers_to_kohya(diffusers_state_dict, alpha)
    save_file(tensors, str(path), metadata={**header, **safetensors_hashes(tensors, header)})
