"""Our safetensors parser is at least as strict as the safetensors library: every fault is one
LoraFileError line naming the file and the tensor or key, and the library refuses the same file;
valid files the library accepts (empty tensors, fp8, every dtype) are accepted and analysed."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors import safe_open

from lora_pipeline.cli import main
from lora_pipeline.lora.inspect import inspect_file
from lora_pipeline.lora.safetensors_file import LoraFileError, read_header, read_safetensors
from tests import hostile_safetensors as H


def _library_accepts(path) -> bool:
    try:
        with safe_open(str(path), "np") as f:
            f.keys()
        return True
    except Exception:  # noqa: BLE001 - the library's refusals come as several exception types
        return False


def _refused(path, fragment: str, name: str, capsys) -> str:
    """Every reader refuses `path` with the same one line naming the file, `name` and `fragment`;
    so does the library; `inspect` exits 2 with that line."""
    msgs = set()
    for read in (read_header, read_safetensors, inspect_file):
        with pytest.raises(LoraFileError) as e:
            read(path)
        msgs.add(str(e.value))
    assert len(msgs) == 1, msgs
    msg = msgs.pop()
    assert "\n" not in msg and msg.startswith(f"{path}: ") and fragment in msg and repr(name)[1:-1] in msg, msg
    assert not _library_accepts(path)
    assert main(["inspect", str(path)]) == 2
    out, err = capsys.readouterr()
    assert err == f"error: {msg}\n" and "Traceback" not in out + err
    return msg


@pytest.mark.parametrize("case", [c for c, (_p, frag) in H.CASES.items() if frag])
def test_each_fault_is_one_line_naming_file_and_tensor(tmp_path, capsys, case):
    plant, fragment = H.CASES[case]
    f = H.write(tmp_path / f"{case}.safetensors", plant(H.lora_bytes()))
    _refused(f, fragment, H.NAMES[case], capsys)


# JSON the library's parser refuses and Python's json would take, and rules past the hostile cases.
RAW = {
    "duplicate_field": ('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"shape":[1]}}', b"x",
                        "duplicate key 'shape'", ""),
    "nan_in_extra_field": ('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":NaN}}', b"x",
                           "NaN is not JSON", ""),
    "number_out_of_range": ('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1e400}}', b"x",
                            "out of range", ""),
    "lone_surrogate": ('{"__metadata__":{"k":"\\ud800"}}', b"", "lone surrogate", ""),
    "nested_too_deep": ('{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":' + "[" * 200 + "]" * 200 + "}}",
                        b"", "nests too deep", "a"),
    "negative_zero": ('{"a":{"dtype":"U8","shape":[-0],"data_offsets":[0,0]}}', b"",
                      "shape is not a list of non-negative integers", "a"),
    "float_dim": ('{"a":{"dtype":"U8","shape":[1.0],"data_offsets":[0,1]}}', b"x", "shape is not a list", "a"),
    "bool_dim": ('{"a":{"dtype":"U8","shape":[true],"data_offsets":[0,1]}}', b"x", "shape is not a list", "a"),
    "offset_past_u64": ('{"a":{"dtype":"U8","shape":[0],"data_offsets":[18446744073709551616,18446744073709551616]}}',
                        b"", "data_offsets is not two non-negative integers", "a"),
    "three_offsets": ('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,1]}}', b"x", "data_offsets is not two", "a"),
    "offsets_backwards": ('{"a":{"dtype":"U8","shape":[0],"data_offsets":[1,0]}}', b"", "run backwards", "a"),
    "bits_overflow": ('{"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}}', b"",
                      "size in bits overflows", "a"),
    "f4_half_byte": ('{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}', b"xx", "do not fill whole bytes", "a"),
    "size_mismatch": ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', b"xxxx", "4 bytes for 8", "a"),
    "missing_shape": ('{"a":{"dtype":"U8","data_offsets":[0,0]}}', b"", "has no 'shape'", "a"),
    "dtype_not_string": ('{"a":{"dtype":1,"shape":[0],"data_offsets":[0,0]}}', b"", "unknown dtype 1", "a"),
    "metadata_list": ('{"__metadata__":[]}', b"", "__metadata__ is not an object (list)", ""),
    "not_an_object": ("[]", b"", "is not a JSON object", ""),
    "trailing_text": ("{} x", b"", "not valid JSON (Extra data", ""),
    "utf8_bom": (b"\xef\xbb\xbf{}", b"", "not valid JSON", ""),
    "not_utf8": (b'{"\xff":1}', b"", "not valid UTF-8", ""),
}


@pytest.mark.parametrize("case", list(RAW))
def test_json_and_rules_the_library_refuses_we_refuse(tmp_path, capsys, case):
    header, body, fragment, name = RAW[case]
    f = H.write(tmp_path / f"{case}.safetensors", H.join(header, body))
    _refused(f, fragment, name, capsys)


def test_header_length_past_the_library_limit(tmp_path, capsys):
    f = H.write(tmp_path / "long.safetensors", (100_000_001).to_bytes(8, "little") + b"{}      ")
    _refused(f, "absurd safetensors header length (100000001 bytes)", "", capsys)


@pytest.mark.parametrize("header,body", [
    ("{}", b""), ('{"__metadata__":null}', b""), (' \n{"__metadata__":{"a":"b"}} ', b""),
    ('{"a":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]},"b":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},'
     '"c":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}', b"\0\0\x80\x3f"),
    ('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"note":{"x":[1,"y",null]}}}', b"x"),
    ('{"__metadata__":{"k":"\\ud83d\\ude00"}}', b""),  # an escaped surrogate *pair* is fine
], ids=["empty", "null_metadata", "whitespace", "empty_tensors_and_scalar", "extra_field", "surrogate_pair"])
def test_what_the_library_accepts_we_accept(tmp_path, header, body):
    f = H.write(tmp_path / "ok.safetensors", H.join(header, body))
    assert _library_accepts(f)
    sf = read_safetensors(f)
    h = read_header(f)
    assert h.data_end == h.size and h.header == sf.header
    for k in sf.header:
        assert sf.tensor(k).shape == tuple(sf.header[k]["shape"])


DTYPE_BYTES = {"BOOL": (4, 4), "F4": (4, 2), "F6_E2M3": (4, 3), "F6_E3M2": (4, 3), "U8": (4, 4), "I8": (4, 4),
               "F8_E5M2": (4, 4), "F8_E4M3": (4, 4), "F8_E8M0": (4, 4), "F8_E4M3FNUZ": (4, 4), "F8_E5M2FNUZ": (4, 4),
               "I16": (4, 8), "U16": (4, 8), "F16": (4, 8), "BF16": (4, 8), "I32": (4, 16), "U32": (4, 16),
               "F32": (4, 16), "C64": (4, 32), "F64": (4, 32), "I64": (4, 32), "U64": (4, 32)}


@pytest.mark.parametrize("dtype", list(DTYPE_BYTES))
def test_every_library_dtype_is_valid_and_decoded_or_refused_in_one_line(tmp_path, dtype):
    n, nbytes = DTYPE_BYTES[dtype]
    f = H.write(tmp_path / "t.safetensors",
                H.join(f'{{"w":{{"dtype":"{dtype}","shape":[{n}],"data_offsets":[0,{nbytes}]}}}}', bytes(nbytes)))
    assert _library_accepts(f)
    assert read_header(f).header["w"]["dtype"] == dtype
    if dtype in ("F4", "F6_E2M3", "F6_E3M2", "C64"):  # packed sub-byte floats and complex: no LoRA is stored so
        with pytest.raises(LoraFileError, match=rf"tensor 'w': dtype {dtype} is not decoded here"):
            read_safetensors(f)
    else:
        t = read_safetensors(f).tensor("w")
        assert t.shape == (n,) and (not t.any() or dtype == "F8_E8M0")  # E8M0 has no zero: code 0 is 2**-127


FP8 = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E4M3FNUZ": "float8_e4m3fnuz",
       "F8_E5M2FNUZ": "float8_e5m2fnuz", "F8_E8M0": "float8_e8m0fnu"}


def test_fp8_decoding_matches_torch_for_every_code(tmp_path):
    import torch

    codes = bytes(range(256))
    header = {k: {"dtype": k, "shape": [256], "data_offsets": [256 * i, 256 * (i + 1)]} for i, k in enumerate(FP8)}
    sf = read_safetensors(H.write(tmp_path / "codes.safetensors", H.join(header, codes * len(FP8))))
    for dtype, torch_name in FP8.items():
        want = torch.frombuffer(bytearray(codes), dtype=torch.uint8).view(getattr(torch, torch_name)).float().numpy()
        got = sf.tensor(dtype)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want, err_msg=dtype)


def test_fp8_lora_is_valid_and_its_norms_are_computed(tmp_path, capsys):
    import torch

    f = H.write(tmp_path / "fp8.safetensors", H.fp8_bytes())
    assert _library_accepts(f)
    r = inspect_file(f)
    assert r.malformed == [] and r.nonfinite_tensors == [] and r.ranks == [H.RANK]
    with safe_open(str(f), "pt") as s:
        m = H.MODULES[0]
        down = s.get_tensor(f"{m}.lora_down.weight").double()
        up = s.get_tensor(f"{m}.lora_up.weight").double()
    want = 2.0 / H.RANK * float(torch.linalg.norm(up @ down))  # alpha 2 over rank 4
    got = next(x for x in r.modules if x.name == H.MODULES[0]).delta_norm
    assert got == pytest.approx(want, rel=1e-6)
    assert main(["inspect", str(f)]) == 0 and "key format:    kohya" in capsys.readouterr().out


def test_empty_alpha_is_no_alpha_with_a_note(tmp_path, capsys):
    f = H.write(tmp_path / "empty-alpha.safetensors", H.CASES["empty_alpha"][0](b""))
    assert _library_accepts(f)
    r = inspect_file(f)
    mod = next(m for m in r.modules if m.name == H.MODULES[0])
    assert (mod.alpha, mod.alpha_source, mod.scale) == (None, "none", 1.0)
    assert r.malformed == [f"alpha tensor {H.ALPHA!r} is empty (shape [0]): treated as no alpha (scale 1.0)"]
    other = next(m for m in r.modules if m.name == H.MODULES[1])
    assert other.alpha == 2.0 and other.delta_norm > 0
    assert main(["inspect", str(f)]) == 0
    assert f"MALFORMED:     alpha tensor {H.ALPHA!r} is empty" in capsys.readouterr().out


def test_nan_alpha_is_flagged_as_nonfinite_and_not_used(tmp_path):
    f = H.write(tmp_path / "nan-alpha.safetensors", H.CASES["nan_alpha"][0](b""))
    r = inspect_file(f)
    assert r.nonfinite_tensors == [H.ALPHA]
    assert r.malformed == [f"alpha tensor {H.ALPHA!r} is nan: treated as no alpha (scale 1.0)"]


def test_loha_factors_that_do_not_fit_are_a_note_not_a_crash(tmp_path):
    m = "lora_unet_blk_attn2_to_k"
    z = np.ones
    t = {f"{m}.hada_w1_a": z((8, 2)), f"{m}.hada_w1_b": z((3, 8)), f"{m}.hada_w2_a": z((8, 2)),
         f"{m}.hada_w2_b": z((2, 8)), f"{m}.alpha": np.array(1.0)}
    from safetensors.numpy import save

    f = H.write(tmp_path / "loha.safetensors", save({k: v.astype(np.float32) for k, v in t.items()}))
    r = inspect_file(f)
    assert r.modules[0].delta_norm is None
    assert r.malformed == [f"module {m!r}: its loha factors' shapes do not fit together (norm not computed)"]


def test_the_evaluation_file_check_refuses_a_malformed_lora_part_once(tmp_path):
    """Ingestion and the worker's file check agree: a LoRA part the format cannot use as written is
    RUNTIME.LORA_INVALID (once, naming it), not a silent scale 1.0."""
    from lora_pipeline.render.contract import check_lora_file
    from lora_pipeline.render.spec import DeclaredBase, RunFacts

    f = H.write(tmp_path / "empty-alpha.safetensors", H.CASES["empty_alpha"][0](b""))
    facts = RunFacts(run_id="r", checkpoint_id="c", trigger="t", rank=4, alpha=2.0, resolution=64,
                     base=DeclaredBase(None, None, None), caption_trigger="t", step=1)
    findings, report = check_lora_file(f, facts, "r/c")
    assert [x.code for x in findings] == ["RUNTIME.LORA_INVALID"] and report is None
    assert "is empty (shape [0])" in findings[0].message
