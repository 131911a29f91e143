"""Test helpers: real safetensors files whose 8-byte header length starts with chosen bytes, and
small LoRA files of any key style and width (`write_lora`).

The length is little-endian and padded to a multiple of 8, so its first byte can be 0x80 (a pickle's
protocol marker) and its first two bytes `PK` (0x4B50, a zip's magic): padding `__metadata__` moves
the length onto such a value.
"""

from __future__ import annotations

import struct
from pathlib import Path


def save_with_length_bytes(tensors: dict, path: Path, first: bytes, metadata: dict[str, str] | None = None) -> Path:
    """`safetensors.torch.save_file` with `__metadata__["pad"]` sized so the file starts with `first`."""
    from safetensors.torch import save_file

    target, modulus = int.from_bytes(first, "little"), 256 ** len(first)
    assert target % 8 == 0, "safetensors pads the header to a multiple of 8"
    md = dict(metadata or {}, pad="")
    save_file(tensors, str(path), metadata=md)
    (n0,) = struct.unpack("<Q", path.read_bytes()[:8])
    md["pad"] = "x" * ((target - n0) % modulus)  # the JSON grows by exactly this many bytes
    save_file(tensors, str(path), metadata=md)
    assert path.read_bytes()[: len(first)] == first, path.read_bytes()[:8]
    return path


def write_lora(path: Path, modules: dict[str, tuple[int, int]], *, rank: int = 4, kohya: bool = False,
               alpha: float | None = None, seed: int = 0) -> Path:
    """A LoRA file with random small weights: `modules` maps a module key (as it appears in the file,
    e.g. `transformer.transformer_blocks.0.attn.to_q` or `lora_unet_..._attn2_to_k`) to (in, out).
    PEFT parts (`lora_A`/`lora_B`), or kohya ones (`lora_down`/`lora_up`) with `kohya`; `alpha`: alpha tensors."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    down, up = ("lora_down", "lora_up") if kohya else ("lora_A", "lora_B")
    tensors = {}
    for name, (n_in, n_out) in modules.items():
        tensors[f"{name}.{down}.weight"] = (rng.standard_normal((rank, n_in)) * 0.01).astype(np.float32)
        tensors[f"{name}.{up}.weight"] = (rng.standard_normal((n_out, rank)) * 0.01).astype(np.float32)
        if alpha is not None:
            tensors[f"{name}.alpha"] = np.array(alpha, dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path
