"""The A1111 "infotext" of a render (the PNG `parameters` chunk), as AUTOMATIC1111 writes it, so
sd-parsers, civitai and the webui's "PNG Info" read our renders like their own.

- Sampler and `Schedule type` in A1111's names (`SAMPLERS` below; docs/contract.md has the table).
  A scheduler with no A1111 name is written as its diffusers class name and flagged in the manifest
  (`sampler_a1111.known: false`).
- `Lora hashes`: A1111's (and civitai's) LoRA short hash: the file's `sshs_model_hash` header when
  present (sd-scripts writes it), else sha256 of the bytes after the safetensors header (the "addnet"
  hash: header-only edits do not change it), first 12 hex digits.
- `Model hash`: sha256 of the base file, first 10 hex digits, which is A1111's short hash when the base
  is a single file (for a diffusers folder A1111 has no equivalent: our folder identity is used).
- No `Negative prompt:` line when the negative prompt is empty, as A1111 does.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path
from typing import Any

# diffusers scheduler class -> A1111 sampler name. DPMSolverMultistep depends on its algorithm type.
SAMPLERS = {
    "DDIMScheduler": "DDIM",
    "PNDMScheduler": "PLMS",
    "LMSDiscreteScheduler": "LMS",
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "HeunDiscreteScheduler": "Heun",
    "KDPM2DiscreteScheduler": "DPM2",
    "KDPM2AncestralDiscreteScheduler": "DPM2 a",
    "DPMSolverSDEScheduler": "DPM++ SDE",
    "UniPCMultistepScheduler": "UniPC",
    "LCMScheduler": "LCM",
}
_DPM_MULTISTEP = {"dpmsolver++": "DPM++ 2M", "sde-dpmsolver++": "DPM++ 2M SDE"}
# A1111's schedule types (since 1.9) for the sigma schedules a diffusers scheduler can be set to.
_SCHEDULES = (("use_karras_sigmas", "Karras"), ("use_exponential_sigmas", "Exponential"),
              ("use_beta_sigmas", "Beta"))


def a1111_sampler(scheduler: Any) -> dict[str, Any]:
    """{sampler, schedule_type (None: A1111's "Automatic", not written), known} for a diffusers scheduler."""
    name = type(scheduler).__name__
    cfg = getattr(scheduler, "config", {}) or {}
    sampler = SAMPLERS.get(name)
    if name == "DPMSolverMultistepScheduler":
        sampler = _DPM_MULTISTEP.get(cfg.get("algorithm_type", "dpmsolver++"))
    schedule = next((label for key, label in _SCHEDULES if cfg.get(key)), None)
    return {"sampler": sampler or name, "schedule_type": schedule, "known": sampler is not None}


def lora_short_hash(path: str | Path, metadata: dict[str, str] | None = None) -> str:
    """A1111/civitai's LoRA short hash (12 hex digits): `sshs_model_hash`, else the addnet hash."""
    declared = (metadata or {}).get("sshs_model_hash")
    if isinstance(declared, str) and re.fullmatch(r"[0-9a-fA-F]{12,64}", declared):
        return declared[:12].lower()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        fh.seek(8 + n)
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def _q(v: Any) -> str:
    s = str(v)
    return json.dumps(s) if ("," in s or ":" in s or '"' in s) else s


def infotext(m: dict[str, Any]) -> str:
    """A1111 `parameters`: prompt line(s), `Negative prompt: ...` (when there is one), then the
    `Key: value, ...` line, from a render manifest."""
    prompt = m["prompt"]
    lora = m.get("lora")
    lora_name = Path(lora.get("path") or "lora").stem if lora else ""  # A1111 names a LoRA by its file
    if lora:
        prompt = f"{prompt} <lora:{lora_name}:{lora['scale']:g}>"
    sampler = m.get("sampler_a1111") or {"sampler": m["scheduler"], "schedule_type": None}
    params: list[tuple[str, Any]] = [("Steps", m["steps"]), ("Sampler", sampler["sampler"])]
    if sampler.get("schedule_type"):
        params.append(("Schedule type", sampler["schedule_type"]))
    params += [("CFG scale", f"{m['guidance_scale']:g}"), ("Seed", m["seed"]), ("Size", f"{m['width']}x{m['height']}"),
               ("Model hash", (m["base_model"].get("sha256") or "")[:10]), ("Model", m["base_model"].get("name"))]
    if lora:
        short = lora.get("short_hash") or (lora.get("sha256") or "")[:12]
        params.append(("Lora hashes", f"{lora_name}: {short}"))
    params.append(("Version", f"lora-pipeline {m.get('library_versions', {}).get('lora_pipeline', '')}".strip()))
    negative = f"Negative prompt: {m['negative_prompt']}\n" if m.get("negative_prompt") else ""
    return f"{prompt}\n{negative}" + ", ".join(f"{k}: {_q(v)}" for k, v in params)


# A1111's grammar for the parameters line: `Key: value` pairs separated by commas, a value either a
# JSON-quoted string or text up to the next comma.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> dict[str, Any]:
    """Inverse of `infotext` (A1111's format): prompt, negative_prompt, params, lora tags."""
    lines = text.split("\n")
    params_line = lines[-1]
    body = lines[:-1]
    neg_i = next((i for i, ln in enumerate(body) if ln.startswith("Negative prompt: ")), len(body))
    prompt = "\n".join(body[:neg_i])
    negative = "\n".join(body[neg_i:])[len("Negative prompt: "):] if neg_i < len(body) else ""
    loras = re.findall(r"<lora:([^:>]+):([^>]+)>", prompt)
    prompt = re.sub(r"\s*<lora:[^>]+>", "", prompt)
    params = {}
    for k, v in _PARAM.findall(params_line):
        params[k.strip()] = json.loads(v) if v.startswith('"') else v.strip()
    return {"prompt": prompt, "negative_prompt": negative, "params": params, "loras": loras}
