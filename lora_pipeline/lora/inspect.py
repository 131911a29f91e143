"""What a LoRA file holds: key format, metadata, rank and alpha per module, weight-delta norms,
NaN/Inf, and the base architecture it was likely trained for (from key names and shapes).

`analyse(sf)` computes everything; `analyse(sf, norms=False)` is training ingestion's light pass
(docs/benchmarks.md, "Training ingestion"): the same report without the r x r Gram products of plain
LoRA pairs. Every tensor is still scanned, from its raw bits, for NaN/Inf and all-zero values, so
`nonfinite_tensors`, `malformed` and `all_zero` are those of the full pass (a module with an
all-zero factor has delta norm exactly 0.0; the other plain-LoRA norms stay None and the report's
`total_delta_norm` is None). The norms are computed later, per checkpoint (training/norms.py).

Pure numpy: no torch, so `lora-pipeline inspect` and checkpoint analysis stay light.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from lora_pipeline.lora import architecture as file_architecture
from lora_pipeline.lora import formats
from lora_pipeline.lora.safetensors_file import SafetensorsFile, read_safetensors
from lora_pipeline.lora.tensor_math import (
    dense_delta,
    free_decode_buffer,
    half_gram,
    scan_tensors,
    single_thread_blas,
)


@dataclass
class ModuleInfo:
    name: str
    algorithm: str = "lora"  # lora | loha | lokr | (unrenderable LyCORIS ones) | incomplete
    rank: int | None = None
    alpha: float | None = None
    alpha_source: str = "none"  # tensor | lora_adapter_metadata | none (scale 1.0, i.e. alpha == rank)
    scale: float = 1.0  # the format's multiplier on the product (lora/formats.py)
    dora: bool = False
    in_features: int | None = None
    out_features: int | None = None
    delta_norm: float | None = None  # ||ΔW||_F at strength 1.0 under the file's own semantics
    up_norm: float | None = None
    nonfinite: int = 0


@dataclass
class LoraFileReport:
    path: str
    sha256: str
    size: int
    key_format: str
    tensors: int
    metadata: dict[str, Any]
    modules: list[ModuleInfo] = field(default_factory=list)
    components: dict[str, int] = field(default_factory=dict)  # unet / text_encoder / ... -> modules
    unmatched_keys: list[str] = field(default_factory=list)
    nonfinite_tensors: list[str] = field(default_factory=list)
    architecture: dict[str, Any] = field(default_factory=dict)
    declared: dict[str, Any] = field(default_factory=dict)  # rank/alpha/trigger/base from metadata
    malformed: list[str] = field(default_factory=list)  # valid safetensors, broken LoRA parts: one line each
    norms: bool = True  # False: the light pass (plain LoRA delta norms not computed; total_delta_norm None)

    @property
    def ranks(self) -> list[int]:
        return sorted({m.rank for m in self.modules if m.rank is not None})

    @property
    def total_delta_norm(self) -> float:
        return float(np.sqrt(sum((m.delta_norm or 0.0) ** 2 for m in self.modules)))

    @property
    def all_zero(self) -> bool:
        """Every module's update is exactly zero (an untrained or zeroed LoRA); unknown norms count
        as non-zero, so an algorithm we cannot compute never reads as "changes nothing"."""
        return bool(self.modules) and all(m.delta_norm == 0.0 for m in self.modules)

    @property
    def algorithms(self) -> list[str]:
        return sorted({m.algorithm for m in self.modules})

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "modules"}
        d = asdict(LoraFileReport(**d))
        d["modules"] = [dict(m.__dict__) for m in self.modules]
        d.update(ranks=self.ranks, total_delta_norm=self.total_delta_norm if self.norms else None,
                 all_zero=self.all_zero)
        return d


def _declared(md: dict[str, str]) -> dict[str, Any]:
    """Rank, alpha, trigger and base facts the header declares (kohya ss_*, modelspec, diffusers)."""
    out: dict[str, Any] = {}
    adapter = formats.adapter_metadata(md)
    for prefix in ("unet.", "transformer.", ""):
        if f"{prefix}r" in adapter:
            out["rank"] = adapter[f"{prefix}r"]
            out["alpha"] = adapter.get(f"{prefix}lora_alpha")
            out["alpha_source"] = "lora_adapter_metadata"
            break
    if "ss_network_dim" in md:
        out.setdefault("rank", _num(md["ss_network_dim"]))
    if "ss_network_alpha" in md:
        out.setdefault("alpha", _num(md["ss_network_alpha"]))
    for key, name in (("modelspec.trigger_phrase", "trigger"), ("ss_base_model_version", "base_model_version"),
                      ("ss_sd_model_name", "base_model_name"), ("ss_new_sd_model_hash", "base_model_hash"),
                      ("modelspec.architecture", "modelspec_architecture"), ("ss_steps", "step"),
                      ("ss_epoch", "epoch"), ("ss_resolution", "resolution")):
        if md.get(key):
            out[name] = md[key]
    return out


def _num(s: str) -> float | int | None:
    try:
        f = float(s)
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() else f


Run = Callable[[list[Callable[[], None]]], None]  # runs a list of jobs, returns when all are done


def _in_turn(jobs: list[Callable[[], None]]) -> None:
    for job in jobs:
        job()


def analyse(sf: SafetensorsFile, run: Run = _in_turn, *, norms: bool = True) -> LoraFileReport:
    """The file's report. `run` executes the per-module jobs (numpy releases the GIL in them), by
    default one after the other; training/checkpoints.py shares them with its hashing thread.
    `norms=False`: the light pass (module docstring)."""
    try:
        with single_thread_blas():
            return _analyse(sf, run, norms)
    finally:
        free_decode_buffer()  # this thread's decode buffer (int32: 4 bytes per element of the largest factor)


def _analyse(sf: SafetensorsFile, run: Run, norms: bool) -> LoraFileReport:
    keys = sf.keys()
    parsed = formats.parse(sf)
    report = LoraFileReport(path=str(sf.path), sha256=sf.sha256, size=sf.size, key_format=parsed.key_format,
                            tensors=len(keys), metadata=_readable_metadata(sf.metadata),
                            unmatched_keys=parsed.unmatched, declared=_declared(sf.metadata), norms=norms)
    done: list[Any] = [None] * len(parsed.modules)
    scan = None if norms else scan_tensors(sf)

    def job(i: int) -> None:
        done[i] = _module_info(sf, parsed.modules[i], scan)

    run([partial(job, i) for i in range(len(parsed.modules))])
    checked: dict[str, bool] = {}
    for fm, (info, seen) in zip(parsed.modules, done, strict=True):
        report.malformed += [note for note in fm.malformed if note not in report.malformed]
        report.modules.append(info)
        checked.update(seen)
        report.components[fm.component] = report.components.get(fm.component, 0) + 1
    for k in keys:  # tensors the module pass did not already check (alphas, unmatched keys, ...)
        if k not in checked:
            if scan is None:
                arr = sf.tensor(k)
                checked[k] = arr.dtype.kind == "f" and not np.isfinite(arr).all()
            else:
                checked[k] = scan[k][0]
    report.nonfinite_tensors = [k for k in keys if checked.get(k)]
    report.architecture = _layout_facts(sf.header)
    return report


_LAYOUTS: dict[tuple, dict[str, Any]] = {}  # tensor table -> architecture facts (checkpoints of a run share one)


def _layout_facts(header: dict[str, dict]) -> dict[str, Any]:
    """The family from the raw header (key names + shapes), and what kind of file this is. Both read
    only the tensor table (names, dtypes, shapes), which every checkpoint of a run shares: computed
    once per table (a few ms per file at 800 tensors), a copy returned."""
    key = tuple((k, v.get("dtype"), tuple(v.get("shape") or ())) for k, v in header.items())
    facts = _LAYOUTS.get(key)
    if facts is None:
        facts = {**file_architecture.infer_architecture(header), "file_shape": file_architecture.describe_file_shape(header)}
        if len(_LAYOUTS) >= 16:
            _LAYOUTS.pop(next(iter(_LAYOUTS)))
        _LAYOUTS[key] = facts
    return copy.deepcopy(facts)


_SMALL = 1 << 16  # tensors up to this many elements are reduced in float64; larger ones in float32 (BLAS)


def _as_matrix(sf: SafetensorsFile, key: str) -> np.ndarray:
    t = sf.tensor(key)
    t = t.astype(np.float64 if t.size <= _SMALL else np.float32, copy=False)
    # explicit width: reshape(n, -1) cannot infer it for an empty tensor
    return t.reshape(t.shape[0], int(np.prod(t.shape[1:]))) if t.ndim else t.reshape(1, 1)


def _module_info(sf: SafetensorsFile, fm: formats.FileModule, scan: dict[str, tuple[bool, bool]] | None = None
                 ) -> tuple[ModuleInfo, dict[str, bool]]:
    """The module's info and {key: has NaN/Inf}; `scan` (the light pass): `scan_tensors`' results."""
    info = ModuleInfo(name=fm.key, algorithm=fm.algorithm, rank=fm.rank, alpha=fm.alpha,
                      alpha_source=fm.alpha_source, scale=fm.scale, dora=fm.dora)
    if fm.algorithm == "lora" and "mid" not in fm.parts:
        return info, (_lora_norms(sf, fm, info) if scan is None else _lora_scan(sf, fm, info, scan))
    # other algorithms (LoHa, LoKr, Tucker LoCon, ...): the full pass even when light, since fitting
    # their factors together is what finds a malformed module
    checked = {}
    arrays = {}
    for role, key in fm.parts.items():
        arr = sf.tensor(key)
        bad = int((~np.isfinite(arr)).sum()) if arr.dtype.kind == "f" else 0
        info.nonfinite += bad
        checked[key] = bad > 0
        arrays[role] = arr.astype(np.float64)
    if info.nonfinite == 0:
        try:
            with np.errstate(all="ignore"):
                delta = dense_delta(fm.algorithm, arrays)
        except (ValueError, IndexError, KeyError):  # factor shapes that do not fit together
            delta = None
            fm.malformed.append(f"module {fm.key!r}: its {fm.algorithm} factors' shapes do not fit together "
                                "(norm not computed)")
        if delta is not None and delta.ndim:
            info.out_features, info.in_features = int(delta.shape[0]), int(np.prod(delta.shape[1:]))
            info.delta_norm = float(fm.scale * np.linalg.norm(delta.reshape(-1)))
    return info, checked


def _lora_norms(sf: SafetensorsFile, fm: formats.FileModule, info: ModuleInfo) -> dict[str, bool]:
    """A LoRA module's norms and {key: has NaN/Inf} for its A/B tensors.

    One pass over each tensor: the r x r Gram matrices give ||A||, ||B|| (their traces) and
    ||B A|| = sqrt(sum((B^T B) * (A A^T))); a finite trace proves every element finite, so the
    elementwise NaN/Inf scan only runs when it is not. Half-precision pairs take `_half_norms`.
    """
    down_k, up_k = fm.parts["down"], fm.parts["up"]
    if _half_norms(sf, down_k, up_k, fm.scale, info):
        return {down_k: False, up_k: False}
    a2, b2 = _as_matrix(sf, down_k), _as_matrix(sf, up_k)
    info.in_features, info.out_features = int(a2.shape[1]), int(b2.shape[0])
    with np.errstate(all="ignore"):
        ga = a2 @ a2.T
        gb = b2.T @ b2
        sq_a, sq_b = float(np.trace(ga)), float(np.trace(gb))
    checked = {}
    for key, m, sq in ((down_k, a2, sq_a), (up_k, b2, sq_b)):
        bad = 0 if np.isfinite(sq) else int((~np.isfinite(m)).sum())
        info.nonfinite += bad
        checked[key] = bad > 0
    info.up_norm = float(np.sqrt(sq_b)) if np.isfinite(sq_b) else float(np.linalg.norm(b2))
    if b2.shape[1] == a2.shape[0]:
        with np.errstate(all="ignore"):
            sq = float(np.sum(gb * ga))
        info.delta_norm = float(fm.scale * np.sqrt(max(sq, 0.0))) if np.isfinite(sq) else float("nan")
    return checked


def _lora_scan(sf: SafetensorsFile, fm: formats.FileModule, info: ModuleInfo,
               scan: dict[str, tuple[bool, bool]]) -> dict[str, bool]:
    """The light pass of a LoRA A/B pair: shapes from the header, NaN/Inf (counted exactly when
    present) and zero factors from the bits; delta norm 0.0 when a factor is all zero (exact), else
    left None (computed by the full pass)."""
    down_k, up_k = fm.parts["down"], fm.parts["up"]
    (rank, *rest), (out, *inner) = (sf.header[k]["shape"] or [1] for k in (down_k, up_k))
    info.in_features, info.out_features = int(math.prod(rest)), int(out)
    checked, zero = {}, False
    for key in (down_k, up_k):
        bad, z = scan[key]
        if bad:
            info.nonfinite += int((~np.isfinite(sf.tensor(key))).sum())
        checked[key] = bad
        zero = zero or z
    if zero and info.nonfinite == 0 and math.prod(inner) == rank:
        info.delta_norm = float(fm.scale * 0.0)
    return checked


def _half_norms(sf: SafetensorsFile, down_k: str, up_k: str, scale: float, info: ModuleInfo) -> bool:
    """The norms of a fp16/bf16 A/B pair without NaN/Inf (True); else False and nothing set."""
    (dt_a, (rank, *rest)), (dt_b, (out, *inner)) = ((sf.header[k]["dtype"], sf.header[k]["shape"] or [0])
                                                    for k in (down_k, up_k))
    n_in, r_up = int(np.prod(rest)), int(np.prod(inner))
    if not {dt_a, dt_b} <= {"F16", "BF16"} or not rest or not inner or 0 in (rank, n_in, out) or r_up != rank:
        return False
    ga = half_gram(sf.tensor(down_k), rank, down=True)
    if ga is None or (gb := half_gram(sf.tensor(up_k), rank, down=False)) is None:
        return False
    info.in_features, info.out_features, info.up_norm = n_in, int(out), float(np.sqrt(gb[1]))
    sq = float(np.vdot(gb[0].astype(np.float64), ga[0].astype(np.float64)))
    info.delta_norm = float(scale * np.sqrt(max(sq, 0.0)))
    return True


def _readable_metadata(md: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in sorted(md.items()):
        if k == "lora_adapter_metadata" or (k.startswith("ss_") and v[:1] in "{["):
            try:
                out[k] = json.loads(v)
                continue
            except json.JSONDecodeError:
                pass
        out[k] = v
    return out


def inspect_file(path: str | Path) -> LoraFileReport:
    return analyse(read_safetensors(path))


def format_report(r: LoraFileReport) -> str:
    """The human-readable text of `lora-pipeline inspect`."""
    lines = [
        f"file:          {r.path}",
        f"sha256:        {r.sha256}",
        f"size:          {r.size} bytes, {r.tensors} tensors",
        f"key format:    {r.key_format}",
        f"components:    {', '.join(f'{k}={v}' for k, v in r.components.items()) or '-'}",
        f"architecture:  {r.architecture.get('family')} ({r.architecture.get('evidence', '-')})",
        f"file shape:    {(r.architecture.get('file_shape') or {}).get('description', '-')}",
        f"ranks:         {r.ranks or '-'}",
        f"alphas:        {sorted({m.alpha for m in r.modules if m.alpha is not None}) or 'none in file'}"
        f" (source: {', '.join(sorted({m.alpha_source for m in r.modules})) or '-'})",
        f"algorithm:     {', '.join(r.algorithms) or '-'}" + ("  (DoRA)" if any(m.dora for m in r.modules) else ""),
        f"delta norm:    total {r.total_delta_norm:.6g}" + ("  ALL ZERO: this LoRA changes nothing" if r.all_zero else ""),
        f"NaN/Inf:       {len(r.nonfinite_tensors)} tensor(s)" + (f": {r.nonfinite_tensors[:5]}" if r.nonfinite_tensors else ""),
    ]
    if r.declared:
        lines.append("declared:      " + ", ".join(f"{k}={v}" for k, v in r.declared.items()))
    for note in r.malformed[:10]:
        lines.append(f"MALFORMED:     {note}")
    if len(r.malformed) > 10:
        lines.append(f"MALFORMED:     ... and {len(r.malformed) - 10} more")
    if r.unmatched_keys:
        lines.append(f"unmatched:     {len(r.unmatched_keys)} key(s) not in a known LoRA family: {r.unmatched_keys[:3]}")
    lines.append("metadata:")
    for k, v in r.metadata.items():
        s = json.dumps(v) if not isinstance(v, str) else v
        lines.append(f"  {k}: {s if len(s) <= 100 else s[:97] + '...'}")
    lines.append("modules (rank, alpha, ||delta W||):")
    for m in r.modules:
        alpha = "-" if m.alpha is None else f"{m.alpha:g}"
        norm = "-" if m.delta_norm is None else f"{m.delta_norm:.4g}"
        flag = "  NaN/Inf" if m.nonfinite else ""
        algo = "" if m.algorithm == "lora" else f" [{m.algorithm}]"
        lines.append(f"  {m.name}{algo}  r={m.rank} alpha={alpha} scale={m.scale:g} norm={norm}{flag}")
    return "\n".join(lines)
