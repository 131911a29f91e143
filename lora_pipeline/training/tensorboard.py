"""Scalars from TensorBoard event files (kohya, OneTrainer and the diffusers example scripts log their
loss there), read without tensorflow/tensorboard: TFRecord framing + a minimal protobuf decoder for
`Event{wall_time=1, step=2, summary=5{value=1{tag=1, simple_value=2, tensor=8}}}`.

A torn record at the end (a log still being written) ends the read quietly.
"""

from __future__ import annotations

import struct
from pathlib import Path


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of one protobuf message; value is int, float bytes, or bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 1:
            v, i = buf[i : i + 8], i + 8
        elif wt == 2:
            n, i = _varint(buf, i)
            v, i = buf[i : i + n], i + n
        elif wt == 5:
            v, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        yield num, wt, v


def _tensor_scalar(buf: bytes) -> float | None:
    """A scalar TensorProto (newer torch SummaryWriter): float_val=5 / double_val=6."""
    for num, wt, v in _fields(buf):
        if num == 5 and wt == 5:
            return struct.unpack("<f", v)[0]
        if num == 5 and wt == 2 and len(v) >= 4:
            return struct.unpack("<f", v[:4])[0]
        if num == 6 and wt == 1:
            return struct.unpack("<d", v)[0]
    return None


def read_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from one events file."""
    out: dict[str, list[tuple[int, float]]] = {}
    data = path.read_bytes()
    i = 0
    while i + 12 <= len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        rec = data[i + 12 : i + 12 + n]
        if len(rec) < n:
            break
        i += 12 + n + 4
        try:
            step, summary = 0, None
            for num, wt, v in _fields(rec):
                if num == 2 and wt == 0:
                    step = v
                elif num == 5 and wt == 2:
                    summary = v
            if summary is None:
                continue
            for num, wt, v in _fields(summary):
                if num != 1 or wt != 2:
                    continue
                tag, value = None, None
                for n2, w2, v2 in _fields(v):
                    if n2 == 1 and w2 == 2:
                        tag = v2.decode("utf-8", "replace")
                    elif n2 == 2 and w2 == 5:
                        value = struct.unpack("<f", v2)[0]
                    elif n2 == 8 and w2 == 2:
                        value = _tensor_scalar(v2)
                if tag is not None and value is not None:
                    out.setdefault(tag, []).append((int(step), float(value)))
        except (ValueError, struct.error):
            continue
    return out


LOSS_TAGS = ("loss/current", "loss/train_step", "train_loss", "loss", "train/loss", "loss/average")


def loss_from_logs(folder: Path) -> tuple[list[tuple[int, float]], str | None]:
    """The training loss from every events file under `folder`: (series sorted by step, tag)."""
    series: dict[str, dict[int, float]] = {}
    for f in sorted(folder.rglob("events.out.tfevents*")):
        try:
            scalars = read_scalars(f)
        except OSError:
            continue
        for tag, points in scalars.items():
            series.setdefault(tag, {}).update(points)
    for tag in LOSS_TAGS:
        if tag in series:
            return sorted(series[tag].items()), tag
    return [], None


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _ld(num: int, payload: bytes) -> bytes:
    return _varint_bytes(num << 3 | 2) + _varint_bytes(len(payload)) + payload


def scalar_record(tag: str, step: int, value: float, wall_time: float = 0.0) -> bytes:
    """One TFRecord-framed Event holding one scalar, with masked CRC32C checksums (as TensorBoard writes)."""
    val = _ld(1, tag.encode()) + _varint_bytes(2 << 3 | 5) + struct.pack("<f", value)
    event = _varint_bytes(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint_bytes(2 << 3 | 0) + _varint_bytes(step)
    event += _ld(5, _ld(1, val))
    head = struct.pack("<Q", len(event))
    return head + struct.pack("<I", _masked_crc(head)) + event + struct.pack("<I", _masked_crc(event))


def write_scalars(path: Path, tag: str, points: list[tuple[int, float]], wall_time: float = 0.0) -> None:
    """Write a TFRecord events file with masked CRC32C checksums (test fixtures, demo)."""
    with open(path, "wb") as f:
        for step, value in points:
            f.write(scalar_record(tag, step, value, wall_time))


def append_scalars(path: Path, values: dict[str, float], step: int, wall_time: float) -> None:
    """Append one step's scalars to an events file, as a trainer logging to TensorBoard does (kohya
    sd-scripts: `loss/current`, `loss/average` under `--logging_dir`); a reader sees whole records
    only (a torn last record ends `read_scalars` quietly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(b"".join(scalar_record(tag, step, v, wall_time) for tag, v in values.items()))


_CRC_TABLE: list[int] = []


def _masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32C (Castagnoli)."""
    if not _CRC_TABLE:
        for n in range(256):
            c = n
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            _CRC_TABLE.append(c)
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
