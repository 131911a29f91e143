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
import ctypes
import glob
import json
import math
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from lora_pipeline.lora import architecture as file_architecture
from lora_pipeline.lora import formats
from lora_pipeline.lora.safetensors_file import SafetensorsFile, read_safetensors


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


_BLAS: list = []


def _blas_threads_api():
    """numpy's bundled OpenBLAS get/set-num-threads, or None (other BLAS builds: left alone)."""
    if not _BLAS:
        try:
            libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*"))
            lib = ctypes.CDLL(libs[0]) if libs else None
            get, put = (getattr(lib, f"scipy_openblas_{op}_num_threads64_", None) for op in ("get", "set"))
            _BLAS.append((get, put) if get and put else None)
        except OSError:
            _BLAS.append(None)
    return _BLAS[0]


@contextmanager
def single_thread_blas() -> Iterator[None]:
    """The LoRA matrices are small (rank x width): OpenBLAS waking its thread pool for each product
    costs ~50x the product itself on a busy host, so the analysis runs them on one thread."""
    api = _blas_threads_api()
    if api is None:
        yield
        return
    before = api[0]()
    api[1](1)
    try:
        yield
    finally:
        api[1](before)


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
        _scratch.buf = None  # this thread's decode buffer (2 bytes per element of the largest factor)


def _analyse(sf: SafetensorsFile, run: Run, norms: bool) -> LoraFileReport:
    keys = sf.keys()
    parsed = formats.parse(sf)
    report = LoraFileReport(path=str(sf.path), sha256=sf.sha256, size=sf.size, key_format=parsed.key_format,
                            tensors=len(keys), metadata=_readable_metadata(sf.metadata),
                            unmatched_keys=parsed.unmatched, declared=_declared(sf.metadata), norms=norms)
    done: list[Any] = [None] * len(parsed.modules)
    scan = None if norms else _scan_tensors(sf)

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
    """The module's info and {key: has NaN/Inf}; `scan` (the light pass): `_scan_tensors`' results."""
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
                delta = _dense_delta(fm.algorithm, arrays)
        except (ValueError, IndexError, KeyError):  # factor shapes that do not fit together
            delta = None
            fm.malformed.append(f"module {fm.key!r}: its {fm.algorithm} factors' shapes do not fit together "
                                "(norm not computed)")
        if delta is not None and delta.ndim:
            info.out_features, info.in_features = int(delta.shape[0]), int(np.prod(delta.shape[1:]))
            info.delta_norm = float(fm.scale * np.linalg.norm(delta.reshape(-1)))
    return info, checked


def _cp(t: np.ndarray, wa: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """A Tucker (CP) core with its two mode matrices, as LyCORIS' make_weight_cp builds it."""
    return np.einsum("ijkl,jr,ip->prkl", t, wb, wa)


def _dense_delta(algorithm: str, a: dict[str, np.ndarray]) -> np.ndarray | None:
    """ΔW / scale for the algorithms whose update is not a plain B·A (LoHa, LoKr, Tucker LoCon)."""
    if algorithm == "lora":  # LoCon with a Tucker core
        down, mid, up = a["down"], a["mid"], a["up"]
        return np.einsum("oa,abkl,bi->oikl", up.reshape(up.shape[0], -1), mid, down.reshape(down.shape[0], -1))
    if algorithm == "loha":
        if "hada_t1" in a:
            w1 = _cp(a["hada_t1"], a["hada_w1_a"], a["hada_w1_b"])
            w2 = _cp(a["hada_t2"], a["hada_w2_a"], a["hada_w2_b"])
        else:
            w1 = a["hada_w1_a"] @ a["hada_w1_b"]
            w2 = a["hada_w2_a"] @ a["hada_w2_b"]
        return w1 * w2
    if algorithm == "lokr":
        w1 = a["lokr_w1"] if "lokr_w1" in a else a["lokr_w1_a"] @ a["lokr_w1_b"]
        if "lokr_w2" in a:
            w2 = a["lokr_w2"]
        elif "lokr_t2" in a:
            w2 = _cp(a["lokr_t2"], a["lokr_w2_a"], a["lokr_w2_b"])
        else:
            w2 = a["lokr_w2_a"] @ a["lokr_w2_b"]
        if w2.ndim == 4 and w1.ndim == 2:
            w1 = w1[:, :, None, None]
        return np.kron(w1, w2)
    return None


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


# The light pass' scan, on the raw bits: (signed view, unsigned view, smallest non-finite positive code,
# smallest non-finite negative code, the sign bit). A value is NaN/Inf when its exponent bits are all
# ones: a positive one is >= the first limit as a signed integer, a negative one >= the second as an
# unsigned one; every element is +-0 when the signed max is <= 0 and the unsigned max <= the sign bit.
_BITS = {"F16": (np.int16, np.uint16, 0x7C00, 0xFC00, 0x8000),
         "BF16": (np.int16, np.uint16, 0x7F80, 0xFF80, 0x8000),
         "F32": (np.int32, np.uint32, 0x7F800000, 0xFF800000, 0x80000000),
         "F64": (np.int64, np.uint64, 0x7FF0000000000000, 0xFFF0000000000000, 0x8000000000000000)}


def _bits_scan(sf: SafetensorsFile, key: str) -> tuple[bool, bool]:
    """(holds NaN/Inf, every element is zero) of one tensor: two integer max-reductions over its bytes
    for IEEE float dtypes (no decode, no copy); the decoded tensor for the others (fp8, integers)."""
    info = sf.header[key]
    spec = _BITS.get(info["dtype"])
    start, end = info["data_offsets"]
    if end <= start:
        return False, True
    if spec is None:
        arr = sf.tensor(key)
        return bool(arr.dtype.kind == "f" and not np.isfinite(arr).all()), not bool(np.any(arr))
    signed, unsigned, pos, neg, sign = spec
    u = np.frombuffer(sf._data[start:end], dtype=unsigned)
    s_max, u_max = int(u.view(signed).max()), int(u.max())
    return s_max >= pos or u_max >= neg, s_max <= 0 and u_max <= sign


def _scan_tensors(sf: SafetensorsFile) -> dict[str, tuple[bool, bool]]:
    """`_bits_scan` of every tensor. The tensors of one IEEE float dtype are reduced together, one
    `np.maximum.reduceat` per view over the span they tile (a tensor per segment: no Python per
    tensor); a dtype whose tensors are scattered (less than half their span) goes tensor by tensor."""
    out: dict[str, tuple[bool, bool]] = {}
    groups: dict[str, list[tuple[int, int, str]]] = {}
    for k, info in sf.header.items():
        start, end = info["data_offsets"]
        if info["dtype"] in _BITS and end > start:
            groups.setdefault(info["dtype"], []).append((start, end, k))
        else:
            out[k] = _bits_scan(sf, k)
    for dtype, items in groups.items():
        signed, unsigned, pos, neg, sign = _BITS[dtype]
        size = np.dtype(unsigned).itemsize
        items.sort()
        lo, hi = items[0][0], items[-1][1]
        if sum(e - b for b, e, _k in items) * 2 < hi - lo or any((b - lo) % size for b, _e, _k in items):
            out.update((k, _bits_scan(sf, k)) for _b, _e, k in items)
            continue
        u = np.frombuffer(sf._data[lo:hi], dtype=unsigned)
        span = (np.array([(b, e) for b, e, _k in items], dtype=np.int64) - lo) // size
        ends = span[:, 1]
        # segments: each tensor, and each gap before the next one (other dtypes' bytes, reduced and ignored)
        starts = np.unique(np.concatenate([span[:, 0], ends[ends < len(u)]]))
        u_max, s_max = _segment_maxima(u, u.view(signed), starts.astype(np.intp))
        first = np.searchsorted(starts, span[:, 0])  # the segment of each tensor
        u_max, s_max = u_max[first], s_max[first]
        bad = ((s_max >= pos) | (u_max >= neg)).tolist()
        zero = ((s_max <= 0) & (u_max <= sign)).tolist()
        out.update((k, (bad[i], zero[i])) for i, (_b, _e, k) in enumerate(items))
    return out


_BLOCK_BYTES = 1 << 20  # the scan's block: both reductions of a block read it while it is in L2


def _segment_maxima(u: np.ndarray, s: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per segment (`starts`, ascending, from 0) the max of `u` and of `s` (two views of the same
    bytes), block by block: one pass over memory instead of two (the scan is memory-bound)."""
    n, block = len(u), max(1, _BLOCK_BYTES // u.itemsize)
    u_max = np.full(len(starts), np.iinfo(u.dtype).min, u.dtype)
    s_max = np.full(len(starts), np.iinfo(s.dtype).min, s.dtype)
    at = np.arange(0, n, block)
    first = np.searchsorted(starts, at, "right") - 1  # the segment each block begins in
    stop = np.searchsorted(starts, np.minimum(at + block, n), "left")  # the first segment after it
    for a, lo, hi in zip(at.tolist(), first.tolist(), stop.tolist(), strict=True):
        local = starts[lo:hi] - a
        local[0] = 0  # the segment running in from the previous block
        for view, out in ((u, u_max), (s, s_max)):
            np.maximum(out[lo:hi], np.maximum.reduceat(view[a:a + block], local), out=out[lo:hi])
    return u_max, s_max


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


# fp16/bf16 factors skip numpy's half -> float cast (a scalar loop as slow as the products): fp16 bits
# are decoded by integer shifts in one reused int32 buffer (bf16 arrives decoded); the Gram products
# run in float32, each term exact (11 + 11 or 8 + 8 significant bits fit in 24), only the sums round;
# the rank is zero-padded to a multiple of 4 (OpenBLAS' syrk takes up to 1.4x longer otherwise).
_HALF_SIGN = np.int32(-0x70000001)  # 0x8FFFFFFF: after `<< 13`, bits 28-30 hold copies of the sign
_HALF_SCALE = np.float32(2.0**112)  # 2^(127 - 15), fp16's exponent bias to float32's (subnormals too)
_HALF_LIMIT = 2.0**31  # a trace below this proves no |value| >= 2^16: no fp16 Inf/NaN was decoded
_scratch = threading.local()


def f16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """In place: int32 holding sign-extended fp16 bits -> their float32 values (a view). Exact for
    every finite fp16; Inf/NaN come out as finite values >= 2^16 (callers rule them out)."""
    np.left_shift(bits, 13, out=bits)
    np.bitwise_and(bits, _HALF_SIGN, out=bits)
    f = bits.view(np.float32)
    np.multiply(f, _HALF_SCALE, out=f)
    return f


def _half_gram(t: np.ndarray, rank: int, down: bool) -> tuple[np.ndarray, float] | None:
    """(Gram matrix, its trace), float32, of a fp16 or decoded bf16 factor: A A^T for down (rank x n),
    B^T B for up (n x rank); None when the trace cannot rule out NaN/Inf or overflow."""
    t = t.reshape(t.shape[0], -1)
    pad = -(-rank // 4) * 4
    n = t.shape[1] if down else t.shape[0]
    if getattr(_scratch, "buf", None) is None or _scratch.buf.size < pad * n:
        _scratch.buf = np.empty(max(pad * n, 1 << 16), np.int32)
    m = _scratch.buf[: pad * n].reshape((pad, n) if down else (n, pad))
    (m[rank:] if down else m[:, rank:])[...] = 0
    if t.dtype == np.float16:
        np.copyto(m[:rank] if down else m[:, :rank], t.view(np.int16))  # sign-extending widen
        f16_bits_to_f32(m[:rank] if down else m)
    else:
        np.copyto((m[:rank] if down else m[:, :rank]).view(np.float32), t)
    f = m.view(np.float32)
    with np.errstate(all="ignore"):
        g = f @ f.T if down else f.T @ f
    sq = float(np.trace(g))
    return (g, sq) if sq < (_HALF_LIMIT if t.dtype == np.float16 else np.inf) else None


def _half_norms(sf: SafetensorsFile, down_k: str, up_k: str, scale: float, info: ModuleInfo) -> bool:
    """The norms of a fp16/bf16 A/B pair without NaN/Inf (True); else False and nothing set."""
    (dt_a, (rank, *rest)), (dt_b, (out, *inner)) = ((sf.header[k]["dtype"], sf.header[k]["shape"] or [0])
                                                    for k in (down_k, up_k))
    n_in, r_up = int(np.prod(rest)), int(np.prod(inner))
    if not {dt_a, dt_b} <= {"F16", "BF16"} or not rest or not inner or 0 in (rank, n_in, out) or r_up != rank:
        return False
    ga = _half_gram(sf.tensor(down_k), rank, down=True)
    if ga is None or (gb := _half_gram(sf.tensor(up_k), rank, down=False)) is None:
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
