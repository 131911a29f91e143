"""What a LoRA file is, from its safetensors header alone (key names, shapes; no tensor data).

`infer_architecture(header)`: the base family the file was trained for: sd1, sd2, sdxl, sd3, flux1,
flux2, the generic `sd-unet` (SD-style UNet keys of a non-standard width, e.g. the toy models) and
`flux` (FLUX block names, version not decidable), or unknown; with the evidence.
`describe_file_shape(header)`: whether the file is a LoRA at all (a full model, alphas only, LoRA
pairs under a key prefix no loader knows), with counts and a sample key.

Both read the raw key names themselves (every key style: kohya `lora_unet_*`, diffusers/PEFT
`unet.*`/`transformer.*`, BFL/ComfyUI `diffusion_model.*`, LyCORIS), so they do not depend on how
inspect.py groups keys into modules. Kohya flattens module paths with `_`, so the patterns accept
`.` or `_` between name parts.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# One LoRA tensor: module path, then the part. Alphas are scalars; LyCORIS parts carry no "lora".
_PART = re.compile(
    r"^(?P<module>.+?)[._](?P<part>"
    r"lora_(?P<down>down|A)(?:\.[^.]+)?\.weight|lora_(?P<up>up|B)(?:\.[^.]+)?\.weight"
    r"|lora\d*\.(?P<ddown>down)\.weight|lora\d*\.(?P<dup>up)\.weight|lora_mid\.weight"
    r"|(?P<alpha>alpha)|(?P<lyco>hada_w[12]_[ab]|hada_t[12]|lokr_w[12](?:_[ab])?|lokr_t[12]|dora_scale))$")
# Module paths some loader knows (kohya, diffusers/PEFT, BFL/ComfyUI/SAI, bare diffusers/LDM names).
_KNOWN_ROOT = re.compile(
    r"^(?:lora_(?:unet|te\d?|transformer|prior_unet|prior_te)_|lycoris_|(?:unet|transformer|prior|text_encoders?"
    r"(?:_\d)?|diffusion_model)\.|(?:down_blocks|up_blocks|mid_block|input_blocks|"
    r"middle_block|output_blocks|transformer_blocks|single_transformer_blocks|double_blocks|single_blocks|"
    r"joint_blocks|text_model|conv_in|conv_out|time_embedding|add_embedding|context_embedder|x_embedder|proj_out|"
    r"norm_out|time_text_embed|time_guidance_embed|double_stream_modulation|single_stream_modulation)[._])")
_UNET = re.compile(r"(?:^|[._])(?:down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block)[._]")

FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "sd3": "SD3/3.5", "flux1": "FLUX.1",
                "flux2": "FLUX.2", "flux": "FLUX (version unknown)", "sd-unet": "SD-style UNet (width unknown)",
                "unknown": "unknown"}
_CROSS_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl"}  # attn2.to_k in_features: the text encoder width


@dataclass
class _Module:
    name: str
    in_features: int | None = None
    out_features: int | None = None
    down: bool = False
    up: bool = False
    lycoris: bool = False


@dataclass
class _Keys:
    """The header's keys grouped into LoRA modules; everything else in `other`."""

    modules: dict[str, _Module] = field(default_factory=dict)
    alphas: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    lora_parts: int = 0

    @property
    def paired(self) -> list[_Module]:
        return [m for m in self.modules.values() if (m.down and m.up) or m.lycoris]


def _entries(header: dict[str, Any]) -> dict[str, dict]:
    return {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def _group(header: dict[str, Any]) -> _Keys:
    out = _Keys()
    for key, info in _entries(header).items():
        shape = list(info.get("shape") or [])
        m = _PART.match(key)
        if m is None:
            out.other.append(key)
            continue
        if m["alpha"]:
            if len(shape) <= 1 and (not shape or shape[0] == 1):
                out.alphas.append(key)
            else:
                out.other.append(key)
            continue
        mod = out.modules.setdefault(m["module"], _Module(m["module"]))
        out.lora_parts += 1
        if (m["down"] or m["ddown"]) and len(shape) >= 2:
            mod.down, mod.in_features = True, int(shape[1])  # (rank, in[, kh, kw])
        elif (m["up"] or m["dup"]) and len(shape) >= 2:
            mod.up, mod.out_features = True, int(shape[0])  # (out, rank[, 1, 1])
        elif m["lyco"]:
            mod.lycoris = mod.lycoris or m["lyco"] != "dora_scale"  # DoRA rides on a down/up pair
            if m["lyco"] == "hada_w1_a" and len(shape) == 2:
                mod.out_features = int(shape[0])
            elif m["lyco"] == "hada_w1_b" and len(shape) == 2:
                mod.in_features = int(shape[1])
    return out


def _search(pattern: str, names: list[str]) -> list[re.Match]:
    pat = re.compile(pattern)
    return [m for m in (pat.search(n) for n in names) if m]


def _indexes(pattern: str, names: list[str]) -> list[int]:
    return [int(m.group(1)) for m in _search(pattern, names)]


def _mode(values: list[int]) -> int | None:
    return Counter(values).most_common(1)[0][0] if values else None


def infer_architecture(header: dict[str, Any]) -> dict[str, Any]:
    """{"family": ..., "evidence": "...", ...widths}: the base family, from key families and widths."""
    keys = _group(header)
    mods = list(keys.modules.values())
    names = [m.name for m in mods] or list(_entries(header))
    joined = "\n".join(names)
    if re.search(r"(?:^|[._])(?:double_blocks|single_blocks|single_transformer_blocks)[._]\d+|to_qkv_mlp_proj|"
                 r"double_stream_modulation|single_stream_modulation|time_guidance_embed|"
                 r"(?:^|[._])ff(?:_context)?[._]linear_(?:in|out)", joined, re.M):
        return _flux(mods, names)
    mmdit = re.search(r"(?:^|[._])joint_blocks[._]\d+|(?:^|[._])transformer_blocks[._]\d+[._]"
                      r"(?:attn[._]add_[qkv]_proj|attn[._]to_add_out|ff_context)|lora_te3_|text_encoder_3[._]",
                      joined, re.M)
    if mmdit and not _UNET.search(joined):
        return _mmdit(mods, names)
    if _UNET.search(joined):
        return _unet(mods, names)
    return _text_encoder_only(mods, names)


def _hidden(mods: list[_Module]) -> int | None:
    """The transformer width: in_features of the attention input projections."""
    return _mode([m.in_features for m in mods if m.in_features and re.search(
        r"(?:qkv|to_[qkv]|add_[qkv]_proj|linear1|to_qkv_mlp_proj)$", m.name)])


def _ratio(mods: list[_Module], pattern: str, hidden: int, attr: str) -> float | None:
    vals = [getattr(m, attr) for m in mods if getattr(m, attr) and re.search(pattern, m.name)]
    return _mode(vals) / hidden if vals and hidden else None


def _flux(mods: list[_Module], names: list[str]) -> dict[str, Any]:
    hidden = _hidden(mods)
    ev: dict[str, Any] = {"hidden_size": hidden} if hidden else {}
    joined = "\n".join(names)
    flux2_names = re.search(r"to_qkv_mlp_proj|double_stream_modulation|single_stream_modulation|"
                            r"time_guidance_embed|(?:^|[._])ff(?:_context)?[._]linear_(?:in|out)", joined, re.M)
    if flux2_names:
        return {"family": "flux2", "evidence": f"FLUX.2 module name `{flux2_names.group(0)}`", **ev}
    flux1_names = re.search(r"img_mod[._]lin|txt_mod[._]lin|single_blocks[._]\d+[._]modulation[._]lin|proj_mlp|"
                            r"single_transformer_blocks[._]\d+[._](?:attn[._]to_[qkv]|norm[._]linear|proj_out)|"
                            r"(?:^|[._])ff(?:_context)?[._]net[._]", joined, re.M)
    if flux1_names:
        return {"family": "flux1", "evidence": f"FLUX.1 module name `{flux1_names.group(0)}`", **ev}
    if hidden in (4096, 6144):
        return {"family": "flux2", "evidence": f"FLUX.2 width {hidden} (klein-9B 4096, dev 6144)", **ev}
    # FLUX.1 and FLUX.2 differ in their MLPs: single-block linear1 out = 7 vs 9 x hidden, linear2 in
    # = 5 vs 4 x hidden, double-block MLP in = 4 vs 6 x hidden (SwiGLU, mlp_ratio 3).
    for label, pattern, attr, v1, v2 in (
            ("single-block linear1 out", r"single_blocks[._]\d+[._]linear1$", "out_features", 7, 9),
            ("single-block linear2 in", r"single_blocks[._]\d+[._]linear2$", "in_features", 5, 4),
            ("double-block MLP in", r"(?:img|txt)_mlp[._]0$", "out_features", 4, 6)):
        r = _ratio(mods, pattern, hidden or 0, attr)
        if r in (v1, v2):
            fam = "flux1" if r == v1 else "flux2"
            return {"family": fam, "evidence": f"{label} = {r:g} x hidden {hidden}", **ev}
    double = _indexes(r"(?:^|[._])(?:double_blocks|transformer_blocks)[._](\d+)", names)
    single = _indexes(r"(?:^|[._])(?:single_blocks|single_transformer_blocks)[._](\d+)", names)
    if double and max(double) >= 8:
        return {"family": "flux1", "evidence": f"double block {max(double)} (FLUX.2 has at most 8)", **ev}
    if single and max(single) >= 38:
        return {"family": "flux2", "evidence": f"single block {max(single)} (FLUX.1 has 38)", **ev}
    if hidden == 3072:
        return {"family": "flux1", "evidence": "FLUX width 3072 (FLUX.1; FLUX.2-klein-4B shares it)", **ev}
    return {"family": "flux", "evidence": "FLUX double/single block names, version not decidable", **ev}


def _mmdit(mods: list[_Module], names: list[str]) -> dict[str, Any]:
    """SD3 MMDiT, or a FLUX LoRA that only touches the double (joint) blocks."""
    hidden = _hidden(mods)
    ev: dict[str, Any] = {"hidden_size": hidden} if hidden else {}
    joined = "\n".join(names)
    sd3 = re.search(r"(?:^|[._])joint_blocks[._]\d+|lora_te3_|text_encoder_3[._]|"
                    r"(?:^|[._])transformer_blocks[._]\d+[._]attn2[._]", joined, re.M)
    if sd3:
        return {"family": "sd3", "evidence": f"SD3 module name `{sd3.group(0).strip('._')}`", **ev}
    if hidden == 3072:
        return {"family": "flux1", "evidence": "joint blocks of width 3072, no single blocks (FLUX.1 double "
                                               "blocks only)", **ev}
    if hidden in (4096, 6144):
        return {"family": "flux2", "evidence": f"joint blocks of width {hidden} (FLUX.2)", **ev}
    blocks = _indexes(r"(?:^|[._])transformer_blocks[._](\d+)", names)
    why = f"block {max(blocks)}, beyond FLUX.1's 19" if blocks and max(blocks) >= 19 else \
        f"width {hidden}" if hidden in (1536, 2432) else "MMDiT joint blocks without FLUX single blocks"
    return {"family": "sd3", "evidence": f"SD3 MMDiT ({why})", **ev}


def _unet(mods: list[_Module], names: list[str]) -> dict[str, Any]:
    widths = sorted({m.in_features for m in mods if m.in_features and re.search(r"attn2[._]to_[kv]$", m.name)})
    ev: dict[str, Any] = {"cross_attention_dim": widths[0] if len(widths) == 1 else widths}
    if len(widths) == 1 and widths[0] in _CROSS_WIDTH:
        return {"family": _CROSS_WIDTH[widths[0]], "evidence": f"cross-attention width {widths[0]}", **ev}
    joined = "\n".join(names)
    # SDXL's UNet: several transformer blocks per attention (SD1/2 have one), attentions in up block 0 /
    # output blocks 0-2 (SD1/2: none there), a second text encoder.
    xl = re.search(r"(?:^|[._])(?:down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block)[._].*"
                   r"transformer_blocks[._][1-9]|up_blocks[._]0[._]attentions|output_blocks[._][0-2][._]1[._]|"
                   r"^lora_te2_|^text_encoder_2[._]", joined, re.M)
    sd12 = re.search(r"down_blocks[._]0[._]attentions|up_blocks[._]3[._]attentions|input_blocks[._][12][._]1[._]|"
                     r"output_blocks[._](?:9|10|11)[._]1[._]", joined, re.M)
    if xl and not sd12:
        what = xl.group(0)
        what = "transformer_blocks.N (N > 0)" if "transformer_blocks" in what else what.strip("._")
        return {"family": "sdxl", "evidence": f"SDXL UNet layout (`{what}`)", **ev}
    why = "a non-standard cross-attention width" if widths else "no cross-attention width in the file"
    return {"family": "sd-unet", "evidence": f"SD-style UNet keys with {why}", **ev}


def _text_encoder_only(mods: list[_Module], names: list[str]) -> dict[str, Any]:
    joined = "\n".join(names)
    if re.search(r"^lora_te1_|^text_encoder[._]", joined, re.M) and re.search(r"^lora_te2_|^text_encoder_2[._]",
                                                                              joined, re.M):
        return {"family": "sdxl", "evidence": "two CLIP text encoders, no UNet keys"}
    if re.search(r"^lora_te_|^text_encoder[._]", joined, re.M):
        width = _mode([m.in_features for m in mods if m.in_features and re.search(r"q_proj$", m.name)])
        fam = {768: "sd1", 1024: "sd2"}.get(width or 0)
        if fam:
            return {"family": fam, "evidence": f"text encoder only, width {width}", "hidden_size": width}
        return {"family": "unknown", "evidence": "text encoder keys only", "hidden_size": width}
    return {"family": "unknown", "evidence": "no known UNet, transformer or text-encoder key names"}


def _common_dotted_prefix(names: list[str]) -> str:
    p = os.path.commonprefix(names)
    return p[: p.rfind(".") + 1] if "." in p else ""


def _unknown_prefix(paired: list[_Module]) -> tuple[str, int] | None:
    """(prefix, modules under it) when no paired module sits under a known root, else None."""
    if not paired or any(_KNOWN_ROOT.match(m.name) for m in paired):
        return None
    prefixes = Counter()
    for m in paired:  # a known root further in: everything before it is the unknown prefix
        for i in [i + 1 for i, c in enumerate(m.name) if c == "."]:
            if _KNOWN_ROOT.match(m.name[i:]):
                prefixes[m.name[:i]] += 1
                break
    if prefixes:
        prefix, n = prefixes.most_common(1)[0]
        return prefix, n
    prefix = _common_dotted_prefix([m.name for m in paired])
    return (prefix, len(paired)) if prefix else None


def describe_file_shape(header: dict[str, Any]) -> dict[str, Any]:
    """{"kind": lora | full_model | alphas_only | pairs_under_unknown_prefix | empty | unknown,
    "description": one phrase, counts, "sample_key", and for an unknown prefix "prefix"/"example"}."""
    entries = _entries(header)
    keys = _group(header)
    paired = keys.paired
    out: dict[str, Any] = {"tensors": len(entries), "pairs": len(paired), "alphas": len(keys.alphas),
                           "sample_key": next(iter(entries), None)}
    if not entries:
        return {**out, "kind": "empty", "description": "holds no tensors"}
    unknown = _unknown_prefix(paired)
    if unknown is not None:
        prefix, n = unknown
        sample = next(k for k in entries if k.startswith(prefix) and _PART.match(k) and not k.endswith(".alpha"))
        return {**out, "kind": "pairs_under_unknown_prefix", "prefix": prefix, "sample_key": sample,
                "example": f"`{sample}` -> `{sample[len(prefix):]}`",
                "stripped_known": bool(_KNOWN_ROOT.match(sample[len(prefix):])),
                "description": f"holds {len(paired)} LoRA down/up pairs under the unknown key prefix `{prefix}`"}
    if paired:
        lyco = sum(m.lycoris for m in paired)
        extra = f", {len(keys.other)} other tensors" if keys.other else ""
        kind = f"{lyco} LyCORIS modules" if lyco == len(paired) else f"{len(paired)} down/up pairs"
        return {**out, "kind": "lora", "sample_key": paired[0].name,
                "description": f"a LoRA: {kind}, {len(keys.alphas)} alphas{extra}"}
    if keys.alphas and not keys.other and not keys.lora_parts:
        return {**out, "kind": "alphas_only", "sample_key": keys.alphas[0],
                "description": f"holds only {len(keys.alphas)} alpha tensors and no weights"}
    weights = [k for k in keys.other if k.endswith((".weight", ".bias"))]
    if weights and not keys.lora_parts and not keys.alphas:
        return {**out, "kind": "full_model", "sample_key": weights[0],
                "description": f"a full model checkpoint ({len(entries):,} tensors like `{weights[0]}`), not a LoRA"}
    half = f" ({keys.lora_parts} LoRA tensors without their other half)" if keys.lora_parts else ""
    return {**out, "kind": "unknown", "sample_key": out["sample_key"],
            "description": f"holds no LoRA down/up pair ({len(entries):,} tensors like `{out['sample_key']}`){half}"}


def family_name(family: str | None) -> str:
    return FAMILY_NAMES.get(family or "unknown", family or "unknown")
