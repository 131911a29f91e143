"""Hostile safetensors files: a small valid kohya LoRA, and the header faults planted into it.

`CASES` maps a fault to (how to plant it into a valid file's bytes, what our one-line error says,
or None where the file is valid safetensors and the fault must surface as a finding instead).
Every file is written byte by byte here (the safetensors library refuses to write most of them).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

MODULES = ("lora_unet_blk_0_attn2_to_k", "lora_unet_blk_0_attn2_to_v")
RANK, WIDTH = 4, 16


def lora_tensors(seed: int = 0, alpha: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Two kohya LoRA modules (rank 4, width 16) with their 0-dim alpha tensors."""
    rng = np.random.default_rng(seed)
    out = {}
    for m in MODULES:
        out[f"{m}.lora_down.weight"] = (rng.standard_normal((RANK, WIDTH)) * 0.1).astype(np.float32)
        out[f"{m}.lora_up.weight"] = (rng.standard_normal((WIDTH, RANK)) * 0.1).astype(np.float32)
        out[f"{m}.alpha"] = np.array(2.0, dtype=np.float32)
    if alpha is not None:
        out[f"{MODULES[0]}.alpha"] = alpha
    return out


def lora_bytes(seed: int = 0, alpha: np.ndarray | None = None, metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.numpy import save

    return save(lora_tensors(seed, alpha), metadata=metadata or {"ss_network_dim": str(RANK)})


def split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict | str | bytes, body: bytes) -> bytes:
    """A file from a header (object, or JSON text as is) and data bytes; header padded to 8 bytes."""
    raw = header if isinstance(header, bytes) else (
        header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def _edit(fn: Callable[[dict, bytes], tuple[dict, bytes]]) -> Callable[[bytes], bytes]:
    def plant(data: bytes) -> bytes:
        h, body = split(data)
        return join(*fn(h, body))
    return plant


def _by_offset(h: dict) -> list[str]:
    return sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"])


ALPHA = f"{MODULES[0]}.alpha"
ALPHA2 = f"{MODULES[1]}.alpha"


def _set(key: str, field: str, value) -> Callable[[bytes], bytes]:
    def fn(h, body):
        h[key][field] = value
        return h, body
    return _edit(fn)


def _overlap(h, body):
    h[ALPHA2]["data_offsets"] = list(h[ALPHA]["data_offsets"])  # both 4-byte alphas on the same bytes
    return h, body


def _gap(h, body):
    for k in _by_offset(h):
        h[k]["data_offsets"] = [o + 8 for o in h[k]["data_offsets"]]
    return h, b"\0" * 8 + body


def _past_end(h, body):
    return h, body[:-4]


def _trailing(h, body):
    return h, body + b"\0" * 8


def _non_dict(h, body):
    h[ALPHA] = 5
    return h, body


def _bad_metadata(h, body):
    h["__metadata__"] = {"ss_network_dim": 4}
    return h, body


def _empty_overflow(data: bytes) -> bytes:
    """An empty alpha whose shape's element count overflows 64 bits before its trailing 0."""
    h, body = split(lora_bytes(alpha=np.zeros((0,), np.float32)))
    h[ALPHA]["shape"] = [2**32, 2**32, 0]
    return join(h, body)


CASES: dict[str, tuple[Callable[[bytes], bytes], str | None]] = {
    "empty_alpha": (lambda _d: lora_bytes(alpha=np.zeros((0,), np.float32)), None),
    "nan_alpha": (lambda _d: lora_bytes(alpha=np.array(np.nan, np.float32)), None),
    "overflowing_shape": (_empty_overflow, "element count overflows"),
    "string_offsets": (_set(ALPHA, "data_offsets", ["0", "4"]), "data_offsets is not two non-negative integers"),
    "overlapping_offsets": (_edit(_overlap), "overlaps tensor"),
    "gap_in_offsets": (_edit(_gap), "gap of 8 bytes at the start of the data"),
    "offsets_past_end": (_edit(_past_end), "ends past the file end"),
    "trailing_bytes": (_edit(_trailing), "8 bytes after the last tensor are covered by no tensor"),
    "non_dict_entry": (_edit(_non_dict), "header entry is not an object (int)"),
    "unknown_dtype": (_set(ALPHA, "dtype", "F8_E4M3FN"), "unknown dtype 'F8_E4M3FN'"),
    "non_string_metadata": (_edit(_bad_metadata), "__metadata__ key 'ss_network_dim' is not a string (int)"),
}
# The tensor or key each error names (besides the file).
NAMES = {"overflowing_shape": ALPHA, "string_offsets": ALPHA, "overlapping_offsets": ALPHA2,
         "gap_in_offsets": ALPHA, "offsets_past_end": "", "trailing_bytes": "",
         "non_dict_entry": ALPHA, "unknown_dtype": ALPHA, "non_string_metadata": "ss_network_dim"}


def fp8_bytes() -> bytes:
    """A valid LoRA stored in fp8: E4M3 down weights, E5M2 up weights, F32 alphas (torch writes it)."""
    import torch
    from safetensors.torch import save

    t = {k: torch.from_numpy(v) for k, v in lora_tensors().items()}
    for k in list(t):
        if k.endswith("lora_down.weight"):
            t[k] = t[k].to(torch.float8_e4m3fn)
        elif k.endswith("lora_up.weight"):
            t[k] = t[k].to(torch.float8_e5m2)
    return save(t, metadata={"ss_network_dim": str(RANK)})


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
