"""Reading a .safetensors file safely, in one pass, without torch.

The whole file is read once: the same bytes are hashed and parsed. The header is validated before
anything is trusted (length, JSON, dtypes, offsets inside the file), so a truncated file or an
absurd header length is a one-line `LoraFileError`, never a traceback or a huge allocation.
Pickled formats (.ckpt/.bin/.pt/.pth/.pkl, or pickle/zip content) are refused, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PICKLE_EXTENSIONS = frozenset({".ckpt", ".bin", ".pt", ".pth", ".pkl", ".pickle"})
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


class LoraFileError(Exception):
    """The file cannot be used as a LoRA; the message is one line naming the file."""


class PickleRefusedError(LoraFileError):
    """A pickled checkpoint: refused, never loaded."""


@dataclass
class SafetensorsFile:
    path: Path
    sha256: str
    size: int
    metadata: dict[str, str]
    header: dict[str, dict]  # tensor name -> {dtype, shape, data_offsets}
    _data: memoryview = field(repr=False)

    def keys(self) -> list[str]:
        return list(self.header)

    def tensor(self, name: str) -> np.ndarray:
        """The tensor as a numpy array (BF16 widened to float32; F16 kept)."""
        info = self.header[name]
        start, end = info["data_offsets"]
        raw = np.frombuffer(self._data[start:end], dtype=_DTYPES[info["dtype"]])
        if info["dtype"] == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.reshape(info["shape"])


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_EXTENSIONS:
        raise PickleRefusedError(
            f"{path}: pickled checkpoint ({path.suffix}) refused: only .safetensors files are loaded")


def read_safetensors(path: str | os.PathLike) -> SafetensorsFile:
    p = Path(path)
    refuse_pickle(p)
    if not p.is_file():
        raise LoraFileError(f"{p}: file not found")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise LoraFileError(f"{p}: cannot read ({e.strerror or e})") from None
    return parse_safetensors(p, data)


def parse_safetensors(p: Path, data: bytes, sha256: str | None = None) -> SafetensorsFile:
    """Validate and parse `data` (the file's bytes); `sha256` if the caller already hashed them."""
    sha = sha256 or hashlib.sha256(data).hexdigest()
    if data[:2] == b"PK" or data[:1] == b"\x80":
        raise PickleRefusedError(f"{p}: pickle/zip content refused: only safetensors data is loaded")
    if len(data) < 8:
        raise LoraFileError(f"{p}: truncated safetensors file ({len(data)} bytes, no header)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES:
        raise LoraFileError(f"{p}: absurd safetensors header length ({n} bytes): corrupt or not safetensors")
    if 8 + n > len(data):
        raise LoraFileError(f"{p}: truncated safetensors file (header says {n} bytes, file has {len(data) - 8})")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LoraFileError(f"{p}: safetensors header is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise LoraFileError(f"{p}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise LoraFileError(f"{p}: safetensors __metadata__ is not an object")
    body = memoryview(data)[8 + n :]
    for name, info in header.items():
        try:
            start, end = info["data_offsets"]
            dtype, shape = info["dtype"], info["shape"]
            itemsize = np.dtype(_DTYPES[dtype]).itemsize
            count = int(np.prod(shape)) if shape else 1
        except (KeyError, TypeError, ValueError):
            raise LoraFileError(f"{p}: tensor {name!r} has a malformed header entry") from None
        if end > len(body):
            raise LoraFileError(f"{p}: truncated safetensors file (tensor {name!r} ends past the file end)")
        if start < 0 or end - start != count * itemsize:
            raise LoraFileError(f"{p}: tensor {name!r} offsets do not match its shape and dtype")
    return SafetensorsFile(path=p, sha256=sha, size=len(data), metadata={str(k): str(v) for k, v in metadata.items()},
                           header=header, _data=body)
