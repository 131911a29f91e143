"""The one path that loads a LoRA into a diffusers pipeline and proves it applied.

`load_and_verify` loads a `.safetensors` file (extension checked here, the tensors read by
safetensors itself and handed to diffusers as a dict, so diffusers never opens a file and never
falls back to a pickle) under a unique adapter name, makes it the only active adapter, then proves:

- it is in place and active (`get_list_adapters` / `get_active_adapters`), else RUNTIME.LORA_NOT_APPLIED;
- every tensor of the file landed, counted with peft's own `get_peft_model_state_dict` against the
  file after diffusers' format conversion (`lora_state_dict` on a copy: it empties kohya dicts in
  place), else RUNTIME.LORA_PARTIAL listing what did not land;
- one denoiser forward on fixed latents changes with the adapter enabled vs disabled (the probe),
  else RUNTIME.LORA_NOT_APPLIED (unless the file's deltas are all zero: that is QUALITY.NO_LORA_EFFECT,
  found by the file check).

A load that raises is RUNTIME.LORA_INCOMPATIBLE with the diffusers/peft message kept. After any
failure the LoRA is unloaded and emptiness asserted (`unload`); if that fails, `PipelineDirty` tells
the caller to discard the pipeline. LoRAs are never fused.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_pipeline.findings import Finding

# Relative L2 change of the probe output below which "the adapter changes nothing" (after also
# exceeding 10x the measured noise floor of two adapter-off forwards). See docs in load_and_verify.
PROBE_EPS = {"float32": 1e-7, "float16": 1e-5, "bfloat16": 1e-5}


class PipelineDirty(RuntimeError):
    """Adapters (or their wrappers) could not be removed: the pipeline must be discarded."""


@dataclass
class LoadOutcome:
    adapter_name: str
    applied: bool = False  # in place, the only active adapter, and changes the computation (or all-zero)
    findings: list[Finding] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def adapters_in_place(pipe: Any) -> dict[str, list[str]]:
    try:
        return {k: list(v) for k, v in pipe.get_list_adapters().items() if v}
    except (AttributeError, ValueError):
        return {}


def _tuner_layers_left(pipe: Any) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    n = 0
    for comp in getattr(pipe, "_lora_loadable_modules", []):
        model = getattr(pipe, comp, None)
        if model is not None:
            n += sum(1 for m in model.modules() if isinstance(m, BaseTunerLayer))
    return n


def unload(pipe: Any) -> None:
    """Remove every adapter and wrapper; raise PipelineDirty unless the pipeline is back to base."""
    try:
        pipe.unload_lora_weights()
    except Exception as e:  # noqa: BLE001 - any failure here means the pipeline cannot be trusted
        raise PipelineDirty(f"unload_lora_weights failed: {type(e).__name__}: {e}") from e
    left, wrappers = adapters_in_place(pipe), _tuner_layers_left(pipe)
    if left or wrappers:
        raise PipelineDirty(f"adapters left after unload: {left}, {wrappers} LoRA wrapper modules")


class _LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage().splitlines()[0][:300])


def _normalise(key: str) -> str:
    """A file key after diffusers' conversion -> `<component>.<module>.lora_A|B.weight`."""
    k = re.sub(r"\.processor\.(to_[qkv]|to_out)_lora\.(down|up)\.weight$",
               lambda m: f".{m[1]}{'.0' if m[1] == 'to_out' else ''}.lora.{m[2]}.weight", key)
    k = re.sub(r"\.lora(?:_linear_layer)?\.down\.weight$", ".lora_A.weight", k)
    k = re.sub(r"\.lora(?:_linear_layer)?\.up\.weight$", ".lora_B.weight", k)
    return k


def _landed(pipe: Any, name: str) -> set[str]:
    from peft.utils import get_peft_model_state_dict

    keys: set[str] = set()
    for comp in getattr(pipe, "_lora_loadable_modules", []):
        model = getattr(pipe, comp, None)
        if model is not None and name in getattr(model, "peft_config", {}):
            keys.update(f"{comp}.{k}" for k in get_peft_model_state_dict(model, adapter_name=name))
    return keys


def load_and_verify(pipe: Any, path: str | Path, adapter_name: str, scale: float, subject: str,
                    all_zero: bool = False, dtype_name: str = "float32") -> LoadOutcome:
    """Load, activate and verify; on any failure the pipeline is returned to base (or PipelineDirty)."""
    import torch
    from safetensors.torch import load_file

    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        raise ValueError(f"{p}: only .safetensors files are loaded")
    out = LoadOutcome(adapter_name=adapter_name)
    if adapters_in_place(pipe) or _tuner_layers_left(pipe):
        unload(pipe)  # a leftover from someone else: never evaluate on top of it
    t0 = time.perf_counter()
    sd = load_file(str(p))
    capture = _LogCapture()
    dlog = logging.getLogger("diffusers")
    old_level, old_handlers = dlog.level, list(dlog.handlers)
    for h in old_handlers:  # keep diffusers' own console handler quiet: the lines go into the evidence
        dlog.removeHandler(h)
    dlog.addHandler(capture)
    dlog.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            converted, _alphas = pipe.lora_state_dict(dict(sd))[:2]
            file_keys = {_normalise(k) for k in converted}
            pipe.load_lora_weights(dict(sd), adapter_name=adapter_name)
    except Exception as e:  # noqa: BLE001 - the message is the evidence
        out.timings["lora_load_s"] = time.perf_counter() - t0
        out.findings.append(Finding("RUNTIME.LORA_INCOMPATIBLE", subject,
                                    f"Loading the LoRA raised {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                                    {"error": type(e).__name__, "message": str(e)[:2000],
                                     "logged": capture.lines[:10]}))
        unload(pipe)
        return out
    finally:
        dlog.removeHandler(capture)
        for h in old_handlers:
            dlog.addHandler(h)
        dlog.setLevel(old_level)
    out.timings["lora_load_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    try:
        _verify(pipe, out, file_keys, scale, subject, all_zero, dtype_name,
                capture.lines + [str(w.message).splitlines()[0][:300] for w in caught])
    except Exception:
        unload(pipe)
        raise
    out.timings["lora_verify_s"] = time.perf_counter() - t1
    if not out.applied:
        unload(pipe)
    return out


def _verify(pipe: Any, out: LoadOutcome, file_keys: set[str], scale: float, subject: str, all_zero: bool,
            dtype_name: str, logged: list[str]) -> None:
    name = out.adapter_name
    in_place = adapters_in_place(pipe)
    landed = _landed(pipe, name) if any(name in v for v in in_place.values()) else set()
    unused = sorted(file_keys - landed)
    ev = out.evidence
    ev.update(file_tensors=len(file_keys), loaded_tensors=len(landed), unused_keys=len(unused),
              components={c: len([k for k in landed if k.startswith(c + ".")]) for c in in_place},
              logged=logged[:10])
    if not landed:
        out.findings.append(Finding("RUNTIME.LORA_NOT_APPLIED", subject,
                                    f"No tensor of the file landed in the model ({len(file_keys)} unused): "
                                    "the renders would show the base model.",
                                    {**ev, "unused_sample": unused[:20], "adapters": in_place}))
        return
    pipe.set_adapters([name], adapter_weights=[scale])
    active = list(pipe.get_active_adapters())
    ev["active_adapters"] = active
    if active != [name]:
        out.findings.append(Finding("RUNTIME.LORA_NOT_APPLIED", subject,
                                    f"Another adapter is active ({active}), not only {name}.", dict(ev)))
        return
    unet_like = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    cfg = getattr(getattr(unet_like, "peft_config", {}), "get", lambda _k: None)(name)
    if cfg is not None:
        ev.update(peft_rank=cfg.r, peft_alpha=cfg.lora_alpha, peft_alpha_pattern=dict(cfg.alpha_pattern or {}))
    if unused:
        out.findings.append(Finding("RUNTIME.LORA_PARTIAL", subject,
                                    f"{len(unused)} of {len(file_keys)} tensors in the file did not land in the model.",
                                    {**ev, "not_landed": unused[:50]}))
    probe = probe_delta(pipe, name)
    ev.update(probe)
    rel, floor = probe.get("probe_rel_delta"), probe.get("probe_noise_floor", 0.0)
    if rel is not None and not all_zero and rel <= max(10 * floor, PROBE_EPS.get(dtype_name, 1e-5)):
        out.findings.append(Finding("RUNTIME.LORA_NOT_APPLIED", subject,
                                    "The adapter is loaded but a forward with it enabled equals one with it "
                                    "disabled, while the file's weights are non-zero.", dict(ev)))
        return
    out.applied = not unused


def probe_delta(pipe: Any, name: str) -> dict[str, Any]:
    """One forward on fixed inputs with the adapter enabled vs disabled (twice, for the noise floor)."""
    import torch

    in_place = adapters_in_place(pipe)
    g = torch.Generator().manual_seed(0)
    if "unet" in in_place:
        unet = pipe.unet
        cfg = unet.config
        side = max(8, min(int(cfg.sample_size if isinstance(cfg.sample_size, int) else 32), 32))
        dev, dt = unet.device, unet.dtype
        lat = torch.randn((1, cfg.in_channels, side, side), generator=g).to(dev, dt)
        enc = torch.randn((1, 77, int(cfg.cross_attention_dim)), generator=g).to(dev, dt)
        kw: dict[str, Any] = {}
        if cfg.addition_embed_type == "text_time":
            n_text = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            kw["added_cond_kwargs"] = {"text_embeds": torch.randn((1, n_text), generator=g).to(dev, dt),
                                       "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).to(dev, dt)}

        def fwd():
            return unet(lat, torch.tensor([500], device=dev), encoder_hidden_states=enc, **kw).sample.float()
        where = "unet"
    elif "text_encoder" in in_place or "text_encoder_2" in in_place:
        comp = "text_encoder" if "text_encoder" in in_place else "text_encoder_2"
        te = getattr(pipe, comp)
        tok = pipe.tokenizer if comp == "text_encoder" else pipe.tokenizer_2
        ids = tok("a photo of a chair", return_tensors="pt").input_ids.to(te.device)

        def fwd():
            return te(ids)[0].float()
        where = comp
    else:  # FLUX/transformer probe not implemented: rely on the tensor counts (documented, untested)
        return {"probe": "unavailable for this pipeline's denoiser", "probe_rel_delta": None}
    with torch.no_grad():
        on = fwd()
        pipe.disable_lora()
        try:
            off, off2 = fwd(), fwd()
        finally:
            pipe.enable_lora()
    base = float(off.norm()) or 1.0
    return {"probe": where, "probe_rel_delta": float((on - off).norm()) / base,
            "probe_noise_floor": float((off2 - off).norm()) / base}
