"""Reading a .safetensors file safely, in one pass, without torch.

The whole file is read once: the same bytes are hashed and parsed. The header is validated before
anything is trusted, at least as strictly as the safetensors library itself (its `read_metadata` and
`Metadata::validate`), so every file we accept `safe_open` accepts too:

- the 8-byte length at most 100,000,000 and inside the file; the header UTF-8 JSON, an object, with
  no duplicate key, no NaN/Infinity, no number out of float range, no lone surrogate escape;
- `__metadata__` absent, null, or a map of strings to strings;
- every other entry an object with `dtype` (a dtype the library knows), `shape` (non-negative
  integers whose element count, and bit count, fit in 64 bits; sub-byte dtypes whole bytes) and
  `data_offsets` (two non-negative integers, begin <= end, end - begin the tensor's byte size);
- the tensors, in offset order, tile the data region exactly: from byte 0, no gap, no overlap, the
  last ending at the end of the file.

Each violation is one `LoraFileError` line naming the file and the tensor or key. `read_header` reads
only the 8-byte length and the JSON header, for callers that need no tensor data.

A file is safetensors when its header parses; magic bytes are only consulted after that failed. The
header length is a little-endian u64 padded to a multiple of 8, so a valid file can start with 0x80
or `PK` (1 in 32): sniffing first would refuse it as a pickle/zip. Pickled formats are refused by
extension (.ckpt/.bin/.pt/.pth/.pkl), or by pickle/zip magic once the header did not parse; never loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PICKLE_EXTENSIONS = frozenset({".ckpt", ".bin", ".pt", ".pth", ".pkl", ".pickle"})
MAX_HEADER_BYTES = 100_000_000  # safetensors' MAX_HEADER_SIZE (decimal, not MiB)
_U64 = 2**64 - 1  # the library's usize: counts, bit sizes and offsets beyond it overflow there
_MAX_NESTING = 64  # serde_json refuses JSON nested past 128 levels; unknown entry fields stay well below
# Bits per element of every dtype safetensors 0.8 accepts (its `Dtype` enum).
_BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
         "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
         "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64}
_NUMPY = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
          "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
          "U64": np.uint64, "U32": np.uint32, "U16": np.uint16}


def _fp8_table(exp_bits: int, bias: int, *, inf: bool = False, fnuz: bool = False) -> np.ndarray:
    """float32 value of each of the 256 codes of a 1-sign / `exp_bits` / rest-mantissa fp8 format:
    `inf` (E5M2): all-ones exponent is Inf/NaN as in IEEE; otherwise only the all-ones code is NaN
    (E4M3 "fn"); `fnuz`: no negative zero, 0x80 is the one NaN, all exponents are numbers."""
    man_bits = 7 - exp_bits
    codes = np.arange(256)
    e, m = (codes >> man_bits) & ((1 << exp_bits) - 1), codes & ((1 << man_bits) - 1)
    frac = m / (1 << man_bits)
    mag = np.where(e == 0, frac * 2.0 ** (1 - bias), (1 + frac) * 2.0 ** (e - bias))
    val = np.where(codes & 0x80, -mag, mag)
    top = e == (1 << exp_bits) - 1
    if fnuz:
        val[0x80] = np.nan
    elif inf:
        val[top] = np.where(m[top] == 0, np.copysign(np.inf, val[top]), np.nan)
    else:
        val[top & (m == (1 << man_bits) - 1)] = np.nan
    return val.astype(np.float32)


# fp8 tensors are decoded to float32 through a lookup table (norms and NaN checks then work as usual).
_FP8 = {"F8_E4M3": _fp8_table(4, 7), "F8_E5M2": _fp8_table(5, 15, inf=True),
        "F8_E4M3FNUZ": _fp8_table(4, 8, fnuz=True), "F8_E5M2FNUZ": _fp8_table(5, 16, fnuz=True),
        "F8_E8M0": np.where(np.arange(256) == 255, np.nan, 2.0 ** (np.arange(256) - 127)).astype(np.float32)}
# Valid safetensors, but no LoRA weights: sub-byte floats (packed) and complex numbers are not decoded.
_UNDECODED = frozenset(_BITS) - set(_NUMPY) - set(_FP8)


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
        """The tensor as a numpy array (BF16 and fp8 widened to float32; F16 kept)."""
        info = self.header[name]
        start, end = info["data_offsets"]
        dtype = info["dtype"]
        if dtype in _FP8:
            raw = _FP8[dtype][np.frombuffer(self._data[start:end], dtype=np.uint8)]
        else:
            raw = np.frombuffer(self._data[start:end], dtype=_NUMPY[dtype])
            if dtype == "BF16":
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
        """Where the last tensor ends, as a file offset (a valid file is exactly this long)."""
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
    `size`-byte file; `decode`: every dtype must be one `SafetensorsFile.tensor` decodes. Bytes that
    are no safetensors header at all (length, UTF-8, JSON) are a LoraFileError, or PickleRefusedError
    when they carry pickle/zip magic; a header that parsed but breaks a rule is a LoraFileError."""
    try:
        n, header = _framed_json(p, data, size)
    except LoraFileError:
        refusal = _magic_refusal(p, bytes(data[:4]))
        if refusal is not None:
            raise refusal from None
        raise
    metadata = _metadata(p, header.pop("__metadata__", None))
    spans = [(*_entry(p, name, info), name) for name, info in header.items()]
    _layout(p, spans, size - 8 - n)
    undecoded = next((k for k, v in header.items() if v["dtype"] in _UNDECODED), None) if decode else None
    if undecoded is not None:  # valid safetensors, but not a LoRA we can read
        raise LoraFileError(f"{p}: tensor {_q(undecoded)}: dtype {header[undecoded]['dtype']} is not decoded "
                            "here (no LoRA is stored that way)")
    return n, metadata, header


def _q(name: str) -> str:
    """A key for a one-line message: quoted and escaped (no newline survives), long ones cut."""
    return repr(name if len(name) <= 80 else name[:77] + "...")


class _Invalid(ValueError):
    """Raised by the JSON hooks: what the library's JSON parser refuses and Python's accepts."""


def _pairs(pairs: list) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _Invalid(f"duplicate key {_q(dup)}")
    return d


def _constant(s: str):
    raise _Invalid(f"{s} is not JSON")


def _float(s: str) -> float:
    f = float(s)
    if not math.isfinite(f):
        raise _Invalid(f"number {s[:20]} out of range")
    return f


def _int(s: str) -> int | float:
    """Integers as the library reads them: beyond 64 bits, or negative zero, they are floats there
    (never a valid size or offset), and beyond float range an error."""
    v = int(s) if len(s) <= 40 else _float(s)
    return float(s) if s.startswith("-0") or (isinstance(v, int) and v > _U64) else v


_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]", re.ASCII)


def _json_fault(v, depth: int = 0) -> str | None:
    """What the library's JSON parser refuses in an already parsed value, that Python's accepted:
    a lone surrogate escape (invalid Unicode) or nesting past `_MAX_NESTING`; None when neither."""
    if depth > _MAX_NESTING:
        return "nests too deep"
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return "holds a lone surrogate escape (invalid Unicode)"
        return None
    items = [*v, *v.values()] if isinstance(v, dict) else v if isinstance(v, list) else []
    return next((f for f in (_json_fault(x, depth + 1) for x in items) if f), None)


def _load_json(p: Path, raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
        header = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float,
                            parse_int=_int)
    except UnicodeDecodeError:
        raise LoraFileError(f"{p}: safetensors header is not valid UTF-8") from None
    except _Invalid as e:
        raise LoraFileError(f"{p}: safetensors header is not valid JSON ({e})") from None
    except json.JSONDecodeError as e:
        raise LoraFileError(f"{p}: safetensors header is not valid JSON ({e.msg} at byte {e.pos})") from None
    except (ValueError, RecursionError) as e:
        raise LoraFileError(f"{p}: safetensors header is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise LoraFileError(f"{p}: safetensors header is not a JSON object")
    fault = _json_fault(header) if _SURROGATE.search(text) else None  # only an escape makes a lone one
    if fault:
        raise LoraFileError(f"{p}: safetensors header {fault}")
    return header


def _metadata(p: Path, md) -> dict[str, str]:
    if md is None:
        return {}
    if not isinstance(md, dict):
        raise LoraFileError(f"{p}: safetensors __metadata__ is not an object ({type(md).__name__})")
    for k, v in md.items():
        if not isinstance(v, str):
            raise LoraFileError(f"{p}: __metadata__ key {_q(k)} is not a string ({type(v).__name__})")
    return md


def _nonneg_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _U64


def _entry(p: Path, name: str, info) -> tuple[int, int]:
    """(begin, end) of one tensor entry, every field checked; LoraFileError naming the tensor."""
    where = f"{p}: tensor {_q(name)}"
    if not isinstance(info, dict):
        raise LoraFileError(f"{where}: header entry is not an object ({type(info).__name__})")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in info:
            raise LoraFileError(f"{where}: header entry has no {key!r}")
    extra = [v for k, v in info.items() if k not in ("dtype", "shape", "data_offsets")]  # ignored, as there
    fault = _json_fault(extra, 2) if extra else None
    if fault:
        raise LoraFileError(f"{where}: header entry {fault}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _BITS:
        raise LoraFileError(f"{where}: unknown dtype {dtype!r:.40}")
    if not isinstance(shape, list) or not all(_nonneg_int(d) for d in shape):
        raise LoraFileError(f"{where}: shape is not a list of non-negative integers")
    count = 1
    for d in shape:  # left to right, as the library's checked fold: an overflow before a 0 still counts
        count *= d
        if count > _U64:
            raise LoraFileError(f"{where}: shape's element count overflows 64 bits")
    bits = count * _BITS[dtype]
    if bits > _U64:
        raise LoraFileError(f"{where}: shape's size in bits overflows 64 bits")
    if bits % 8:
        raise LoraFileError(f"{where}: {count} element(s) of {dtype} do not fill whole bytes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_nonneg_int(o) for o in offsets)):
        raise LoraFileError(f"{where}: data_offsets is not two non-negative integers")
    begin, end = offsets
    if begin > end:
        raise LoraFileError(f"{where}: data_offsets [{begin}, {end}] run backwards")
    if end - begin != bits // 8:
        raise LoraFileError(f"{where}: offsets do not match its shape and dtype "
                            f"({end - begin} bytes for {bits // 8})")
    return begin, end


def _layout(p: Path, spans: list[tuple[int, int, str]], body: int) -> None:
    """The tensors in offset order tile bytes 0..body exactly (the library's contiguity rule)."""
    pos, prev = 0, None
    for begin, end, name in sorted(spans):
        if begin < pos:
            raise LoraFileError(f"{p}: tensor {_q(name)} overlaps tensor {_q(prev)} (data_offsets start "
                                f"at {begin}, before {pos})")
        if begin > pos:
            after = f"after tensor {_q(prev)}" if prev is not None else "at the start of the data"
            raise LoraFileError(f"{p}: gap of {begin - pos} bytes {after}, before tensor {_q(name)}")
        pos, prev = end, name
    if pos > body:
        raise LoraFileError(f"{p}: truncated safetensors file (tensor {_q(prev)} ends past the file end: "
                            f"byte {pos} of {body} data bytes)")
    if pos < body:
        raise LoraFileError(f"{p}: {body - pos} bytes after the last tensor are covered by no tensor "
                            "(safetensors requires the tensors to fill the file exactly)")


def _framed_json(p: Path, data, size: int) -> tuple[int, dict]:
    """The 8-byte length and the JSON object it frames."""
    if size < 8 or len(data) < 8:
        raise LoraFileError(f"{p}: truncated safetensors file ({size} bytes, no header)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES:
        raise LoraFileError(f"{p}: absurd safetensors header length ({n} bytes): corrupt or not safetensors")
    if 8 + n > size or 8 + n > len(data):
        raise LoraFileError(f"{p}: truncated safetensors file (header says {n} bytes, file has {size - 8})")
    return n, _load_json(p, bytes(data[8 : 8 + n]))


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
