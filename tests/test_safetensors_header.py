"""Safetensors first: a file is safetensors when its header parses, whatever its first bytes; pickle and
zip magic only decide the refusal message of a file that does not parse. Pickles are never unpickled."""

from __future__ import annotations

import pickle
import zipfile

import pytest

from lora_pipeline.cli import main
from lora_pipeline.lora.inspect import inspect_file
from lora_pipeline.lora.safetensors_file import PickleRefusedError, read_header, read_safetensors
from lora_pipeline.render.contract import check_lora_file
from lora_pipeline.render.spec import DeclaredBase, RunFacts
from lora_pipeline.training.checkpoints import analyse_checkpoint, header_complete
from tests.safetensors_bytes import save_with_length_bytes

FACTS = RunFacts(run_id="r", checkpoint_id="c", trigger="sks_chair", rank=4, alpha=2.0, resolution=64,
                 base=DeclaredBase("toy-sd1", None, None, "sd1"))


@pytest.fixture(scope="module")
def kohya_tensors(kohya_run):
    from safetensors.torch import load_file

    return load_file(str(kohya_run / "run-kohya.safetensors"))


@pytest.mark.parametrize("first", [b"\x80", b"PK"], ids=["0x80", "PK"])
def test_header_length_that_looks_like_magic_loads(tmp_path, kohya_tensors, capsys, first):
    f = save_with_length_bytes(kohya_tensors, tmp_path / "lora.safetensors", first, {"ss_network_dim": "4"})
    assert f.read_bytes()[: len(first)] == first
    sf = read_safetensors(f)
    assert set(sf.keys()) == set(kohya_tensors) and sf.metadata["ss_network_dim"] == "4"
    h = read_header(f)
    assert h.header == sf.header and h.size == f.stat().st_size == h.data_end
    r = inspect_file(f)
    assert len(r.modules) == 32 and r.total_delta_norm > 0 and r.nonfinite_tensors == []
    assert analyse_checkpoint(f)["sha256"] == sf.sha256
    assert header_complete(f)
    findings, report = check_lora_file(f, FACTS, "s")
    assert findings == [] and report is not None
    assert main(["inspect", str(f)]) == 0 and "kohya" in capsys.readouterr().out


def _evil(marker):
    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return Evil()


def _torch_pickle(path, marker, zip_format: bool):
    import torch

    torch.save({"unet.x.lora_A.weight": torch.zeros(2, 2), "evil": _evil(marker)}, path,
               _use_new_zipfile_serialization=zip_format)


@pytest.mark.parametrize("kind", ["torch-legacy-pickle", "pickle", "torch-zip", "zip"])
def test_pickle_or_zip_renamed_safetensors_is_refused_never_unpickled(tmp_path, capsys, kind):
    marker = tmp_path / "pwned"
    f = tmp_path / "renamed.safetensors"
    if kind == "torch-legacy-pickle":
        _torch_pickle(f, marker, zip_format=False)
    elif kind == "pickle":
        f.write_bytes(pickle.dumps({"evil": _evil(marker)}, protocol=5))
    elif kind == "torch-zip":
        _torch_pickle(f, marker, zip_format=True)
    else:
        with zipfile.ZipFile(f, "w") as z:
            z.writestr("data.pkl", pickle.dumps(_evil(marker)))
    assert f.read_bytes()[:1] == b"\x80" if "pickle" in kind else f.read_bytes()[:4] == b"PK\x03\x04"
    for reader in (read_safetensors, read_header):
        with pytest.raises(PickleRefusedError, match="content refused"):
            reader(f)
    assert not header_complete(f)
    findings, report = check_lora_file(f, FACTS, "s")
    assert [x.code for x in findings] == ["RUNTIME.LORA_INVALID"] and report is None
    assert "refused" in findings[0].message
    assert main(["inspect", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused" in err and str(f) in err
    assert not marker.exists()


def test_header_only_read_of_a_large_file(tmp_path):
    """read_header / header_complete read 8 bytes + the header, never the tensor data: a sparse
    1 GiB file is checked with well under a megabyte allocated."""
    import json
    import struct
    import tracemalloc

    body = 1 << 30
    head = json.dumps({"lora_unet_x.lora_down.weight": {"dtype": "F32", "shape": [body // 4],
                                                        "data_offsets": [0, body]}}).encode()
    head += b" " * (-len(head) % 8)
    f = tmp_path / "big.safetensors"
    with open(f, "wb") as fh:
        fh.write(struct.pack("<Q", len(head)) + head)
        fh.truncate(8 + len(head) + body)  # sparse: no disk, no data written
    tracemalloc.start()
    try:
        h = read_header(f)
        complete = header_complete(f)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert h.data_end == h.size == 8 + len(head) + body and complete
    assert peak < 1 << 20, peak
    with open(f, "r+b") as fh:  # one byte short: the file is still being written
        fh.truncate(8 + len(head) + body - 1)
    assert not header_complete(f)
