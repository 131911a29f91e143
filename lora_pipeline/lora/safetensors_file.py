"""Reading a .safetensors file safely, in one pass, without torch.

The whole file is read once: the same bytes are hashed and parsed. The header is validated before
anything is trusted (length, JSON, dtypes, offsets inside the file), so a truncated file or an
absurd header length is a one-line `LoraFileError`, never a traceback or a huge allocation.
`read_header` reads only the 8-byte length and the JSON header, for callers that need no tensor data.

A file is safetensors when its header parses; magic bytes are only consulted after that failed. The
header length is a little-endian u64 padded to a multiple of 8, so a valid file can start with 0x80
or `PK` (1 in 32): sniffing first would refuse it as a pickle/zip. Pickled formats are refused by
extension (.ckpt/.bin/.pt/.pth/.pkl), or by pickle/zip magic once the header did not parse; never loaded.
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
# Item sizes of the safetensors dtypes this reader cannot decode: a header-only read still checks
# their offsets (an fp8 file is complete or not like any other); reading their tensors is refused.
_OTHER_ITEMSIZE = {"F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "U16": 2, "U32": 4, "U64": 8}


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


@dataclass
class SafetensorsHeader:
    """The header alone: what `read_header` returns (no tensor data read)."""

    path: Path
    size: int  # the file's size in bytes
    header_len: int  # N of the 8-byte prefix: the JSON header is bytes 8 .. 8+N
    metadata: dict[str, str]
    header: dict[str, dict]  # tensor name -> {dtype, shape, data_offsets}

    @property
    def data_end(self) -> int:
        """Where the last tensor ends, as a file offset (a complete file is exactly this long)."""
        return 8 + self.header_len + max((v["data_offsets"][1] for v in self.header.values()), default=0)


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_EXTENSIONS:
        raise PickleRefusedError(
            f"{path}: pickled checkpoint ({path.suffix}) refused: only .safetensors files are loaded")


def _magic_refusal(p: Path, head: bytes) -> PickleRefusedError | None:
    """Pickle (protocol 2+: 0x80 then the protocol byte) or zip (torch.save) magic, else None."""
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        kind = "pickle"
    elif head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        kind = "zip (torch.save)"
    else:
        return None
    return PickleRefusedError(f"{p}: {kind} content refused, not safetensors: only safetensors data is loaded")


def _parse_header(p: Path, data, size: int, decode: bool) -> tuple[int, dict[str, str], dict[str, dict]]:
    """(header length, metadata, tensor entries) from `data` (at least the 8 + N header bytes) of a
    `size`-byte file; `decode`: every dtype must be one this reader turns into numpy. A header that
    does not parse is a LoraFileError, or PickleRefusedError when the bytes carry pickle/zip magic."""
    try:
        return _checked_header(p, data, size, decode)
    except LoraFileError:
        refusal = _magic_refusal(p, bytes(data[:4]))
        if refusal is not None:
            raise refusal from None
        raise


def _checked_header(p: Path, data, size: int, decode: bool) -> tuple[int, dict[str, str], dict[str, dict]]:
    if size < 8 or len(data) < 8:
        raise LoraFileError(f"{p}: truncated safetensors file ({size} bytes, no header)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES:
        raise LoraFileError(f"{p}: absurd safetensors header length ({n} bytes): corrupt or not safetensors")
    if 8 + n > size or 8 + n > len(data):
        raise LoraFileError(f"{p}: truncated safetensors file (header says {n} bytes, file has {size - 8})")
    try:
        header = json.loads(bytes(data[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LoraFileError(f"{p}: safetensors header is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise LoraFileError(f"{p}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise LoraFileError(f"{p}: safetensors __metadata__ is not an object")
    body = size - 8 - n
    for name, info in header.items():
        try:
            start, end = info["data_offsets"]
            dtype, shape = info["dtype"], info["shape"]
            itemsize = np.dtype(_DTYPES[dtype]).itemsize if dtype in _DTYPES else _OTHER_ITEMSIZE[dtype]
            count = int(np.prod(shape)) if shape else 1
        except (KeyError, TypeError, ValueError):
            raise LoraFileError(f"{p}: tensor {name!r} has a malformed header entry") from None
        if decode and dtype not in _DTYPES:
            raise LoraFileError(f"{p}: tensor {name!r} has dtype {dtype}, which is not read here (no fp8/unsigned)")
        if end > body:
            raise LoraFileError(f"{p}: truncated safetensors file (tensor {name!r} ends past the file end)")
        if start < 0 or end - start != count * itemsize:
            raise LoraFileError(f"{p}: tensor {name!r} offsets do not match its shape and dtype")
    return n, {str(k): str(v) for k, v in metadata.items()}, header


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """The header only (8 bytes + N): validated as `read_safetensors` does, tensor data never read."""
    p = Path(path)
    refuse_pickle(p)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) == 8:
                (n,) = struct.unpack("<Q", head)
                if n <= MAX_HEADER_BYTES and 8 + n <= size:
                    head += f.read(n)
    except FileNotFoundError:
        raise LoraFileError(f"{p}: file not found") from None
    except OSError as e:
        raise LoraFileError(f"{p}: cannot read ({e.strerror or e})") from None
    n, metadata, header = _parse_header(p, head, size, decode=False)
    return SafetensorsHeader(path=p, size=size, header_len=n, metadata=metadata, header=header)


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
    n, metadata, header = _parse_header(p, data, len(data), decode=True)
    sha = sha256 or hashlib.sha256(data).hexdigest()
    return SafetensorsFile(path=p, sha256=sha, size=len(data), metadata=metadata, header=header,
                           _data=memoryview(data)[8 + n :])
