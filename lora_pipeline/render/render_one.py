"""One image, batch 1, one CPU generator seeded for it, with its phases timed as they happen.

Phases (the clock's names): `encode` (call start to the denoiser's first forward: prompt encoding and
latent setup; each text encoder's own forward time is in `observed.text_encoder_s`), `denoise` (per-step progress via `callback_on_step_end`), `decode` (from the VAE
decoder's first forward, or the end of the last step, to the call's return: VAE decode and
post-processing). The caller times `save`. Hooks are our own forward pre-hooks, removed afterwards.

The settings actually passed (after an optional `call_hook`, the one place a deployment may change
call arguments) and the settings observed (steps run, image size, guidance, scheduler) are returned
so the caller can compare them with the spec (RUNTIME.SETTINGS_CHANGED).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lora_pipeline.findings import Finding
from lora_pipeline.render.families import call_parameters
from lora_pipeline.render.ops import Heartbeat, PhaseClock
from lora_pipeline.render.spec import EvalSpec


@dataclass(frozen=True)
class RenderRequest:
    arm: str
    prompt_index: int
    seed: int
    prompt: str
    negative_prompt: str

    @property
    def name(self) -> str:
        return f"{self.prompt_index}-{self.seed}"


@dataclass
class RenderOutput:
    image: Any
    requested: dict[str, Any]
    observed: dict[str, Any]
    step_s: list[float]
    pixels_sha256: str


def pixels_sha256(image: Any) -> str:
    import numpy as np

    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


def render_image(pipe: Any, spec: EvalSpec, req: RenderRequest, clock: PhaseClock, heartbeat: Heartbeat | None,
                 on_step: Callable[[int, int], None] | None = None,
                 call_hook: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> RenderOutput:
    import torch

    step_s: list[float] = []
    last = {"t": time.perf_counter()}
    # A pipeline without a negative_prompt parameter (FLUX.2 Klein) gets none: nothing reaches the model.
    takes_negative = "negative_prompt" in call_parameters(pipe)
    kwargs: dict[str, Any] = {
        "prompt": req.prompt, "num_inference_steps": spec.steps,
        "guidance_scale": spec.guidance_scale, "width": spec.width, "height": spec.height,
        "num_images_per_prompt": 1, "output_type": "pil",
    }
    if takes_negative:
        kwargs["negative_prompt"] = req.negative_prompt
    if call_hook is not None:
        kwargs = call_hook(dict(kwargs))
    requested = {k: kwargs.get(k) for k in ("num_inference_steps", "guidance_scale", "width", "height",
                                            "prompt", "negative_prompt", "num_images_per_prompt")}
    if not takes_negative:
        requested["negative_prompt"] = ""
    total = int(kwargs["num_inference_steps"])

    def on_step_end(p: Any, i: int, t: Any, cb_kwargs: dict[str, Any]) -> dict[str, Any]:
        now = time.perf_counter()
        step_s.append(now - last["t"])
        last["t"] = now
        if heartbeat:
            heartbeat.beat("denoise", i + 1, force=False)
        if on_step:
            on_step(i + 1, total)
        if i + 1 >= total:
            clock.enter("decode")
        return cb_kwargs

    def denoiser_start(_m: Any, _a: Any) -> None:
        if clock.phase == "encode":
            clock.enter("denoise")
            last["t"] = time.perf_counter()
            if heartbeat:
                heartbeat.beat("denoise", 0)

    def decode_start(_m: Any, _a: Any) -> None:
        clock.enter("decode")
        if heartbeat:
            heartbeat.beat("decode", total)

    encoder_s: dict[str, float] = {}  # per text encoder: SD3 has three, FLUX two, Klein one (Qwen)
    started: dict[str, float] = {}

    def encoder_hooks(name: str) -> tuple[Callable, Callable]:
        def pre(_m: Any, _a: Any) -> None:
            started[name] = time.perf_counter()
            if heartbeat:
                heartbeat.beat(f"encode:{name}", force=False)

        def post(_m: Any, _a: Any, _o: Any) -> None:
            encoder_s[name] = round(encoder_s.get(name, 0.0) + time.perf_counter() - started.pop(name, time.perf_counter()), 6)
        return pre, post

    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    handles = [denoiser.register_forward_pre_hook(denoiser_start, prepend=True)]
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        enc = getattr(pipe, name, None)
        if enc is not None:
            pre, post = encoder_hooks(name)
            handles += [enc.register_forward_pre_hook(pre), enc.register_forward_hook(post)]
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "decoder"):
        handles.append(vae.decoder.register_forward_pre_hook(decode_start, prepend=True))
    clock.enter("encode")
    if heartbeat:
        heartbeat.beat("encode")
    try:
        result = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(req.seed),
                      callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"])
    finally:
        for h in handles:
            h.remove()
    clock.enter("save")
    image = result.images[0]
    observed = {"steps_run": len(step_s), "width": image.size[0], "height": image.size[1],
                "guidance_scale": float(getattr(pipe, "guidance_scale", kwargs["guidance_scale"])),
                "scheduler": type(pipe.scheduler).__name__, "negative_prompt_parameter": takes_negative,
                "text_encoder_s": encoder_s}
    return RenderOutput(image=image, requested=requested, observed=observed, step_s=[round(s, 6) for s in step_s],
                        pixels_sha256=pixels_sha256(image))


def settings_changes(spec: EvalSpec, req: RenderRequest, out: RenderOutput, scheduler: str) -> dict[str, Any]:
    """Every setting whose requested or observed value differs from the spec (empty when controlled)."""
    # Where the pipeline takes no negative prompt, none is the controlled value (families.negative_ignored
    # reports the spec's one as not applied, once per evaluation).
    negative = req.negative_prompt if out.observed.get("negative_prompt_parameter", True) else ""
    want = {"num_inference_steps": spec.steps, "guidance_scale": spec.guidance_scale, "width": spec.width,
            "height": spec.height, "prompt": req.prompt, "negative_prompt": negative,
            "num_images_per_prompt": 1}
    diffs = {k: {"spec": v, "passed": out.requested.get(k)} for k, v in want.items() if out.requested.get(k) != v}
    seen = {"steps_run": spec.steps, "width": spec.width, "height": spec.height,
            "guidance_scale": spec.guidance_scale, "scheduler": scheduler}
    for k, v in seen.items():
        got = out.observed.get(k)
        if (abs(got - v) > 1e-9 if isinstance(v, float) else got != v):
            diffs[f"observed_{k}"] = {"spec": v, "observed": got}
    return diffs


def settings_changed(spec: EvalSpec, req: RenderRequest, out: RenderOutput, scheduler: str,
                     subject: str) -> list[Finding]:
    """RUNTIME.SETTINGS_CHANGED when a render's settings differ from the spec (`settings_changes`)."""
    changes = settings_changes(spec, req, out, scheduler)
    if not changes:
        return []
    return [Finding("RUNTIME.SETTINGS_CHANGED", subject,
                    f"The settings passed for {req.arm} {req.name} differ from the eval spec in "
                    f"{', '.join(changes)}.", {"arm": req.arm, "prompt_index": req.prompt_index, "seed": req.seed,
                                               "changes": changes})]
