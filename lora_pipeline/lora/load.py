"""The one path that loads a LoRA into a diffusers pipeline and proves it applied, by value.

`load_and_verify` reads the `.safetensors` file with our own parser (extension checked, pickles
refused, never loaded) and learns what it defines module by module (lora/formats.py). Plain LoRA /
LoCon files (kohya, PEFT/diffusers, native) go through diffusers' `load_lora_weights` by path, so the
header's `lora_adapter_metadata` reaches diffusers as it does for a user; LyCORIS LoHa / LoKr files,
which diffusers refuses, are carried by peft's own tuners (lora/inject.py). The adapter gets a unique
name and is made the only active one, then:

- it is in place and active (`get_list_adapters` / `get_active_adapters`), else RUNTIME.LORA_NOT_APPLIED;
- by value (lora/verify.py): every module of the raw file is compared with what its peft layer now
  applies (factors, scale, DoRA magnitude). A scale diffusers got wrong while the factors are right is
  corrected (the layer's alpha set to the file's, recorded in `corrections`) and verified again;
  whatever still differs (modules missing, DoRA magnitudes dropped, other weights) is
  RUNTIME.LORA_PARTIAL saying what and how many: the LoRA arms still render, marked partial;
- one denoiser forward on fixed latents changes with the adapter enabled vs disabled (the probe),
  else RUNTIME.LORA_NOT_APPLIED (unless the file's deltas are all zero: that is QUALITY.NO_LORA_EFFECT,
  found by the file check). The probe proves the computation changes; the by-value check proves it
  changes by the right amount.

A load that raises, or an algorithm no peft tuner carries, is RUNTIME.LORA_INCOMPATIBLE naming it.
After any failure the LoRA is unloaded and emptiness asserted (`unload`); if that fails,
`PipelineDirty` tells the caller to discard the pipeline. LoRAs are never fused.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_pipeline.findings import Finding
from lora_pipeline.fsutil import first_line
from lora_pipeline.lora import formats, verify
from lora_pipeline.lora.safetensors_file import LoraFileError, read_safetensors

# Relative L2 change of the probe output below which "the adapter changes nothing" (after also
# exceeding 10x the measured noise floor of two adapter-off forwards). See docs in load_and_verify.
PROBE_EPS = {"float32": 1e-7, "float16": 1e-5, "bfloat16": 1e-5}


class PipelineDirty(RuntimeError):
    """Adapters (or their wrappers) could not be removed: the pipeline must be discarded."""


@dataclass
class LoadOutcome:
    adapter_name: str
    applied: bool = False  # in place, the only active adapter, and changes the computation (or all-zero)
    partial: bool = False  # applied, but some modules do not render as the file defines them
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
        self.lines.append(first_line(record.getMessage())[:300])


@contextmanager
def _captured_diffusers_log() -> Iterator[_LogCapture]:
    """diffusers' console lines go into the evidence instead of the console."""
    capture = _LogCapture()
    dlog = logging.getLogger("diffusers")
    old_level, old_handlers = dlog.level, list(dlog.handlers)
    for h in old_handlers:
        dlog.removeHandler(h)
    dlog.addHandler(capture)
    dlog.setLevel(logging.WARNING)
    try:
        yield capture
    finally:
        dlog.removeHandler(capture)
        for h in old_handlers:
            dlog.addHandler(h)
        dlog.setLevel(old_level)


def _unrenderable(parsed: formats.ParsedFile) -> str | None:
    """Why the file's algorithms cannot be rendered as one adapter, or None."""
    algos = parsed.algorithms - {"incomplete"}
    odd = sorted(algos - {"lora", "loha", "lokr"})
    lycoris = sorted(algos & {"loha", "lokr"})
    if odd:
        first = next(m for m in parsed.modules if m.algorithm == odd[0])
        return (f"LyCORIS algorithm {'/'.join(odd)} (e.g. layer {first.key}) has no peft tuner to render it with: "
                "re-export the LoRA as LoRA/LoCon, LoHa or LoKr, or evaluate it in a tool that implements it")
    if len(lycoris) > 1 or (lycoris and "lora" in algos):
        return (f"the file mixes algorithms ({', '.join(sorted(algos))}) in one network: one adapter carries one "
                "algorithm; split the file per algorithm")
    return None


def load_and_verify(pipe: Any, path: str | Path, adapter_name: str, scale: float, subject: str,
                    all_zero: bool = False, dtype_name: str = "float32") -> LoadOutcome:
    """Load, activate and verify; on any failure the pipeline is returned to base (or PipelineDirty)."""
    from lora_pipeline.lora.inject import inject_lycoris, inject_split_lora

    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        raise ValueError(f"{p}: only .safetensors files are loaded")
    out = LoadOutcome(adapter_name=adapter_name)
    if adapters_in_place(pipe) or _tuner_layers_left(pipe):
        unload(pipe)  # a leftover from someone else: never evaluate on top of it
    t0 = time.perf_counter()
    try:
        sf = read_safetensors(p)
    except LoraFileError as e:
        out.findings.append(Finding("RUNTIME.LORA_INVALID", subject, str(e), {"path": str(p)}))
        return out
    parsed = formats.parse(sf)
    out.evidence.update(file_tensors=len(sf.keys()), key_format=parsed.key_format,
                        algorithms=sorted(parsed.algorithms))
    why = _unrenderable(parsed)
    if why:
        out.findings.append(Finding("RUNTIME.LORA_INCOMPATIBLE", subject, f"The file cannot be rendered: {why}.",
                                    {**out.evidence, "error": "UnsupportedAlgorithm"}))
        return out
    lycoris = bool(parsed.algorithms & {"loha", "lokr"})
    located = verify.locate(pipe, parsed)
    # the original FLUX layout: fused projections, or names of the denoiser under a UNet/BFL prefix
    split = not lycoris and any(t and (len(t[1]) > 1 or t[0] != m.component)
                                for m in parsed.modules for t in [located.get(m.key)])
    unmapped = [m for m in parsed.modules if lycoris and located.get(m.key) is None]
    if unmapped:
        algo = "/".join(sorted(parsed.algorithms & {"loha", "lokr"}))
        out.findings.append(Finding(
            "RUNTIME.LORA_INCOMPATIBLE", subject,
            f"{len(unmapped)} of {len(parsed.modules)} {algo} modules name no layer of this base model "
            f"(e.g. {unmapped[0].key}): the file is for another base, or its key layout is one we cannot map; "
            "evaluate it on the base it was trained for.",
            {**out.evidence, "error": "UnmappedLayers", "unmapped": [m.key for m in unmapped[:30]]}))
        return out
    with _captured_diffusers_log() as capture, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            import torch

            with torch.no_grad():
                if lycoris:
                    inject_lycoris(pipe, sf, parsed, located, adapter_name)
                elif split:
                    inject_split_lora(pipe, sf, parsed, located, adapter_name)
                else:
                    # By path, so diffusers reads the header's lora_adapter_metadata (alpha, patterns)
                    # as it does for a user; use_safetensors=True with a .safetensors name never unpickles.
                    pipe.load_lora_weights(str(p.parent), weight_name=p.name, adapter_name=adapter_name,
                                           use_safetensors=True)
        except Exception as e:  # noqa: BLE001 - the message is the evidence
            out.timings["lora_load_s"] = time.perf_counter() - t0
            what = f"{'/'.join(sorted(parsed.algorithms & {'loha', 'lokr'}))} " if lycoris else ""
            out.findings.append(Finding("RUNTIME.LORA_INCOMPATIBLE", subject,
                                        f"Loading the {what}LoRA raised {type(e).__name__}: "
                                        f"{first_line(e)[:300]}",
                                        {**out.evidence, "error": type(e).__name__, "message": str(e)[:2000],
                                         "logged": capture.lines[:10]}))
            unload(pipe)
            return out
    logged = capture.lines + [first_line(w.message)[:300] for w in caught]
    out.timings["lora_load_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    try:
        _verify(pipe, out, sf, parsed, located, scale, subject, all_zero, dtype_name, logged)
    except Exception:
        unload(pipe)
        raise
    out.timings["lora_verify_s"] = time.perf_counter() - t1
    if not out.applied:
        unload(pipe)
    return out


def _tensor_counts(parsed: formats.ParsedFile, bv: verify.ByValue) -> tuple[int, list[str]]:
    """Tensors of the raw file that render as the file defines them, and the keys of those that do not."""
    by_key = {m.key: m for m in parsed.modules}
    landed, not_landed = 0, list(parsed.unmatched)
    for c in bv.checks:
        fm = by_key[c.key]
        if c.status == "ok":
            landed += fm.tensors
        elif c.status == "dora_lost":
            landed += fm.tensors - 1
            not_landed.append(fm.parts["magnitude"])
        else:
            not_landed.extend(sorted(fm.parts.values()))
    return landed, not_landed


def _defines(parsed: formats.ParsedFile) -> dict[str, Any]:
    """The ranks, alphas and scales the file defines (what the renders must apply)."""
    mods = [m for m in parsed.modules if m.algorithm in ("lora", "loha", "lokr")]
    return {"ranks": sorted({m.rank for m in mods if m.rank is not None}),
            "alphas": sorted({round(m.alpha, 6) for m in mods if m.alpha is not None}),
            "scales": sorted({round(m.scale, 6) for m in mods}),
            "alpha_sources": sorted({m.alpha_source for m in mods})}


def _partial_message(bv: verify.ByValue, n_modules: int) -> str:
    counts = {s: len(bv.with_status(s)) for s in ("missing", "not_applied", "differs", "scale", "dora_lost")}
    parts = []
    if counts["missing"]:
        parts.append(f"{counts['missing']} name no module of this base model")
    if counts["not_applied"]:
        parts.append(f"{counts['not_applied']} did not land in the model")
    if counts["differs"]:
        parts.append(f"{counts['differs']} landed with other weights than the file's")
    if counts["scale"]:
        parts.append(f"{counts['scale']} landed at another scale than the file's alpha/rank")
    if counts["dora_lost"]:
        parts.append(f"{counts['dora_lost']} lost their DoRA magnitude (diffusers drops `dora_scale`): they render "
                     "as a plain LoRA")
    if bv.extra:
        parts.append(f"{len(bv.extra)} adapter layers were changed that the file does not define")
    bad = sum(counts.values())
    return (f"{bad} of {n_modules} modules do not render as the file defines them: " + "; ".join(parts) + ". "
            "The LoRA arms are rendered anyway and marked partial: they show what this runtime applies, "
            "not the LoRA as trained.")


def _verify(pipe: Any, out: LoadOutcome, sf: Any, parsed: formats.ParsedFile, located: dict, scale: float,
            subject: str, all_zero: bool, dtype_name: str, logged: list[str]) -> None:
    name = out.adapter_name
    ev = out.evidence
    in_place = adapters_in_place(pipe)
    ev.update(components={c: 0 for c in in_place if name in in_place[c]}, logged=logged[:10])
    if not any(name in v for v in in_place.values()):
        ev.update(loaded_tensors=0, unused_keys=ev["file_tensors"])
        out.findings.append(Finding("RUNTIME.LORA_NOT_APPLIED", subject,
                                    f"No tensor of the file landed in the model ({ev['file_tensors']} unused): "
                                    "the renders would show the base model.",
                                    {**ev, "unused_sample": sorted(sf.keys())[:20], "adapters": in_place}))
        return
    pipe.set_adapters([name], adapter_weights=[scale])
    active = list(pipe.get_active_adapters())
    ev["active_adapters"] = active
    if active != [name]:
        out.findings.append(Finding("RUNTIME.LORA_NOT_APPLIED", subject,
                                    f"Another adapter is active ({active}), not only {name}.", dict(ev)))
        return
    bv = verify.verify(pipe, sf, parsed, name, scale, dtype_name, located)
    corrections = []
    if bv.with_status("scale"):
        fixed = verify.correct_scales(pipe, bv.checks, parsed, name, scale)
        if fixed:
            corrections.append({"kind": "scale", "modules": len(fixed), "sample": fixed[:10],
                                "why": "the factors landed right but the layer's scale differed from the file's "
                                       "alpha/rank (e.g. diffusers' alpha_pattern keys that match no module); "
                                       "the layer's alpha was set to the file's and verified again"})
            bv = verify.verify(pipe, sf, parsed, name, scale, dtype_name, located)
    landed, not_landed = _tensor_counts(parsed, bv)
    for c in bv.checks:
        if c.target and c.status != "missing":
            comp = c.target.split(".", 1)[0]
            ev["components"][comp] = ev["components"].get(comp, 0) + 1
    ev.update(loaded_tensors=landed, unused_keys=len(not_landed), by_value=bv.evidence(),
              corrections=corrections, file_defines=_defines(parsed))
    unet_like = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    cfg = getattr(getattr(unet_like, "peft_config", {}), "get", lambda _k: None)(name)
    if cfg is not None:
        ev.update(peft_rank=cfg.r, peft_alpha=getattr(cfg, "lora_alpha", getattr(cfg, "alpha", None)))
    if not bv.with_status("ok", "scale", "differs", "dora_lost"):
        out.findings.append(Finding("RUNTIME.LORA_NOT_APPLIED", subject,
                                    f"No module of the file landed in the model ({len(not_landed)} tensors unused): "
                                    "the renders would show the base model.", {**ev, "not_landed": not_landed[:50]}))
        return
    bad = [c for c in bv.checks if c.status != "ok"]
    if bad or bv.extra:
        out.partial = True
        out.findings.append(Finding("RUNTIME.LORA_PARTIAL", subject, _partial_message(bv, len(bv.checks)),
                                    {**ev, "not_landed": not_landed[:50]}))
    probe = probe_delta(pipe, name)
    ev.update(probe)
    rel, floor = probe.get("probe_rel_delta"), probe.get("probe_noise_floor", 0.0)
    if rel is not None and not all_zero and rel <= max(10 * floor, PROBE_EPS.get(dtype_name, 1e-5)):
        out.findings.append(Finding("RUNTIME.LORA_NOT_APPLIED", subject,
                                    "The adapter is loaded but a forward with it enabled equals one with it "
                                    "disabled, while the file's weights are non-zero.", dict(ev)))
        return
    out.applied = True


def probe_delta(pipe: Any, name: str) -> dict[str, Any]:
    """One forward on fixed inputs with the adapter enabled vs disabled (twice, for the noise floor)."""
    import torch

    in_place = adapters_in_place(pipe)
    g = torch.Generator().manual_seed(0)
    if "unet" in in_place:
        unet = pipe.unet
        cfg = unet.config
        # The smallest latent every down block accepts: the probe proves the adapter changes the output,
        # and every attention/conv layer runs at any size, so a render-sized latent only costs time.
        side = max(8, 2 ** (len(cfg.block_out_channels) - 1))
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
    elif "transformer" in in_place:
        fwd, where = _pipeline_step(pipe), "transformer"
    else:
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


def _pipeline_step(pipe: Any) -> Any:
    """For transformer pipelines (SD3, FLUX.1, FLUX.2): one denoising step of the pipeline itself on
    fixed latents (seeded CPU generator), a fixed prompt (so text-encoder adapters count too) and the
    pipeline's own guidance, at the smallest size its patching allows; returns the latents. One call
    covers every family's input conventions (packed latents, guidance embedding, image ids)."""
    import torch

    from lora_pipeline.render.families import call_parameters

    side = max(32, int(getattr(pipe, "vae_scale_factor", 8)) * 4)
    kw: dict[str, Any] = {"num_inference_steps": 1, "height": side, "width": side, "output_type": "latent"}
    if "max_sequence_length" in call_parameters(pipe):
        kw["max_sequence_length"] = 32  # short text: the probe compares, it does not render

    def fwd():
        out = pipe(prompt="a photo of a chair", generator=torch.Generator("cpu").manual_seed(0), **kw)
        return out.images.float()
    return fwd
