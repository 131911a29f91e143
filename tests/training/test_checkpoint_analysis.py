"""The checkpoint analysis' half-precision path (lora/inspect.py `_half_norms`) and the work shared
with the hashing thread (training/checkpoints.py): fp16/bf16 norms from float32 Gram products on
bit-decoded data, against float64 references computed here from the same bytes."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest
from safetensors.numpy import save_file

from lora_pipeline.lora.inspect import analyse, inspect_file
from lora_pipeline.lora.safetensors_file import read_safetensors
from lora_pipeline.lora.tensor_math import f16_bits_to_f32
from lora_pipeline.training.checkpoints import _Shared, analyse_checkpoint

M = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
N = "lora_unet_down_blocks_0_attentions_0_proj_in"


def _ref(down: np.ndarray, up: np.ndarray, scale: float) -> tuple[float, float]:
    """(||delta W||, ||B||) in float64 from the stored values, the dense product formed."""
    a = down.astype(np.float64).reshape(down.shape[0], -1)
    b = up.astype(np.float64).reshape(up.shape[0], -1)
    return scale * float(np.linalg.norm(b @ a)), float(np.linalg.norm(b))


def _pair(rng, rank: int, n_in: int, n_out: int, dtype, conv: bool = False) -> tuple[np.ndarray, np.ndarray]:
    down = rng.standard_normal((rank, n_in, 3, 3) if conv else (rank, n_in)) * 0.05
    up = rng.standard_normal((n_out, rank, 1, 1) if conv else (n_out, rank)) * 0.01
    return down.astype(dtype), up.astype(dtype)


def test_fp16_bits_decode_exactly_like_numpy_for_every_finite_code():
    codes = np.arange(-(2**15), 2**15, dtype=np.int32)
    finite = (codes & 0x7C00) != 0x7C00
    want = codes[finite].astype(np.int16).view(np.float16).astype(np.float32)
    got = f16_bits_to_f32(codes[finite].copy())
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))  # signs, zeros, subnormals
    assert np.abs(f16_bits_to_f32(codes[~finite].copy())).min() >= 2.0**16  # what the trace bound catches


@pytest.mark.parametrize("rank", [4, 43, 48])
@pytest.mark.parametrize("conv", [False, True])
def test_fp16_norms_match_the_float64_dense_product(tmp_path, rank, conv):
    rng = np.random.default_rng(rank)
    down, up = _pair(rng, rank, 320, 640, np.float16, conv)
    down2, up2 = _pair(rng, rank, 96, 2000, np.float16)
    down2[:, ::7] = np.float16(3e-6)  # fp16 subnormals
    f = tmp_path / "h.safetensors"
    save_file({f"{M}.lora_down.weight": down, f"{M}.lora_up.weight": up, f"{M}.alpha": np.array(rank / 2, np.float16),
               f"{N}.lora_down.weight": down2, f"{N}.lora_up.weight": up2}, str(f))
    r = inspect_file(f)
    by = {m.name: m for m in r.modules}
    for name, d, u, scale in ((M, down, up, 0.5), (N, down2, up2, 1.0)):
        want_delta, want_up = _ref(d, u, scale)
        assert by[name].delta_norm == pytest.approx(want_delta, rel=1e-5)
        assert by[name].up_norm == pytest.approx(want_up, rel=1e-6)
        assert (by[name].in_features, by[name].out_features) == (int(np.prod(d.shape[1:])), u.shape[0])
    assert r.nonfinite_tensors == [] and not r.all_zero


def test_bf16_norms_match_the_float64_dense_product(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    g = torch.Generator().manual_seed(0)
    down = (torch.randn(43, 768, generator=g) * 0.05).to(torch.bfloat16)
    up = (torch.randn(1280, 43, generator=g) * 0.01).to(torch.bfloat16)
    f = tmp_path / "bf16.safetensors"
    save_torch({f"{M}.lora_down.weight": down, f"{M}.lora_up.weight": up}, str(f))
    m = inspect_file(f).modules[0]
    want = float(torch.linalg.norm(up.double() @ down.double()))
    assert m.delta_norm == pytest.approx(want, rel=1e-5)
    assert m.up_norm == pytest.approx(float(torch.linalg.norm(up.double())), rel=1e-6)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", ["down", "up"])
@pytest.mark.parametrize("width", [320, 2000])  # 13,760 and 86,000 elements per factor
def test_fp16_nan_inf_is_found_in_small_and_large_factors(tmp_path, bad, where, width):
    rng = np.random.default_rng(1)
    down, up = _pair(rng, 43, width, width, np.float16)
    (down if where == "down" else up)[3, 5] = bad
    f = tmp_path / "x.safetensors"
    save_file({f"{M}.lora_down.weight": down, f"{M}.lora_up.weight": up}, str(f))
    r = inspect_file(f)
    assert r.nonfinite_tensors == [f"{M}.lora_{where}.weight"]
    assert r.modules[0].nonfinite == 1 and np.isnan(r.modules[0].delta_norm)


def test_fp16_near_the_top_of_its_range_is_finite_and_exact(tmp_path):
    rng = np.random.default_rng(2)
    down, up = _pair(rng, 16, 64, 64, np.float16)
    down[0, 0], up[0, 0] = np.float16(65504), np.float16(-60000)  # finite: the trace bound must not call them Inf
    f = tmp_path / "big.safetensors"
    save_file({f"{M}.lora_down.weight": down, f"{M}.lora_up.weight": up}, str(f))
    m = inspect_file(f).modules[0]
    assert m.nonfinite == 0 and m.delta_norm == pytest.approx(_ref(down, up, 1.0)[0], rel=1e-6)


def test_fp16_all_zero_update_reads_as_zero(tmp_path):
    rng = np.random.default_rng(3)
    down, _ = _pair(rng, 43, 320, 320, np.float16)
    up = np.zeros((320, 43), np.float16)
    up[::2] = np.float16(-0.0)
    f = tmp_path / "zero.safetensors"
    save_file({f"{M}.lora_down.weight": down, f"{M}.lora_up.weight": up}, str(f))
    r = inspect_file(f)
    assert r.all_zero and r.total_delta_norm == 0.0 and r.modules[0].up_norm == 0.0


def test_mismatched_fp16_factor_shapes_keep_the_old_answer(tmp_path):
    rng = np.random.default_rng(4)
    down, _ = _pair(rng, 8, 64, 64, np.float16)
    up = (rng.standard_normal((64, 6)) * 0.01).astype(np.float16)  # rank 6 against the down's 8
    f = tmp_path / "mis.safetensors"
    save_file({f"{M}.lora_down.weight": down, f"{M}.lora_up.weight": up}, str(f))
    m = inspect_file(f).modules[0]
    assert m.delta_norm is None and m.up_norm == pytest.approx(np.linalg.norm(up.astype(np.float64)), rel=1e-6)


def test_checkpoint_analysis_shares_the_work_and_equals_the_plain_analysis(tmp_path):
    rng = np.random.default_rng(5)
    tensors = {}
    for i in range(40):
        down, up = _pair(rng, 43, 640, 640 * (1 + i % 3), np.float16)
        tensors[f"lora_unet_mid_block_attentions_0_m{i}.lora_down.weight"] = down
        tensors[f"lora_unet_mid_block_attentions_0_m{i}.lora_up.weight"] = up
    f = tmp_path / "ck.safetensors"
    save_file(tensors, str(f), metadata={"ss_network_dim": "43"})
    got = analyse_checkpoint(f, norms=True)
    plain = analyse(read_safetensors(f)).to_dict()
    assert got["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert got["modules"] == plain["modules"] and got["total_delta_norm"] == plain["total_delta_norm"]


def test_shared_jobs_run_once_each_and_a_failure_reaches_the_caller():
    shared, seen, lock = _Shared(), [], threading.Lock()

    def job(i):
        def run():
            with lock:
                seen.append(i)
            if i == 7:
                raise ValueError("module 7 is broken")
        return run

    helper = threading.Thread(target=lambda: [shared.help() for _ in range(1000)])
    helper.start()
    with pytest.raises(ValueError, match="module 7 is broken"):
        shared([job(i) for i in range(50)])
    helper.join()
    assert sorted(seen) == list(range(50))
