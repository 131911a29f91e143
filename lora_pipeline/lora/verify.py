"""By value: does the pipeline now apply, module by module, the update the file defines?

For every module the file defines (lora/formats.py, read from the raw file before any library
conversion) we find the model module it targets and compare the update the peft layer applies for
our adapter with the file's:

- LoRA / LoCon: ΔW = s·B·A. Both sides are compared without building ΔW: with Gram matrices of the
  factors, ||ΔW_file - ΔW_applied||² = ||ΔW_f||² + ||ΔW_a||² - 2<ΔW_f, ΔW_a>, where every term is the
  trace of a product of r x r matrices (rank r, any width). Relative error = that norm / ||ΔW_f||.
- DoRA: the LoRA part as above, plus the magnitude vector, which must be in place (`use_dora`).
- LoHa / LoKr: factor by factor (same shapes, values within tolerance) and the scale.

Tolerances (relative, Frobenius): float32 1e-5; float16 2e-3 (casting a factor to fp16 moves each
element by at most 2^-11 ≈ 4.9e-4 relative); bfloat16 1.6e-2 (2^-8 ≈ 3.9e-3 per element).

Model modules are found by name in one spelling on both sides (formats.canonical_path), with the
SDXL original-UNet (SGM) block names that kohya writes (`input_blocks_4_1_...`) as aliases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lora_pipeline.lora.formats import FileModule, ParsedFile, canonical_path
from lora_pipeline.lora.safetensors_file import SafetensorsFile

TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")
LYCORIS_PARAMS = {"loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
                   "lokr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")}


@dataclass
class ModuleCheck:
    key: str
    target: str | None  # "<component>.<module name>" or None when the model has no such module
    status: str  # ok | missing | not_applied | differs | scale | dora_lost
    rel_error: float | None = None
    file_scale: float | None = None
    applied_scale: float | None = None


@dataclass
class ByValue:
    checks: list[ModuleCheck] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # adapter layers the file does not define
    tolerance: float = 1e-5

    def with_status(self, *status: str) -> list[ModuleCheck]:
        return [c for c in self.checks if c.status in status]

    def evidence(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for c in self.checks:
            counts[c.status] = counts.get(c.status, 0) + 1
        errs = [c.rel_error for c in self.checks if c.rel_error is not None]
        bad = [c for c in self.checks if c.status != "ok"]
        return {"modules_in_file": len(self.checks), "statuses": counts, "tolerance": self.tolerance,
                "max_rel_error": max(errs) if errs else None, "extra_adapter_layers": len(self.extra),
                "not_as_file": [{"module": c.key, "target": c.target, "status": c.status,
                                 "rel_error": c.rel_error, "file_scale": c.file_scale,
                                 "applied_scale": c.applied_scale} for c in bad[:30]]}


# -- finding model modules -------------------------------------------------------------------------
def _sgm_name(name: str, layers: int) -> str | None:
    """The original-UNet (SGM/LDM) spelling of a diffusers UNet module, as kohya writes SDXL keys."""
    per = layers + 1
    m = re.match(r"^down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)(.*)$", name)
    if m:
        b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"input_blocks.{1 + b * per + i}.{0 if kind == 'resnets' else 1}{_sgm_resnet(rest, kind)}"
    m = re.match(r"^down_blocks\.(\d+)\.downsamplers\.0\.conv(.*)$", name)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * per}.0.op{m[2]}"
    m = re.match(r"^mid_block\.(resnets|attentions)\.(\d+)(.*)$", name)
    if m:
        idx = 1 if m[1] == "attentions" else (0 if m[2] == "0" else 2)
        return f"middle_block.{idx}{_sgm_resnet(m[3], m[1])}"
    m = re.match(r"^up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)(.*)$", name)
    if m:
        b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"output_blocks.{b * (per) + i}.{0 if kind == 'resnets' else 1}{_sgm_resnet(rest, kind)}"
    simple = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
              "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
              "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    return simple.get(name)


def _sgm_resnet(rest: str, kind: str) -> str:
    if kind != "resnets":
        return rest
    for new, old in ((".conv1", ".in_layers.2"), (".conv2", ".out_layers.3"), (".time_emb_proj", ".emb_layers.1"),
                     (".conv_shortcut", ".skip_connection"), (".norm1", ".in_layers.0"), (".norm2", ".out_layers.0")):
        if rest.startswith(new):
            return old + rest[len(new):]
    return rest


def _upsampler_aliases(model: Any, layers: int) -> dict[str, str]:
    out = {}
    for b, block in enumerate(getattr(model, "up_blocks", [])):
        if getattr(block, "upsamplers", None):
            sub = 2 if getattr(block, "attentions", None) else 1
            out[f"up_blocks.{b}.upsamplers.0.conv"] = f"output_blocks.{b * (layers + 1) + layers}.{sub}.conv"
    return out


# BFL / kohya FLUX.1 module names -> the diffusers modules they are split into (in output order).
_FLUX_DOUBLE = {"img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn_proj": ("attn.to_out.0",),
                "img_mlp_0": ("ff.net.0.proj",), "img_mlp_2": ("ff.net.2",), "img_mod_lin": ("norm1.linear",),
                "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
                "txt_attn_proj": ("attn.to_add_out",), "txt_mlp_0": ("ff_context.net.0.proj",),
                "txt_mlp_2": ("ff_context.net.2",), "txt_mod_lin": ("norm1_context.linear",)}
_FLUX_SINGLE = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "linear2": ("proj_out",),
                "modulation_lin": ("norm.linear",)}
_FLUX_EXTRA = {"img_in": "x_embedder", "txt_in": "context_embedder", "final_layer_linear": "proj_out",
               "time_in_in_layer": "time_text_embed.timestep_embedder.linear_1",
               "time_in_out_layer": "time_text_embed.timestep_embedder.linear_2",
               "vector_in_in_layer": "time_text_embed.text_embedder.linear_1",
               "vector_in_out_layer": "time_text_embed.text_embedder.linear_2",
               "guidance_in_in_layer": "time_text_embed.guidance_embedder.linear_1",
               "guidance_in_out_layer": "time_text_embed.guidance_embedder.linear_2"}
# FLUX.2: the MLPs are linear_in/linear_out and a single block's linear1 stays one fused module.
_FLUX2_DOUBLE = {**{k: v for k, v in _FLUX_DOUBLE.items() if "mlp" not in k and "mod" not in k},
                 "img_mlp_0": ("ff.linear_in",), "img_mlp_2": ("ff.linear_out",),
                 "txt_mlp_0": ("ff_context.linear_in",), "txt_mlp_2": ("ff_context.linear_out",)}
_FLUX2_SINGLE = {"linear1": ("attn.to_qkv_mlp_proj",), "linear2": ("attn.to_out",)}
_FLUX2_EXTRA = {"img_in": "x_embedder", "txt_in": "context_embedder", "final_layer_linear": "proj_out",
                "time_in_in_layer": "time_guidance_embed.timestep_embedder.linear_1",
                "time_in_out_layer": "time_guidance_embed.timestep_embedder.linear_2",
                "guidance_in_in_layer": "time_guidance_embed.guidance_embedder.linear_1",
                "guidance_in_out_layer": "time_guidance_embed.guidance_embedder.linear_2",
                "single_stream_modulation_lin": "single_stream_modulation.linear",
                "double_stream_modulation_img_lin": "double_stream_modulation_img.linear",
                "double_stream_modulation_txt_lin": "double_stream_modulation_txt.linear"}
# Left out on purpose: final_layer.adaLN_modulation.1, whose halves (shift, scale) diffusers stores
# swapped; a file module there counts as missing rather than being applied the wrong way round.


def _flux_aliases(model: Any) -> dict[str, tuple[str, ...]]:
    """The original FLUX (BFL) spelling that kohya, ai-toolkit (FLUX.2) and ComfyUI files use, for a
    FLUX.1 or FLUX.2 transformer: fused projections (qkv, FLUX.1's linear1) stand for several
    diffusers modules, split along the output."""
    flux2 = hasattr(model, "double_stream_modulation_img")
    double, single, extra = (_FLUX2_DOUBLE, _FLUX2_SINGLE, _FLUX2_EXTRA) if flux2 else \
        (_FLUX_DOUBLE, _FLUX_SINGLE, _FLUX_EXTRA)
    out: dict[str, tuple[str, ...]] = {bfl: (name,) for bfl, name in extra.items()}
    for i in range(len(getattr(model, "transformer_blocks", []))):
        for bfl, parts in double.items():
            out[f"double_blocks_{i}_{bfl}"] = tuple(f"transformer_blocks.{i}.{p}" for p in parts)
    for i in range(len(getattr(model, "single_transformer_blocks", []))):
        for bfl, parts in single.items():
            out[f"single_blocks_{i}_{bfl}"] = tuple(f"single_transformer_blocks.{i}.{p}" for p in parts)
    return out


def model_index(pipe: Any) -> dict[tuple[str, str], tuple[str, ...]]:
    """(component, canonical path) -> the module name(s), for every module of every LoRA-able component;
    several names where one file module is a fused projection the model splits."""
    index: dict[tuple[str, str], tuple[str, ...]] = {}
    for comp in COMPONENTS:
        model = getattr(pipe, comp, None)
        if model is None:
            continue
        names = [n for n, _ in model.named_modules() if n]
        for n in names:
            index[(comp, canonical_path(_base_name(n)))] = (_base_name(n),)
        if comp == "unet":
            lpb = getattr(model.config, "layers_per_block", 1)
            lpb = lpb[0] if isinstance(lpb, (list, tuple)) else lpb
            ups = _upsampler_aliases(model, lpb)
            for n in names:
                base = _base_name(n)
                alias = ups.get(base) or _sgm_name(base, lpb)
                if alias:
                    index.setdefault((comp, canonical_path(alias)), (base,))
        if comp == "transformer" and hasattr(model, "single_transformer_blocks"):
            for alias, targets in _flux_aliases(model).items():
                index.setdefault((comp, alias), targets)
    return index


def _base_name(name: str) -> str:
    """A module name without peft's wrapper levels (`.base_layer`, adapter dict entries)."""
    return re.sub(r"\.(base_layer|lora_[AB]|lora_magnitude_vector|lora_embedding_[AB]|lora_dropout)(\..*)?$", "", name)


def locate(pipe: Any, parsed: ParsedFile) -> dict[str, tuple[str, tuple[str, ...]] | None]:
    """file module key -> (component, model module names), or None where the model has no such module.
    kohya's `lora_unet_` and BFL's `diffusion_model.` name the denoiser, a transformer in FLUX/SD3
    (a diffusers-style `unet.` key does not: diffusers would not load it into a transformer either)."""
    index = model_index(pipe)
    out: dict[str, tuple[str, tuple[str, ...]] | None] = {}
    for m in parsed.modules:
        tries = [(m.component, m.path)]
        if m.key.startswith(("lora_unet_", "diffusion_model.")) and getattr(pipe, "transformer", None) is not None:
            tries.append(("transformer", m.path.removeprefix("diffusion_model_")))
        found = next((k for k in tries if k in index), None)
        out[m.key] = (found[0], index[found]) if found else None
    return out


# -- comparing -------------------------------------------------------------------------------------
def _t(sf: SafetensorsFile, key: str):
    import torch

    return torch.from_numpy(sf.tensor(key).astype("float64", copy=True))


def _as_matrix(t):
    return t.reshape(t.shape[0], -1) if t.ndim > 1 else t.reshape(1, -1)


def lora_rel_error(a_f, b_f, s_f, a_a, b_a, s_a) -> float:
    """||s_f B_f A_f - s_a B_a A_a||_F / ||s_f B_f A_f||_F from r x r products only (float64)."""
    a_f, a_a = _as_matrix(a_f), _as_matrix(a_a)
    b_f, b_a = _as_matrix(b_f), _as_matrix(b_a)
    if a_f.shape[1] != a_a.shape[1] or b_f.shape[0] != b_a.shape[0]:
        return float("inf")
    ff = float(((b_f.T @ b_f) * (a_f @ a_f.T)).sum()) * s_f * s_f
    aa = float(((b_a.T @ b_a) * (a_a @ a_a.T)).sum()) * s_a * s_a
    fa = float(((b_f.T @ b_a) * (a_f @ a_a.T)).sum()) * s_f * s_a
    diff = max(ff + aa - 2 * fa, 0.0) ** 0.5
    norm = max(ff, 0.0) ** 0.5
    return diff / norm if norm > 0 else (0.0 if aa <= 0 else float("inf"))


def _rel(x, y) -> float:
    import torch

    if tuple(x.shape) != tuple(y.shape):
        if x.numel() != y.numel():
            return float("inf")
        y = y.reshape(x.shape)
    n = float(torch.linalg.vector_norm(x))
    d = float(torch.linalg.vector_norm(x - y))
    return d / n if n > 0 else (0.0 if d == 0 else float("inf"))


def _param(layer: Any, attr: str, adapter: str):
    holder = getattr(layer, attr, None)
    if holder is None or adapter not in holder:
        return None
    p = holder[adapter]
    return (p.weight if hasattr(p, "weight") else p).detach().to("cpu").double()


def check_fused(fm: FileModule, sf: SafetensorsFile, layers: list[Any], adapter: str, strength: float,
                tol: float) -> tuple[str, float | None, float | None]:
    """A fused file projection (FLUX qkv, linear1) against the model modules it was split into: every
    part must carry the file's A; their B's, stacked in output order, the file's B; one scale."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    if fm.algorithm != "lora" or "mid" in fm.parts or fm.dora:
        return "differs", None, None
    if not all(isinstance(x, BaseTunerLayer) and adapter in getattr(x, "scaling", {}) for x in layers):
        return "not_applied", None, None
    parts = [(_param(x, "lora_A", adapter), _param(x, "lora_B", adapter), float(x.scaling[adapter])) for x in layers]
    if any(a is None or b is None for a, b, _ in parts):
        return "not_applied", None, None
    a_f, b_f = _t(sf, fm.parts["down"]), _t(sf, fm.parts["up"])
    a0, s0 = parts[0][0], parts[0][2]
    if any(_rel(a0, a) > tol for a, _, _ in parts[1:]):
        return "differs", None, s0
    # the parts' scales may differ (a part's own alpha): fold each into its B before stacking
    b_stack = torch.cat([_as_matrix(b) * (s / s0) for _, b, s in parts], dim=0)
    if b_stack.shape[0] != _as_matrix(b_f).shape[0]:
        return "differs", None, s0
    rel = lora_rel_error(a_f, b_f, fm.scale * strength, a0, b_stack, s0)
    return ("ok" if rel <= tol else "differs"), rel, s0


def check_module(fm: FileModule, sf: SafetensorsFile, layer: Any, adapter: str, strength: float,
                 tol: float) -> tuple[str, float | None, float | None]:
    """(status, rel_error, applied_scale) of one located module."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if not isinstance(layer, BaseTunerLayer):
        return "not_applied", None, None
    scaling = getattr(layer, "scaling", {}).get(adapter)
    if scaling is None:
        return "not_applied", None, None
    want = fm.scale * strength
    if fm.algorithm == "lora":
        a_a, b_a = _param(layer, "lora_A", adapter), _param(layer, "lora_B", adapter)
        if a_a is None or b_a is None:
            return "not_applied", None, scaling
        a_f, b_f = _t(sf, fm.parts["down"]), _t(sf, fm.parts["up"])
        if "mid" in fm.parts:  # LoCon tucker core: no peft layer carries it
            return "differs", None, scaling
        rel = lora_rel_error(a_f, b_f, want, a_a, b_a, float(scaling))
        if rel > tol:
            same_factors = lora_rel_error(a_f, b_f, 1.0, a_a, b_a, 1.0) <= tol
            return ("scale" if same_factors else "differs"), rel, scaling
        if fm.dora:
            mag = _param(layer, "lora_magnitude_vector", adapter)
            if mag is None or not getattr(layer, "use_dora", {}).get(adapter, False):
                return "dora_lost", rel, scaling
            rel = max(rel, _rel(_t(sf, fm.parts["magnitude"]).reshape(-1), mag.reshape(-1)))
            if rel > tol:
                return "differs", rel, scaling
        return "ok", rel, scaling
    names = LYCORIS_PARAMS.get(fm.algorithm)
    if names is None:
        return "not_applied", None, scaling
    worst = 0.0
    for attr in names:
        applied = _param(layer, attr, adapter)
        if (attr in fm.parts) != (applied is not None):
            return "differs", None, scaling
        if applied is not None:
            worst = max(worst, _rel(_t(sf, fm.parts[attr]), applied))
    scale_err = abs(float(scaling) - want) / abs(want) if want else abs(float(scaling))
    if worst > tol:
        return "differs", worst, scaling
    if scale_err > tol:
        return "scale", max(worst, scale_err), scaling
    return "ok", max(worst, scale_err), scaling


def verify(pipe: Any, sf: SafetensorsFile, parsed: ParsedFile, adapter: str, strength: float,
           dtype_name: str, located: dict[str, tuple[str, tuple[str, ...]] | None] | None = None) -> ByValue:
    """`located`: `locate(pipe, parsed)` when the caller has it (module names do not change with the load)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    tol = TOLERANCE.get(dtype_name, 1e-2)
    out = ByValue(tolerance=tol)
    where = located if located is not None else locate(pipe, parsed)
    seen: set[str] = set()
    for fm in parsed.modules:
        target = where.get(fm.key)
        if target is None or fm.algorithm not in ("lora", "loha", "lokr"):
            out.checks.append(ModuleCheck(fm.key, None, "missing", file_scale=fm.scale))
            continue
        comp, names = target
        layers = [getattr(pipe, comp).get_submodule(n) for n in names]
        if len(layers) == 1:
            status, rel, applied = check_module(fm, sf, layers[0], adapter, strength, tol)
        else:
            status, rel, applied = check_fused(fm, sf, layers, adapter, strength, tol)
        seen.update(f"{comp}.{n}" for n in names)
        out.checks.append(ModuleCheck(fm.key, f"{comp}.{'+'.join(names)}", status, rel, fm.scale * strength,
                                      None if applied is None else float(applied)))
    for comp in COMPONENTS:
        model = getattr(pipe, comp, None)
        if model is None:
            continue
        for n, mod in model.named_modules():
            if isinstance(mod, BaseTunerLayer) and adapter in getattr(mod, "scaling", {}) \
                    and f"{comp}.{n}" not in seen:
                out.extra.append(f"{comp}.{n}")
    return out


def correct_scales(pipe: Any, checks: list[ModuleCheck], parsed: ParsedFile, adapter: str,
                   strength: float) -> list[str]:
    """Modules whose factors landed right but whose scale did not (diffusers' mis-keyed alpha
    patterns): set the layer's alpha so that peft's own scale formula gives the file's scale."""
    fixed = []
    by_key = {m.key: m for m in parsed.modules}
    for c in checks:
        if c.status != "scale" or c.target is None or "+" in c.target:
            continue
        comp, name = c.target.split(".", 1)
        layer = getattr(pipe, comp).get_submodule(name)
        fm = by_key[c.key]
        alphas = getattr(layer, "lora_alpha", None) if fm.algorithm == "lora" else getattr(layer, "alpha", None)
        if alphas is None or adapter not in alphas:
            continue
        r = layer.r[adapter]
        rslora = bool(getattr(layer, "use_rslora", {}).get(adapter, False)) if isinstance(
            getattr(layer, "use_rslora", None), dict) else False
        alphas[adapter] = fm.scale * (r ** 0.5 if rslora else r)
        layer.set_scale(adapter, strength)
        fixed.append(c.key)
    return fixed
