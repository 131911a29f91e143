"""The numeric kernels of the LoRA file analysis (lora/inspect.py): BLAS thread control, the NaN/Inf
and all-zero scan of tensors' raw bits, fp16 decoding and the half-precision Gram products of A/B
pairs, and the dense update of LyCORIS algorithms (LoHa, LoKr, Tucker LoCon). Kept apart from the
report model so each side reads on its own; pure numpy, no torch.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from lora_pipeline.lora.safetensors_file import SafetensorsFile

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


def scan_tensors(sf: SafetensorsFile) -> dict[str, tuple[bool, bool]]:
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


def half_gram(t: np.ndarray, rank: int, down: bool) -> tuple[np.ndarray, float] | None:
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


def free_decode_buffer() -> None:
    """Drops this thread's `half_gram` buffer (kept between calls, freed once a file is done)."""
    _scratch.buf = None


def _cp(t: np.ndarray, wa: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """A Tucker (CP) core with its two mode matrices, as LyCORIS' make_weight_cp builds it."""
    return np.einsum("ijkl,jr,ip->prkl", t, wb, wa)


def dense_delta(algorithm: str, a: dict[str, np.ndarray]) -> np.ndarray | None:
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
