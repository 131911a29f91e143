"""What a pipeline family does with the eval settings: its text encoders and their real limits, how it
guides, and whether the negative prompt reaches the model (`set_scheduler` puts the spec's scheduler in).

| family | encoders (limit) | guidance | negative prompt |
|---|---|---|---|
| SD1.x/2.x, SDXL | CLIP 77 (x2 for SDXL) | classifier-free (CFG) when guidance > 1 | applied with CFG |
| SD3 | CLIP 77 x2, T5 `max_sequence_length` (256 by default) | CFG when guidance > 1 | applied with CFG |
| FLUX.1 (dev) | CLIP 77, T5 `max_sequence_length` (512) | distilled: guidance is an input of the transformer, no CFG | ignored unless `true_cfg_scale` > 1 |
| FLUX.2 Klein | Qwen3 `max_sequence_length` (512, chat template included) | CFG against the empty prompt (base variant) | not a parameter: never applied |

A T5/Qwen encoder's limit is the pipeline's own `max_sequence_length` default, not the tokenizer's
`model_max_length` (SD3 cuts T5 at 256 while its tokenizer says 512). Klein tokenizes the prompt
inside Qwen's chat template, so counts and trigger positions are taken on the templated text.
A negative prompt that the pipeline ignores is a finding: the user believes it applies.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lora_pipeline.findings import Finding

CLIP_LIMIT = 77


@dataclass(frozen=True)
class TextEncoder:
    tokenizer: Any
    limit: int
    frame: Callable[[str], str]  # the text the pipeline really tokenizes for a prompt


def pipeline_family(class_name: str) -> str | None:
    """flux2 | flux1 | sd3 | sdxl | sd (SD1.x or 2.x: the UNet's width tells) | None, from a diffusers
    pipeline class name (`type(pipe).__name__` or model_index.json's `_class_name`)."""
    if class_name.startswith("Flux2"):  # Flux2Pipeline, Flux2KleinPipeline
        return "flux2"
    if class_name.startswith("Flux"):
        return "flux1"
    if class_name.startswith("StableDiffusion3"):
        return "sd3"
    if "XL" in class_name:
        return "sdxl"
    return "sd" if class_name.startswith("StableDiffusion") else None


def family_of(pipe: Any) -> str:
    fam = pipeline_family(type(pipe).__name__)
    return {"sd": "sd1", None: "other"}.get(fam, fam)


def call_parameters(pipe: Any) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(type(pipe).__call__).parameters)
    except (TypeError, ValueError):
        return {}


def _chat_frame(tok: Any) -> Callable[[str], str]:
    def frame(text: str) -> str:
        return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                       add_generation_prompt=True, enable_thinking=False)
    return frame


def text_encoders(pipe: Any) -> dict[str, TextEncoder]:
    """tokenizer attribute -> its tokenizer, the limit the pipeline applies, and the framing."""
    params = call_parameters(pipe)
    seq = params.get("max_sequence_length")
    seq_default = seq.default if seq is not None and isinstance(seq.default, int) else None
    out: dict[str, TextEncoder] = {}
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        tok = getattr(pipe, name, None)
        if tok is None:
            continue
        kind = type(tok).__name__
        if "CLIP" in kind:
            limit = int(min(getattr(tok, "model_max_length", CLIP_LIMIT) or CLIP_LIMIT, CLIP_LIMIT))
            out[name] = TextEncoder(tok, limit, lambda t: t)
        else:  # T5, Qwen, ...: the pipeline's max_sequence_length
            own = int(getattr(tok, "model_max_length", 512) or 512)
            limit = min(seq_default or own, own if own < 100_000 else 512)
            frame = _chat_frame(tok) if family_of(pipe) == "flux2" and hasattr(tok, "apply_chat_template") \
                else (lambda t: t)
            out[name] = TextEncoder(tok, limit, frame)
    return out


def set_scheduler(pipe: Any, name: str | None) -> str:
    """Swap in the diffusers scheduler class `name`, built from the current one's config (none or the
    class already in use: nothing changes); returns the class name in use. ValueError: no such class."""
    if name and name != type(pipe.scheduler).__name__:
        import diffusers

        cls = getattr(diffusers, name, None)
        if cls is None or not hasattr(cls, "from_config"):
            raise ValueError(f"eval.scheduler {name!r}: not a diffusers scheduler")
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
    return type(pipe.scheduler).__name__


def guidance(pipe: Any, guidance_scale: float, negative_prompt: str) -> dict[str, Any]:
    """How this pipeline uses guidance_scale and the negative prompt at these settings."""
    params = call_parameters(pipe)
    fam = family_of(pipe)
    transformer_cfg = getattr(getattr(pipe, "transformer", None), "config", None)
    if fam == "flux1" and getattr(transformer_cfg, "guidance_embeds", False):
        kind = "distilled"
        applied = "ignored" if "negative_prompt" in params else "unsupported"
        why = "FLUX.1-dev guidance is distilled (an input of the transformer); a negative prompt is only used " \
              "with true_cfg_scale > 1, which the eval spec does not set"
    elif "negative_prompt" not in params:
        kind, applied = "cfg" if guidance_scale > 1 else "none", "unsupported"
        why = f"{type(pipe).__name__} takes no negative prompt: it guides against the empty prompt"
    elif getattr(getattr(pipe, "config", None), "is_distilled", False):
        kind, applied, why = "distilled", "ignored", "a distilled pipeline runs no classifier-free guidance"
    elif guidance_scale > 1:
        kind, applied, why = "cfg", "applied", "classifier-free guidance against the negative prompt"
    else:
        kind, applied = "none", "ignored"
        why = f"guidance_scale {guidance_scale:g} <= 1 turns classifier-free guidance off"
    return {"family": fam, "kind": kind, "negative_prompt": applied if negative_prompt else "none given",
            "why": why}


def negative_ignored(sem: dict[str, Any], negative_prompt: str, subject: str) -> list[Finding]:
    """RUNTIME.SETTINGS_CHANGED (warn): the spec's negative prompt does not reach the model."""
    if not negative_prompt or sem["negative_prompt"] not in ("ignored", "unsupported"):
        return []
    return [Finding("RUNTIME.SETTINGS_CHANGED", subject,
                    f"The eval spec's negative prompt is not applied by this pipeline ({sem['why']}): the renders "
                    "show no effect of it, whatever it says.",
                    {"changes": {"negative_prompt": {"spec": negative_prompt, "applied": False}}, "guidance": sem},
                    severity="warn")]
