import json
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from lora_pipeline.cli import main
from lora_pipeline.lora.inspect import inspect_file
from lora_pipeline.lora.safetensors_file import LoraFileError, PickleRefusedError, read_safetensors


def _cli_json(capsys, *args):
    assert main(["inspect", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_inspect_kohya_reports_metadata_ranks_alphas_and_norms(kohya_run, capsys):
    doc = _cli_json(capsys, str(kohya_run / "run-kohya.safetensors"))
    assert doc["key_format"] == "kohya"
    assert doc["ranks"] == [4]
    assert {m["alpha"] for m in doc["modules"]} == {2.0}
    assert {m["alpha_source"] for m in doc["modules"]} == {"tensor"}
    assert doc["metadata"]["ss_network_dim"] == "4"
    assert doc["declared"]["trigger"] == "sks_chair"
    assert doc["components"] == {"unet": 32}
    assert all(m["delta_norm"] > 0 for m in doc["modules"])
    assert doc["total_delta_norm"] > 0 and not doc["all_zero"]
    assert doc["nonfinite_tensors"] == []
    assert doc["architecture"]["family"] == "sd-unet"  # toy width 32: SD-style UNet, not a standard width


def test_inspect_native_reads_alpha_from_adapter_metadata(native_run):
    r = inspect_file(sorted(native_run.rglob("*.safetensors"))[-1])
    assert r.key_format == "diffusers"
    assert r.ranks == [4]
    assert {m.alpha for m in r.modules} == {8.0} and {m.alpha_source for m in r.modules} == {"lora_adapter_metadata"}
    assert {m.scale for m in r.modules} == {2.0}  # alpha 8 over rank 4, as the native file defines it


def test_delta_norm_matches_dense_product(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 64)).astype(np.float32), rng.standard_normal((96, 4)).astype(np.float32)
    f = tmp_path / "x.safetensors"
    save_file({"lora_unet_blk_attn2_to_k.lora_down.weight": a, "lora_unet_blk_attn2_to_k.lora_up.weight": b,
               "lora_unet_blk_attn2_to_k.alpha": np.array(2.0, dtype=np.float32)}, str(f))
    m = inspect_file(f).modules[0]
    assert m.delta_norm == pytest.approx(0.5 * np.linalg.norm(b.astype(np.float64) @ a), rel=1e-6)


def test_sd_architecture_from_cross_attention_width(tmp_path):
    f = tmp_path / "sd15.safetensors"
    z = np.zeros
    save_file({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": z((4, 768), np.float32),
               "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": z((320, 4), np.float32)},
              str(f))
    r = inspect_file(f)
    assert r.architecture["family"] == "sd1"
    assert r.all_zero


def test_planted_nan_is_flagged(tmp_path, kohya_run, capsys):
    from safetensors import safe_open

    src = kohya_run / "run-kohya.safetensors"
    with safe_open(src, "np") as s:
        tensors = {k: s.get_tensor(k) for k in s.keys()}  # noqa: SIM118 (safe_open is not a dict)
        md = s.metadata()
    key = next(k for k in tensors if k.endswith("lora_up.weight"))
    tensors[key] = tensors[key].copy()
    tensors[key][0, 0] = np.nan
    f = tmp_path / "nan.safetensors"
    save_file(tensors, str(f), metadata=md)
    doc = _cli_json(capsys, str(f))
    assert doc["nonfinite_tensors"] == [key]
    assert sum(m["nonfinite"] for m in doc["modules"]) == 1
    assert main(["inspect", str(f)]) == 0
    assert "NaN/Inf:       1 tensor(s)" in capsys.readouterr().out


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt"])
def test_pickle_is_refused_and_never_loaded(tmp_path, capsys, suffix):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    f = tmp_path / f"lora{suffix}"
    f.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(PickleRefusedError):
        read_safetensors(f)
    assert main(["inspect", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused" in err and str(f) in err
    assert not marker.exists()


def test_pickle_content_renamed_to_safetensors_is_refused(tmp_path):
    f = tmp_path / "sneaky.safetensors"
    f.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(PickleRefusedError):
        read_safetensors(f)


def test_truncated_and_absurd_files_give_one_line_errors(tmp_path, kohya_run, capsys):
    data = (kohya_run / "run-kohya.safetensors").read_bytes()
    cases = {
        "truncated.safetensors": data[: len(data) // 2],
        "tiny.safetensors": b"\x01\x02",
        "absurd.safetensors": struct.pack("<Q", 1 << 40) + b"{}",
        "badjson.safetensors": struct.pack("<Q", 5) + b"{nope",
    }
    for name, payload in cases.items():
        f = tmp_path / name
        f.write_bytes(payload)
        with pytest.raises(LoraFileError):
            read_safetensors(f)
        assert main(["inspect", str(f)]) == 2  # a file that is not valid safetensors is a bad argument
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and name in err and "Traceback" not in err


def test_missing_file_is_usage_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err


def test_console_script_runs_from_another_folder(tmp_path, kohya_run):
    exe = __import__("pathlib").Path(sys.executable).parent / "lora-pipeline"
    out = subprocess.run([str(exe), "inspect", str(kohya_run / "run-kohya.safetensors")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "key format:    kohya" in out.stdout
