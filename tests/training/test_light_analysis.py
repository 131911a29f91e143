"""Ingestion's light analysis (lora/inspect.py `analyse(..., norms=False)`): no delta norms, but the
NaN/Inf and all-zero scan of the raw bits finds what the full analysis finds, for every float dtype
and every code; the full analysis of a cached light entry needs no second hash."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest

from lora_pipeline.lora.inspect import analyse
from lora_pipeline.lora.safetensors_file import read_safetensors
from lora_pipeline.lora.tensor_math import scan_tensors
from lora_pipeline.training import checkpoints
from lora_pipeline.training.checkpoints import FileIndex, analyse_checkpoint

M = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
N = "lora_unet_down_blocks_0_attentions_0_proj_in"
_NP = {"F16": np.float16, "F32": np.float32, "F64": np.float64}


def _bits(values: np.ndarray, dtype: str) -> bytes:
    """The little-endian bytes of `values` stored as `dtype` (BF16: the top half of float32)."""
    if dtype == "BF16":
        return (np.asarray(values, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
    return np.asarray(values, _NP[dtype]).astype(np.dtype(_NP[dtype]).newbyteorder("<")).tobytes()


def write_raw(path, tensors: list[tuple[str, str, tuple[int, ...], bytes]], metadata: dict | None = None) -> None:
    """A safetensors file with the tensors in this order (so dtypes can interleave)."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    body, at = b"", 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [at, at + len(raw)]}
        body += raw
        at += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + body)


def _module(rng, name: str, dtype: str, rank: int, n_in: int, n_out: int, *, plant=None, where="down",
            at=0, zero_up=False, alpha_dtype="F32") -> list[tuple[str, str, tuple[int, ...], bytes]]:
    down = rng.standard_normal((rank, n_in)) * 0.05
    up = np.zeros((n_out, rank)) if zero_up else rng.standard_normal((n_out, rank)) * 0.01
    if zero_up:
        up.reshape(-1)[::3] = -0.0
    if plant is not None:
        t = down if where == "down" else up
        t.reshape(-1)[at] = plant
    return [(f"{name}.lora_down.weight", dtype, down.shape, _bits(down, dtype)),
            (f"{name}.alpha", alpha_dtype, (), _bits(np.array(rank / 2), alpha_dtype)),
            (f"{name}.lora_up.weight", dtype, up.shape, _bits(up, dtype))]


def _light_and_full(path):
    sf = read_safetensors(path)
    return analyse(sf, norms=False).to_dict(), analyse(sf).to_dict()


def _same_findings(light: dict, full: dict) -> None:
    for key in ("nonfinite_tensors", "malformed", "all_zero", "ranks", "components", "architecture", "key_format"):
        assert light[key] == full[key], key
    for a, b in zip(light["modules"], full["modules"], strict=True):
        for key in ("name", "rank", "alpha", "scale", "in_features", "out_features", "nonfinite"):
            assert a[key] == b[key], (a["name"], key)
    assert light["norms"] is False and light["total_delta_norm"] is None and full["norms"] is True


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32", "F64"])
@pytest.mark.parametrize("plant", [None, np.nan, np.inf, -np.inf, "zero"])
@pytest.mark.parametrize("where,at", [("down", 0), ("up", -1), ("up", 77)])
def test_the_light_scan_finds_what_the_full_analysis_finds(tmp_path, dtype, plant, where, at):
    rng = np.random.default_rng(7)
    value = None if plant in (None, "zero") else plant
    tensors = (_module(rng, M, dtype, 6, 96, 64, plant=value, where=where, at=at, zero_up=plant == "zero")
               + _module(rng, N, dtype, 6, 64, 64, alpha_dtype=dtype))  # alphas scattered / contiguous
    f = tmp_path / "x.safetensors"
    write_raw(f, tensors)
    light, full = _light_and_full(f)
    _same_findings(light, full)
    assert bool(light["nonfinite_tensors"]) == (value is not None)
    if plant == "zero":  # the module with an all-zero factor: exactly 0.0 in both passes
        light_by, full_by = ({m["name"]: m for m in d["modules"]} for d in (light, full))
        assert light_by[M]["delta_norm"] == 0.0 == full_by[M]["delta_norm"]
        assert light_by[N]["delta_norm"] is None and full_by[N]["delta_norm"] > 0


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_every_16_bit_code_is_classified_like_numpy(tmp_path, dtype):
    codes = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    values = codes.view(np.float16) if dtype == "F16" else (codes.astype(np.uint32) << 16).view(np.float32)
    finite = np.isfinite(values)
    tensors = [("finite", dtype, (int(finite.sum()),), codes[finite].astype("<u2").tobytes()),
               ("zeros", dtype, (4,), np.array([0, 0x8000, 0x8000, 0], "<u2").tobytes()),
               ("tiny_neg", dtype, (2,), np.array([0, 0x8001], "<u2").tobytes()),
               ("tiny_pos", dtype, (2,), np.array([0x8000, 0x0001], "<u2").tobytes())]
    for i, c in enumerate(codes[~finite][:: 7 if dtype == "F16" else 5]):  # a sample of every NaN/Inf code
        one = np.array([0x3C00, int(c), 0x8001], "<u2")  # 1.0 (fp16), the code, a negative subnormal
        tensors.append((f"bad{i}", dtype, (3,), one.tobytes()))
    f = tmp_path / "codes.safetensors"
    write_raw(f, tensors)
    scan = scan_tensors(read_safetensors(f))
    assert scan["finite"] == scan["tiny_neg"] == scan["tiny_pos"] == (False, False)
    assert scan["zeros"] == (False, True)
    assert len(tensors) > 50 and all(scan[n][0] and not scan[n][1] for n, *_ in tensors[4:])


def test_fp8_and_integer_tensors_take_the_decoded_path(tmp_path):
    e4m3 = np.array([0x38, 0x7F, 0x00], np.uint8)  # 1.0, NaN, 0
    write_raw(tmp_path / "f8.safetensors", [("a", "F8_E4M3", (3,), e4m3.tobytes()),
                                            ("b", "F8_E4M3", (2,), bytes([0x00, 0x80])),
                                            ("c", "I32", (2,), np.array([0, 0], "<i4").tobytes()),
                                            ("d", "F16", (0,), b"")])
    scan = scan_tensors(read_safetensors(tmp_path / "f8.safetensors"))
    assert scan == {"a": (True, False), "b": (False, True), "c": (False, True), "d": (False, True)}


def test_checkpoint_analysis_light_by_default_full_on_request(tmp_path):
    rng = np.random.default_rng(3)
    f = tmp_path / "ck.safetensors"
    write_raw(f, _module(rng, M, "F16", 8, 320, 320) + _module(rng, N, "F16", 8, 320, 640))
    light, full = analyse_checkpoint(f), analyse_checkpoint(f, norms=True)
    assert light["sha256"] == full["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    _same_findings(light, full)
    assert full["total_delta_norm"] > 0 and all(m["delta_norm"] > 0 for m in full["modules"])
    assert analyse_checkpoint(f, norms=True, sha256="a" * 64)["sha256"] == "a" * 64  # trusted, not recomputed


def test_the_index_turns_a_light_entry_into_a_full_one_without_hashing_again(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    f = tmp_path / "ck.safetensors"
    write_raw(f, _module(rng, M, "F16", 8, 320, 320))
    index = FileIndex(tmp_path / "files.json")
    light = index.analysis("ck.safetensors", f)
    index.save()
    assert light["norms"] is False and light["total_delta_norm"] is None

    def no_hash(*a):
        raise AssertionError("hashed again")

    monkeypatch.setattr(checkpoints, "_hash", no_hash)
    again = FileIndex(tmp_path / "files.json")
    assert again.analysis("ck.safetensors", f) == light  # the light request: the cache as it is
    full = again.analysis("ck.safetensors", f, norms=True)
    assert full["norms"] is True and full["total_delta_norm"] > 0 and full["sha256"] == light["sha256"]
    assert again.analysis("ck.safetensors", f) is full  # a full entry serves light requests too


@pytest.mark.parametrize("block", [2, 6, 64, 1000, 1 << 20])
def test_the_blocked_scan_equals_the_scan_tensor_by_tensor(tmp_path, monkeypatch, block):
    from lora_pipeline.lora import tensor_math

    monkeypatch.setattr(tensor_math, "_BLOCK_BYTES", block)
    grouped = []
    segment_maxima = tensor_math._segment_maxima
    monkeypatch.setattr(tensor_math, "_segment_maxima", lambda u, *a: grouped.append(u.dtype) or segment_maxima(u, *a))
    rng = np.random.default_rng(11)
    tensors = []
    for i, n in enumerate([1, 3, 40, 7, 300, 2, 129]):
        v = rng.standard_normal(n) * (i % 3 != 1)  # some all-zero tensors
        if i in (2, 4):
            v[-1] = [np.nan, -np.inf][i == 4]  # last element: at a block edge for some block sizes
        tensors.append((f"t{i}", "F16", (n,), _bits(v, "F16")))
        # small float32 tensors between them: gaps in the float16 span (reduced, ignored)
        tensors.append((f"a{i}", "F32", (1 + i % 3,), _bits(rng.standard_normal(1 + i % 3) * (i != 3), "F32")))
    f = tmp_path / "blocks.safetensors"
    write_raw(f, tensors)
    sf = read_safetensors(f)
    got = scan_tensors(sf)
    assert grouped == [np.uint16]  # float16 together (blocked); the scattered float32 one by one
    assert got == {name: tensor_math._bits_scan(sf, name) for name, *_ in tensors}
    assert got["t2"] == got["t4"] == (True, False) and got["t1"] == got["a3"] == (False, True)


def test_the_batch_hashes_beside_the_analyses_and_keeps_each_files_error(tmp_path):
    from lora_pipeline.lora.safetensors_file import LoraFileError
    from lora_pipeline.training.checkpoints import analyse_light_checkpoints

    rng = np.random.default_rng(9)
    paths = []
    for i in range(6):
        f = tmp_path / f"ck{i}.safetensors"
        write_raw(f, _module(rng, M, "F16", 8, 64 * (i + 1), 640) + _module(rng, N, "F16", 8, 320, 320))
        paths.append(f)
    paths[2].write_bytes(paths[2].read_bytes()[:-10])  # truncated
    paths.insert(4, tmp_path / "gone.safetensors")  # missing
    paths.insert(5, tmp_path / "old.ckpt")  # a pickle, refused
    (tmp_path / "old.ckpt").write_bytes(b"\x80\x04K\x01.")
    got = analyse_light_checkpoints(paths)
    assert [type(g).__name__ for g in got] == ["dict", "dict", "LoraFileError", "dict", "LoraFileError",
                                               "PickleRefusedError", "dict", "dict"]
    assert isinstance(got[5], LoraFileError)
    for path, g in zip(paths, got, strict=True):
        if isinstance(g, dict):
            assert g == analyse_checkpoint(path) and g["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_batch_reads_only_what_the_index_does_not_hold(tmp_path, monkeypatch):
    rng = np.random.default_rng(10)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_raw(a, _module(rng, M, "F16", 8, 64, 64))
    index = FileIndex(tmp_path / "files.json")
    first = index.light_analyses([("a.safetensors", a)])["a.safetensors"]
    index.save()
    write_raw(b, _module(rng, N, "F16", 8, 64, 64))
    seen = []
    batch = checkpoints.analyse_light_checkpoints
    monkeypatch.setattr(checkpoints, "analyse_light_checkpoints", lambda paths: seen.extend(paths) or batch(paths))
    got = FileIndex(tmp_path / "files.json").light_analyses(
        [("a.safetensors", a), ("b.safetensors", b), ("c.safetensors", tmp_path / "c.safetensors")])
    assert seen == [b] and got["a.safetensors"] == first and got["b.safetensors"]["norms"] is False
    assert isinstance(got["c.safetensors"], FileNotFoundError)
