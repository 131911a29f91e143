"""The claims a render's `lora_pipeline` chunk makes, type-checked before anything uses them.

A field of the wrong JSON type (a list for a string, a number as a string, null where a value is
required, a bool for a number) or an id outside the CONTRACT's alphabet is not used: its value here is
None and `malformed` says why, which `trace` reports as `unverifiable: malformed manifest (field X)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lora_pipeline.render.spec import ARMS
from lora_pipeline.report.trace_files import valid_id

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Claims:
    run_id: str | None = None
    checkpoint_id: str | None = None
    arm: str | None = None
    prompt_index: int | None = None
    seed: int | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    scheduler: str | None = None
    created_at: str | None = None
    dagster_run_id: str | None = None
    base_model: dict[str, Any] = field(default_factory=dict)  # name, path, sha256, architecture (valid ones)
    lora: dict[str, str] | None = None  # {path, sha256} when the chunk names a LoRA
    malformed: dict[str, str] = field(default_factory=dict)  # field -> why it was not used


def _type(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# field -> (test, what it must be)
_RULES: dict[str, tuple[Any, str]] = {
    "run_id": (valid_id, "a run id ([A-Za-z0-9._-], not . or ..)"),
    "checkpoint_id": (valid_id, "a checkpoint id ([A-Za-z0-9._-], not . or ..)"),
    "arm": (lambda v: isinstance(v, str) and v in ARMS, f"one of {', '.join(ARMS)}"),
    "prompt_index": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "seed": (_is_int, "an integer"),
    "prompt": (lambda v: isinstance(v, str), "a string"),
    "negative_prompt": (lambda v: isinstance(v, str), "a string"),
    "width": (lambda v: _is_int(v) and v > 0, "an integer > 0"),
    "height": (lambda v: _is_int(v) and v > 0, "an integer > 0"),
    "steps": (lambda v: _is_int(v) and v > 0, "an integer > 0"),
    "guidance_scale": (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    "scheduler": (lambda v: isinstance(v, str), "a string"),
    "created_at": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "dagster_run_id": (lambda v: v is None or isinstance(v, str), "a string or null"),
}
_OPTIONAL_STR = (lambda v: v is None or isinstance(v, str), "a string or null")
_BASE_RULES = {"name": _OPTIONAL_STR, "path": _OPTIONAL_STR, "architecture": _OPTIONAL_STR,
               "sha256": (lambda v: isinstance(v, str) and bool(SHA256_HEX.match(v)), "64 lowercase hex digits")}
_LORA_RULES = {"path": (lambda v: isinstance(v, str) and bool(v), "a path string"),
               "sha256": _BASE_RULES["sha256"]}


def _why(value: Any, what: str) -> str:
    shown = repr(value) if isinstance(value, str) else _type(value)
    return f"expected {what}, got {shown[:80]}"


def parse_claims(m: dict[str, Any]) -> Claims:
    c = Claims()
    for name, (test, what) in _RULES.items():
        v = m.get(name)
        if test(v):
            setattr(c, name, float(v) if name == "guidance_scale" else v)
        else:
            c.malformed[name] = _why(v, what) if name in m else f"missing (expected {what})"
    b = m.get("base_model")
    if not isinstance(b, dict):
        c.malformed["base_model"] = _why(b, "an object {name, path, sha256, architecture}")
    else:
        for k, (test, what) in _BASE_RULES.items():
            if test(b.get(k)):
                c.base_model[k] = b.get(k)
            else:
                c.malformed[f"base_model.{k}"] = _why(b.get(k), what)
    lora = m.get("lora")
    if lora is not None:
        if not isinstance(lora, dict):
            c.malformed["lora"] = _why(lora, "null or an object {path, sha256, ...}")
        else:
            bad = {f"lora.{k}": _why(lora.get(k), what) for k, (test, what) in _LORA_RULES.items()
                   if not test(lora.get(k))}
            c.malformed.update(bad)
            if not bad:
                c.lora = {"path": lora["path"], "sha256": lora["sha256"]}
    return c


def malformed_under(c: Claims, prefix: str) -> bool:
    return any(k == prefix or k.startswith(prefix + ".") for k in c.malformed)
