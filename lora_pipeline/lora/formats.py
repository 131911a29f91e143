"""What a LoRA file defines, module by module, under its own format's semantics.

The one parser of LoRA key families (kohya sd-scripts, LyCORIS, PEFT/diffusers, legacy diffusers
attention processors, our native format) into `FileModule`s: which model module a group of tensors
targets (component + a canonical module path), which algorithm it uses (lora, loha, lokr, or an
unsupported LyCORIS one), its rank and alpha with where the alpha came from, and `scale`, the
multiplier the format applies to its product at strength 1.0:

- kohya / LyCORIS LoRA, LoCon, LoHa: alpha / rank, the alpha tensor of the module (none: scale 1);
- LyCORIS LoKr: alpha / rank, except when both Kronecker factors are full matrices (scale 1, alpha
  ignored, as LyCORIS does);
- PEFT/diffusers: `lora_alpha / r` from the header's `lora_adapter_metadata` (per component prefix,
  with `rank_pattern` / `alpha_pattern`, `use_rslora`), else a per-module `.alpha` tensor, else 1;
- DoRA (`dora_scale`, `lora_magnitude_vector`): the LoRA scale plus a magnitude vector.

This is what `inspect`, the file checks and the by-value load verification (lora/verify.py) all read;
nothing here imports torch.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from lora_pipeline.lora.safetensors_file import SafetensorsFile

# Parts, by the role they play. A module's `parts` maps role -> file key.
LORA_ROLES = {"lora_down.weight": "down", "lora_up.weight": "up", "lora_mid.weight": "mid",
              "lora_A.weight": "down", "lora_B.weight": "up", "lora.down.weight": "down",
              "lora.up.weight": "up", "lora_linear_layer.down.weight": "down",
              "lora_linear_layer.up.weight": "up", "down.weight": "down", "up.weight": "up",
              "alpha": "alpha", "dora_scale": "magnitude", "lora_magnitude_vector": "magnitude",
              "lora_magnitude_vector.weight": "magnitude"}
LYCORIS_ROLES = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
                 "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"}
# LyCORIS algorithms we can name but not render (no peft tuner carries them faithfully).
UNSUPPORTED_ROLES = {"diff": "full", "diff_b": "full", "w_norm": "norm", "b_norm": "norm",
                     "on_input": "ia3", "a1.weight": "glora", "oft_blocks": "oft", "oft_diag": "oft",
                     "boft_blocks": "boft"}

_KOHYA = re.compile(r"^(?P<module>lora_(?:unet|te\d?|transformer)_[^.]+)\.(?P<part>.+)$")
_PEFT = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_[AB])(?:\.[^.]+)?\.weight$")
_DIFFUSERS = re.compile(r"^(?P<module>.+?)\.(?P<part>lora(?:_linear_layer)?\.(?:down|up)\.weight)$")
_LEGACY = re.compile(r"^(?P<module>.+?)\.processor\.(?P<proj>to_[qkv]|to_out)_lora\.(?P<part>down|up)\.weight$")
_PEFT_EXTRA = re.compile(r"^(?P<module>.+?)\.(?P<part>alpha|lora_magnitude_vector(?:\.weight)?|dora_scale)$")
_COMPONENTS = (("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"),
               ("lora_te_", "text_encoder"), ("lora_transformer_", "transformer"),
               ("unet.", "unet"), ("text_encoder_2.", "text_encoder_2"), ("text_encoder.", "text_encoder"),
               ("transformer.", "transformer"))
_UNET_ROOTS = ("down_blocks", "up_blocks", "mid_block", "conv_in", "conv_out", "time_embedding")


@dataclass
class FileModule:
    key: str  # the module's key prefix in the file
    component: str  # unet | text_encoder | text_encoder_2 | transformer | other
    path: str  # canonical module path inside the component (see canonical_path)
    algorithm: str  # lora | loha | lokr | full | norm | ia3 | glora | oft | boft | incomplete
    parts: dict[str, str] = field(default_factory=dict)  # role -> file key
    rank: int | None = None
    alpha: float | None = None
    alpha_source: str = "none"  # tensor | lora_adapter_metadata | none
    scale: float = 1.0  # the format's multiplier on its product at strength 1.0
    dora: bool = False
    malformed: list[str] = field(default_factory=list)  # what is wrong with it, one line each

    @property
    def tensors(self) -> int:
        return len(self.parts)


@dataclass
class ParsedFile:
    modules: list[FileModule]
    unmatched: list[str]  # keys in no known family
    key_format: str  # kohya | lycoris | peft | diffusers | diffusers-legacy | mixed(...) | unknown
    adapter_metadata: dict[str, Any]

    @property
    def algorithms(self) -> set[str]:
        return {m.algorithm for m in self.modules}


def canonical_path(path: str) -> str:
    """A module path in one spelling for file and model: dots and underscores alike, without the
    `text_model.` level that transformers 4 had in CLIP text encoders and 5 dropped."""
    p = path.replace(".", "_")
    return p[len("text_model_"):] if p.startswith("text_model_") else p


def split_component(module: str) -> tuple[str, str]:
    for prefix, comp in _COMPONENTS:
        if module.startswith(prefix):
            return comp, module[len(prefix):]
    if module.startswith(_UNET_ROOTS):
        return "unet", module
    return "other", module


def adapter_metadata(md: dict[str, str]) -> dict[str, Any]:
    raw = md.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        v = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, absurdly nested, or an integer past Python's digit limit
        return {}
    return v if isinstance(v, dict) else {}


def _classify(key: str) -> tuple[str, str, str] | None:
    """key -> (family, module key, role) or None."""
    m = _KOHYA.match(key)
    if m:
        part = m["part"]
        if part in LORA_ROLES:
            return "kohya", m["module"], LORA_ROLES[part]
        if part in LYCORIS_ROLES:
            return "lycoris", m["module"], part
        if part in UNSUPPORTED_ROLES:
            return "lycoris", m["module"], part
        return None
    m = _LEGACY.match(key)
    if m:
        proj = m["proj"] + (".0" if m["proj"] == "to_out" else "")
        return "diffusers-legacy", f"{m['module']}.{proj}", m["part"]
    for family, pat in (("peft", _PEFT), ("diffusers", _DIFFUSERS)):
        m = pat.match(key)
        if m:
            role = {"lora_A": "down", "lora_B": "up"}.get(m["part"]) or LORA_ROLES[m["part"]]
            return family, m["module"], role
    m = _PEFT_EXTRA.match(key)
    if m:
        return "peft", m["module"], LORA_ROLES[m["part"]]
    return None


def parse(sf: SafetensorsFile) -> ParsedFile:
    groups: dict[str, dict[str, str]] = {}
    families: dict[str, int] = {}
    unmatched: list[str] = []
    for key in sf.header:
        got = _classify(key)
        if got is None:
            unmatched.append(key)
            continue
        family, module, role = got
        families[family] = families.get(family, 0) + 1
        groups.setdefault(module, {})[role] = key
    # A peft `.alpha`/magnitude key whose module holds no pair is not a module of its own.
    meta = adapter_metadata(sf.metadata)
    modules = [_module(sf, key, parts, meta) for key, parts in sorted(groups.items())]
    fams = sorted(f for f in families if f != "kohya" or "lycoris" not in families)
    key_format = fams[0] if len(fams) == 1 else ("mixed(" + ",".join(fams) + ")" if fams else "unknown")
    return ParsedFile(modules=modules, unmatched=unmatched, key_format=key_format, adapter_metadata=meta)


def _shape(sf: SafetensorsFile, key: str) -> list[int]:
    return list(sf.header[key]["shape"])


def _dim(sf: SafetensorsFile, key: str, i: int) -> int | None:
    """Dimension `i` of a tensor, None when the tensor has fewer (a hostile or damaged file)."""
    shape = _shape(sf, key)
    return shape[i] if -len(shape) <= i < len(shape) else None


def _scalar(sf: SafetensorsFile, key: str) -> tuple[float | None, str | None]:
    """(the value of a one-value tensor such as alpha, what is wrong with it): an alpha that is not
    exactly one finite number is no alpha (scale 1.0), and says so; loaders would fail on it."""
    t = sf.tensor(key).reshape(-1)
    if t.size != 1:
        what = "is empty (shape [0])" if t.size == 0 else f"holds {t.size} values, not one"
        return None, f"alpha tensor {key!r} {what}: treated as no alpha (scale 1.0)"
    try:
        v = float(t[0])
    except (TypeError, ValueError, OverflowError):
        return None, f"alpha tensor {key!r} is not a number: treated as no alpha (scale 1.0)"
    if not math.isfinite(v):
        return None, f"alpha tensor {key!r} is {v}: treated as no alpha (scale 1.0)"
    return v, None


def _module(sf: SafetensorsFile, key: str, parts: dict[str, str], meta: dict[str, Any]) -> FileModule:
    component, path = split_component(key)
    m = FileModule(key=key, component=component, path=canonical_path(path), algorithm="incomplete", parts=parts)
    roles = set(parts)
    unsupported = sorted({UNSUPPORTED_ROLES[r] for r in roles if r in UNSUPPORTED_ROLES})
    alpha_t, note = _scalar(sf, parts["alpha"]) if "alpha" in parts else (None, None)
    if note:
        m.malformed.append(note)
    m.dora = "magnitude" in roles
    if unsupported:
        m.algorithm = unsupported[0]
        return m
    if roles & {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}:
        m.algorithm = "loha" if {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= roles else "incomplete"
        if m.algorithm == "loha":
            m.rank = _dim(sf, parts["hada_w1_b"], 0)
            _alpha_over_rank(m, alpha_t)
        return m
    if any(r.startswith("lokr_") for r in roles):
        has1 = "lokr_w1" in roles or {"lokr_w1_a", "lokr_w1_b"} <= roles
        has2 = "lokr_w2" in roles or {"lokr_w2_a", "lokr_w2_b"} <= roles
        if not (has1 and has2):
            return m
        m.algorithm = "lokr"
        if "lokr_w1_a" in roles:
            m.rank = _dim(sf, parts["lokr_w1_a"], 1)
        elif "lokr_w2_a" in roles:
            m.rank = _dim(sf, parts["lokr_w2_a"], 1)
        if m.rank is None:  # both factors full: LyCORIS ignores alpha, scale 1
            m.alpha, m.alpha_source, m.scale = alpha_t, "tensor" if alpha_t is not None else "none", 1.0
        else:
            _alpha_over_rank(m, alpha_t)
        return m
    if not {"down", "up"} <= roles:
        return m
    m.algorithm = "lora"
    m.rank = _dim(sf, parts["down"], 0)
    cfg = _peft_config_for(meta, component, path) if meta else None
    if cfg is not None and _number(cfg["alpha"]) is None:
        m.malformed.append(f"lora_adapter_metadata: lora_alpha {str(cfg['alpha'])[:40]!r} is not a number: ignored")
        cfg = None
    if cfg is not None:
        m.alpha, m.alpha_source = float(cfg["alpha"]), "lora_adapter_metadata"
        rank = m.rank or 1
        m.scale = m.alpha / (math.sqrt(rank) if cfg["rslora"] else rank)
        m.dora = m.dora or bool(cfg["dora"])
    else:
        _alpha_over_rank(m, alpha_t)
    return m


def _number(v: Any) -> float | None:
    """A finite real number from JSON, else None (strings, lists, booleans, NaN, huge ints)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _alpha_over_rank(m: FileModule, alpha: float | None) -> None:
    """kohya / LyCORIS: scale = alpha / rank; no (or zero) alpha means alpha = rank."""
    if alpha is not None and alpha != 0:
        m.alpha, m.alpha_source = alpha, "tensor"
        m.scale = alpha / m.rank if m.rank else 1.0
    else:
        m.alpha, m.alpha_source, m.scale = None, "none", 1.0


def _peft_config_for(meta: dict[str, Any], component: str, path: str) -> dict[str, Any] | None:
    """lora_alpha (after alpha_pattern) and rslora/dora flags of the header's config for a module."""
    prefixes = {k.split(".", 1)[0] + "." for k in meta if "." in k}
    if any(k.startswith(f"{component}.") for k in meta):
        prefix = f"{component}."
    elif component == "other" and len(prefixes) == 1:  # keys under an unknown prefix: the one config there is
        prefix = next(iter(prefixes))
    else:
        prefix = ""
    get = meta.get
    if f"{prefix}lora_alpha" not in meta and f"{prefix}r" not in meta:
        return None
    r = get(f"{prefix}r") or 8
    alpha = get(f"{prefix}lora_alpha", r)
    pattern = get(f"{prefix}alpha_pattern") or {}
    dotted = path
    if isinstance(pattern, dict):
        for pat, value in pattern.items():
            if _pattern_matches(str(pat), dotted):
                alpha = value
                break
    return {"alpha": alpha, "rslora": bool(get(f"{prefix}use_rslora")), "dora": bool(get(f"{prefix}use_dora"))}


def _pattern_matches(pattern: str, module: str) -> bool:
    """peft's rule: the pattern names the module path, or a dotted suffix of it, or is a regex of it."""
    if module == pattern or module.endswith("." + pattern):
        return True
    if len(pattern) > 200 or re.search(r"[)+*}]\s*[+*{]", pattern):  # nested quantifiers: may never end
        return False
    try:
        return re.fullmatch(rf"(.*\.)?(?:{pattern})", module) is not None
    except (re.error, RecursionError, OverflowError):
        return False
