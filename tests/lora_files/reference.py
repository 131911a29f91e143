"""An independent reference for "the LoRA by value": merge a LoRA file into the base weights by hand,
render with the settings of a production render's manifest, compare pixels.

Written without the production path and without any LoRA conversion code: no `lora_pipeline`
import, no diffusers/peft state-dict conversion or LoRA loading. The file is read with
`safetensors.safe_open`; each file module is mapped to a base-model module by the mapping below;
the weight change is computed with the format's own semantics and added (x lora_scale) to the weights
of a freshly loaded pipeline, which then renders exactly as lora_pipeline/render/render_one.py calls it.

Format semantics (r = rank, from the tensors' shapes):
- kohya sd-scripts / LyCORIS LoCon: dW = up @ down (conv: up [out, r, 1, 1] x down [r, in, kh, kw],
  reshaped to the conv weight), x alpha / r with the module's own `.alpha`; no `.alpha`: x 1.
- LyCORIS LoHa: dW = (w1a @ w1b) * (w2a @ w2b) x alpha / r (r = w1b rows). Applied once, as the
  module's forward (and ComfyUI, A1111, peft) do; lycoris-lora 4.1.3's get_diff_weight /
  get_merged_weight apply it a second time.
- LyCORIS LoKr: dW = kron(w1, w2) x alpha / r, w1 = lokr_w1 or w1_a @ w1_b, w2 = lokr_w2 or
  w2_a @ w2_b (conv: w2 flattened to [b, d*kh*kw], which equals kron with a [a, c, 1, 1] w1);
  r = the inner dim of w1_b or else w2_b; when both w1 and w2 are full there is no rank and the
  scale is 1 (alpha ignored; lycoris writes alpha = dim there).
- DoRA (`.dora_scale`, LyCORIS convention wd_on_out: shape [out, 1(, 1, 1)]):
  W' = m * (W0 + dW) / ||W0 + dW|| per output row (per input column when dora_scale is [1, in]).
  At lora_scale s the reference uses W0 + s (W' - W0) (ComfyUI's strength rule; all conventions agree
  at s = 1, which is what production renders).
- diffusers / PEFT (`unet.` / `text_encoder.` / `text_encoder_2.` keys with lora_A/lora_B,
  lora.down/lora.up or lora_linear_layer.down/up): dW = B @ A x lora_alpha / r, lora_alpha and r per
  component from the header's `lora_adapter_metadata` (`<component>.lora_alpha`, `.r`,
  `.alpha_pattern`, `.rank_pattern`, `.use_rslora` -> alpha / sqrt(r)); a pattern key k applies to
  module m when m matches `(.*\\.)?(k)$` (first key in the header's order). No metadata: an `.alpha`
  tensor if present, else scale 1 (lora_alpha = r).

Module names: kohya keys are `lora_unet_<path with _>`, `lora_te[12]_<path with _>`; the UNet path is
either the diffusers path or the SGM (original Stability) path of the same module, derived from the
UNet config (`sgm_map`); text-encoder paths match with or without the `text_model.` level (transformers
5.x CLIPTextModel has none; files written with 4.x carry it). Every tensor of the file must be used,
else the reference raises (it never silently skips).

Tolerance (pixel_match), measured on the toy SD1/SDXL bases, 64x64, 2 DDIM steps, CFG 5, 1 torch
thread, each file's per-module dW RMS = 0.5 x RMS(W) (tests/lora_files/builders.py), 8-bit levels:
- right loads, production (4014b90) vs this reference, all 14 rendered files it evaluates: max |diff|
  0..1, mean <= 0.0001 (most bit-identical: unfused adapter vs merged weight differ by float rounding).
- the 0.5x control, production vs reference at 0.5x: max 23..74, mean 2.28..7.51 (DoRA: 87 / 11.0).
- wrong loads: alpha lost (native file passed as a dict, old production a650378): 23 / 2.81; old
  production on PEFT rank/alpha patterns: 50 / 5.95, on stack-named PEFT text-encoder keys: 86 / 11.3;
  simulated: kohya attn2 block alpha ignored 90 / 10.7, text encoder dropped 57 / 6.43,
  text_encoder_2 dropped 39 / 3.58, SDXL SGM resnet/sampler convs dropped 56 / 6.28, DoRA magnitude
  dropped 47 / 5.47, a single alpha_pattern entry (ff.net.2) ignored 9 / 1.02 (the smallest).
MATCH = max |diff| <= 2 AND mean |diff| <= 0.05: 2x / 500x above the worst right load, the mean 20x
below the smallest wrong load and 45x below the smallest 0.5x control.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_ABS_LEVELS = 2  # 8-bit levels
MEAN_ABS_LEVELS = 0.05

KOHYA_PREFIXES = {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": "text_encoder",
                  "lora_te2": "text_encoder_2"}
DIFFUSERS_COMPONENTS = ("unet", "text_encoder_2", "text_encoder")  # longest first
_DIFFUSERS_SUFFIX = re.compile(
    r"^(?P<module>.+?)\.(?:lora_(?P<peft>A|B)\.weight|lora\.(?P<old>down|up)\.weight|"
    r"lora_linear_layer\.(?P<lin>down|up)\.weight|(?P<alpha>alpha))$")
_KOHYA_PARAMS = {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale", "hada_w1_a", "hada_w1_b",
                 "hada_w2_a", "hada_w2_b", "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a",
                 "lokr_w2_b"}


class MergeError(Exception):
    """The reference cannot merge this file exactly (unknown key, module or format feature)."""


# -- module names --------------------------------------------------------------------------------

def sgm_map(unet_config: dict[str, Any]) -> dict[str, str]:
    """diffusers UNet2DConditionModel module prefix -> SGM (Stability `UNetModel`) prefix, built the
    way SGM builds its block lists: input_blocks.0 = conv_in; per down level `layers_per_block`
    blocks (resnet at .0, transformer at .1) then a downsampler block (`.0.op`) except after the last
    level; middle_block = resnet, transformer, resnet; per up level (deepest first)
    `layers_per_block + 1` blocks, the level's last one carrying the upsampler (`.1.conv` or, after a
    transformer, `.2.conv`) except at the last level."""
    downs = list(unet_config["down_block_types"])
    ups = list(unet_config["up_block_types"])
    lpb = unet_config["layers_per_block"]
    lpb = [lpb] * len(downs) if isinstance(lpb, int) else list(lpb)
    m = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
         "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
         "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    block = 1
    for level, kind in enumerate(downs):
        for j in range(lpb[level]):
            m[f"down_blocks.{level}.resnets.{j}"] = f"input_blocks.{block}.0"
            if "CrossAttn" in kind:
                m[f"down_blocks.{level}.attentions.{j}"] = f"input_blocks.{block}.1"
            block += 1
        if level != len(downs) - 1:
            m[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{block}.0.op"
            block += 1
    m.update({"mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
              "mid_block.resnets.1": "middle_block.2"})
    block = 0
    up_lpb = list(reversed(lpb))
    for level, kind in enumerate(ups):
        n = up_lpb[level] + 1
        for j in range(n):
            attn = "CrossAttn" in kind
            m[f"up_blocks.{level}.resnets.{j}"] = f"output_blocks.{block}.0"
            if attn:
                m[f"up_blocks.{level}.attentions.{j}"] = f"output_blocks.{block}.1"
            if j == n - 1 and level != len(ups) - 1:
                m[f"up_blocks.{level}.upsamplers.0.conv"] = f"output_blocks.{block}.{2 if attn else 1}.conv"
            block += 1
    return m


_SGM_RESNET_PARTS = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                     "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def to_sgm(name: str, prefixes: dict[str, str]) -> str | None:
    best = max((p for p in prefixes if name == p or name.startswith(p + ".")), key=len, default=None)
    if best is None:
        return None
    rest = name[len(best) + 1:]
    if ".resnets." in best or best.startswith("mid_block.resnets"):
        head, _, tail = rest.partition(".")
        if head not in _SGM_RESNET_PARTS:
            return None
        rest = _SGM_RESNET_PARTS[head] + (f".{tail}" if tail else "")
    return f"{prefixes[best]}.{rest}" if rest else prefixes[best]


def _weighted_modules(model) -> dict[str, Any]:
    import torch

    return {n: m for n, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and getattr(m, "weight", None) is not None}


def kohya_index(pipe) -> dict[str, tuple[str, str]]:
    """kohya module name -> (component, module name) for every Linear/Conv2d of the pipeline."""
    idx: dict[str, tuple[str, str]] = {}

    def put(key: str, target: tuple[str, str]) -> None:
        if idx.get(key, target) != target:
            raise MergeError(f"kohya name {key} maps to two modules: {idx[key]} and {target}")
        idx[key] = target

    sgm = sgm_map(dict(pipe.unet.config))
    for name in _weighted_modules(pipe.unet):
        put("lora_unet_" + name.replace(".", "_"), ("unet", name))
        s = to_sgm(name, sgm)
        if s is not None:
            put("lora_unet_" + s.replace(".", "_"), ("unet", name))
    tes = [("lora_te1", "text_encoder"), ("lora_te2", "text_encoder_2")] \
        if getattr(pipe, "text_encoder_2", None) is not None else [("lora_te", "text_encoder")]
    for prefix, comp in tes:
        for name in _weighted_modules(getattr(pipe, comp)):
            bare = name[len("text_model."):] if name.startswith("text_model.") else name
            put(f"{prefix}_{bare.replace('.', '_')}", (comp, name))
            put(f"{prefix}_text_model_{bare.replace('.', '_')}", (comp, name))
    return idx


def _diffusers_module(pipe, comp: str, name: str) -> str:
    mods = _weighted_modules(getattr(pipe, comp))
    for cand in (name, name[len("text_model."):] if name.startswith("text_model.") else "text_model." + name):
        if cand in mods:
            return cand
    raise MergeError(f"{comp}.{name}: no such module in the base model")


# -- reading the file ------------------------------------------------------------------------------

@dataclass
class Update:
    component: str
    module: str
    kind: str  # lora | loha | lokr | peft
    delta: Any  # float64 tensor in the module weight's shape (scale applied, lora_scale not)
    scale: float = 1.0  # the format's alpha / rank factor already in delta
    rank: int | None = None
    dora_scale: Any = None  # float64 magnitude for DoRA


def _read(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        names = list(fh.keys())
        return {k: fh.get_tensor(k) for k in names}, dict(fh.metadata() or {})


def _as2d(t):
    return t.double().reshape(t.shape[0], -1)


def _kohya_update(comp: str, module: str, params: dict[str, Any], weight) -> Update:
    unknown = set(params) - _KOHYA_PARAMS
    if unknown:
        raise MergeError(f"{comp}.{module}: unsupported tensors {sorted(unknown)} (e.g. tucker)")
    out_f = weight.shape[0]
    alpha = float(params["alpha"].double()) if "alpha" in params else None
    if "lora_down.weight" in params:
        down, up = params["lora_down.weight"], params["lora_up.weight"]
        r = down.shape[0]
        delta = _as2d(up).reshape(out_f, r) @ _as2d(down)
        kind, rank = "lora", r
    elif "hada_w1_a" in params:
        w1 = _as2d(params["hada_w1_a"]) @ _as2d(params["hada_w1_b"])
        w2 = _as2d(params["hada_w2_a"]) @ _as2d(params["hada_w2_b"])
        delta, kind, rank = w1 * w2, "loha", params["hada_w1_b"].shape[0]
    elif any(k.startswith("lokr_") for k in params):
        w1 = _as2d(params["lokr_w1"]) if "lokr_w1" in params else _as2d(params["lokr_w1_a"]) @ _as2d(params["lokr_w1_b"])
        if "lokr_w2" in params:
            w2 = _as2d(params["lokr_w2"])
        else:
            b = params["lokr_w2_b"]
            w2 = _as2d(params["lokr_w2_a"]) @ b.double().reshape(b.shape[0], -1)
        import torch

        delta, kind = torch.kron(w1, w2), "lokr"
        rank = params["lokr_w1_b"].shape[0] if "lokr_w1_b" in params else \
            params["lokr_w2_b"].shape[0] if "lokr_w2_b" in params else None
    else:
        raise MergeError(f"{comp}.{module}: no LoRA/LoHa/LoKr tensors in {sorted(params)}")
    if delta.numel() != weight.numel():
        raise MergeError(f"{comp}.{module}: delta {tuple(delta.shape)} does not fit weight {tuple(weight.shape)}")
    scale = alpha / rank if (alpha is not None and rank) else 1.0
    dora = params.get("dora_scale")
    return Update(comp, module, kind, delta.reshape(weight.shape) * scale, scale, rank,
                  dora.double() if dora is not None else None)


def _pattern(patterns: dict[str, Any], module: str) -> Any:
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return None


def _peft_update(comp: str, module: str, params: dict[str, Any], weight, meta: dict | None) -> Update:
    a, b = params.get("A"), params.get("B")
    if a is None or b is None:
        raise MergeError(f"{comp}.{module}: needs both A (down) and B (up), has {sorted(params)}")
    r = a.shape[0]
    if meta is not None:
        if meta.get("use_dora"):
            raise MergeError(f"{comp}: PEFT DoRA is not implemented in the reference")
        rank = _pattern(meta.get("rank_pattern") or {}, module) or meta["r"]
        if int(rank) != r:
            raise MergeError(f"{comp}.{module}: tensors have rank {r}, metadata says {rank}")
        alpha = _pattern(meta.get("alpha_pattern") or {}, module)
        alpha = float(meta["lora_alpha"] if alpha is None else alpha)
        scale = alpha / (math.sqrt(r) if meta.get("use_rslora") else r)
    elif "alpha" in params:
        scale = float(params["alpha"].double()) / r
    else:
        scale = 1.0
    delta = (_as2d(b).reshape(weight.shape[0], r) @ _as2d(a))
    if delta.numel() != weight.numel():
        raise MergeError(f"{comp}.{module}: delta {tuple(delta.shape)} does not fit weight {tuple(weight.shape)}")
    return Update(comp, module, "peft", delta.reshape(weight.shape) * scale, scale, r)


def _component_meta(metadata: dict[str, str], comp: str) -> dict | None:
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return None
    flat = json.loads(raw)
    sub = {k[len(comp) + 1:]: v for k, v in flat.items() if k.startswith(comp + ".")}
    return sub or None


def lora_updates(pipe, path: str | Path) -> list[Update]:
    """Every module update the file makes, by this module's own mapping and semantics."""
    tensors, metadata = _read(Path(path))
    if not tensors:
        raise MergeError(f"{path}: no tensors")
    kohya = [k for k in tensors if "." in k and any(k.startswith(p + "_") for p in KOHYA_PREFIXES)]
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    if len(kohya) == len(tensors):
        idx = kohya_index(pipe)
        for key, t in tensors.items():
            name, param = key.split(".", 1)
            if name not in idx:
                raise MergeError(f"{key}: module {name} is not in the base model")
            groups.setdefault(idx[name], {})[param] = t
        out = []
        for (comp, module), params in groups.items():
            w = _weighted_modules(getattr(pipe, comp))[module].weight
            out.append(_kohya_update(comp, module, params, w))
        return out
    if kohya:
        raise MergeError(f"{path}: kohya keys mixed with others ({len(kohya)} of {len(tensors)})")
    for key, t in tensors.items():
        comp = next((c for c in DIFFUSERS_COMPONENTS if key.startswith(c + ".")), None)
        if comp is None or getattr(pipe, comp, None) is None:
            raise MergeError(f"{key}: no component of this pipeline")
        m = _DIFFUSERS_SUFFIX.match(key[len(comp) + 1:])
        if not m:
            raise MergeError(f"{key}: not a LoRA tensor the reference knows")
        module = _diffusers_module(pipe, comp, m["module"])
        part = "alpha" if m["alpha"] else m["peft"] or {"down": "A", "up": "B"}[m["old"] or m["lin"]]
        slot = groups.setdefault((comp, module), {})
        if part in slot:
            raise MergeError(f"{key}: duplicate {part} for {comp}.{module}")
        slot[part] = t
    out = []
    for (comp, module), params in groups.items():
        w = _weighted_modules(getattr(pipe, comp))[module].weight
        out.append(_peft_update(comp, module, params, w, _component_meta(metadata, comp)))
    return out


def merged_weight(w0, up: Update, lora_scale: float):
    """The module's weight with the update applied at lora_scale (float64)."""
    w0 = w0.double()
    if up.dora_scale is None:
        return w0 + lora_scale * up.delta
    w = w0 + up.delta
    m = up.dora_scale
    if m.shape[0] == w.shape[0] and m.numel() == w.shape[0]:  # wd_on_out: norm of each output row
        norm = w.reshape(w.shape[0], -1).norm(dim=1).reshape(m.shape)
    else:  # per input column
        norm = w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1).reshape(m.shape)
    w_dora = w * (m / norm)
    return w0 + lora_scale * (w_dora - w0)


# -- the merged pipeline and the render ------------------------------------------------------------

_PIPES: dict[tuple[str, str], Any] = {}


def base_pipe(base: str | Path, dtype: str = "float32"):
    """A base pipeline loaded from the folder (cached per base and dtype; always restored to base
    after each use by `merged`)."""
    import diffusers
    import torch

    key = (str(Path(base).resolve()), dtype)
    if key not in _PIPES:
        cls = json.loads((Path(base) / "model_index.json").read_text())["_class_name"]
        pipe = getattr(diffusers, cls).from_pretrained(str(base), dtype=getattr(torch, dtype),
                                                       local_files_only=True, use_safetensors=True)
        pipe.set_progress_bar_config(disable=True)
        _PIPES[key] = pipe
    return _PIPES[key]


@contextmanager
def merged(pipe, path: str | Path, lora_scale: float):
    """The pipeline with the file merged by hand at lora_scale; base weights restored on exit."""
    import torch

    updates = lora_updates(pipe, path)
    saved = []
    try:
        with torch.no_grad():
            for up in updates:
                mod = _weighted_modules(getattr(pipe, up.component))[up.module]
                saved.append((mod, mod.weight.detach().clone()))
                mod.weight.copy_(merged_weight(mod.weight, up, lora_scale).to(mod.weight.dtype))
        yield updates
    finally:
        with torch.no_grad():
            for mod, w in reversed(saved):
                mod.weight.copy_(w)


def render(pipe, manifest: dict[str, Any]):
    """One image with exactly the manifest's settings, called as render_one.render_image calls the
    pipeline (batch 1, one CPU generator seeded for it, output_type pil, a step-end callback)."""
    import diffusers
    import numpy as np
    import torch

    original = pipe.scheduler
    if manifest["scheduler"] != type(pipe.scheduler).__name__:
        pipe.scheduler = getattr(diffusers, manifest["scheduler"]).from_config(pipe.scheduler.config)
    import inspect

    # FLUX.2 Klein takes no negative prompt (the manifest then records "" for it)
    neg = {"negative_prompt": manifest["negative_prompt"]} \
        if "negative_prompt" in inspect.signature(type(pipe).__call__).parameters else {}
    try:
        result = pipe(prompt=manifest["prompt"], **neg,
                      num_inference_steps=manifest["steps"], guidance_scale=manifest["guidance_scale"],
                      width=manifest["width"], height=manifest["height"], num_images_per_prompt=1,
                      output_type="pil", generator=torch.Generator("cpu").manual_seed(manifest["seed"]),
                      callback_on_step_end=lambda _p, _i, _t, kw: kw,
                      callback_on_step_end_tensor_inputs=["latents"])
    finally:
        pipe.scheduler = original
    return np.asarray(result.images[0].convert("RGB"))


def reference_image(base: str | Path, lora: str | Path, manifest: dict[str, Any], lora_scale: float | None = None):
    """uint8 HxWx3: `lora` merged by hand into `base` at lora_scale (default: the manifest's scale),
    rendered with the manifest's settings."""
    scale = float(manifest["lora"]["scale"]) if lora_scale is None else lora_scale
    pipe = base_pipe(base, manifest.get("dtype", "float32"))
    with merged(pipe, lora, scale):
        return render(pipe, manifest)


def base_image(base: str | Path, manifest: dict[str, Any]):
    return render(base_pipe(base, manifest.get("dtype", "float32")), manifest)


def read_manifest(png: str | Path) -> dict[str, Any]:
    """The render's sidecar manifest (the same JSON is in the PNG's `lora_pipeline` text chunk)."""
    return json.loads(Path(png).with_suffix(".json").read_text())


def read_png(png: str | Path):
    import numpy as np
    from PIL import Image

    with Image.open(png) as im:
        return np.asarray(im.convert("RGB"))


@dataclass(frozen=True)
class PixelMatch:
    ok: bool
    max_abs: int
    mean_abs: float

    def __str__(self) -> str:
        return (f"max |diff| {self.max_abs} levels (tolerance {MAX_ABS_LEVELS}), mean |diff| "
                f"{self.mean_abs:.4f} levels (tolerance {MEAN_ABS_LEVELS})")


def pixel_match(a, b) -> PixelMatch:
    import numpy as np

    a, b = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
    if a.shape != b.shape:
        return PixelMatch(False, 255, 255.0)
    d = np.abs(a - b)
    mx, mean = int(d.max()), float(d.mean())
    return PixelMatch(mx <= MAX_ABS_LEVELS and mean <= MEAN_ABS_LEVELS, mx, mean)
