"""Ingestion keeps a checkpoint whose safetensors header length starts with 0x80 (or `PK`): it is a
valid file, not a pickle, so the run gets no RUNTIME.LORA_INVALID and no TRAINING.CONFIG_UNKNOWN."""

from __future__ import annotations

import pytest

from lora_pipeline.training.ingest import ingest_run
from lora_pipeline.training.scan import scan_run
from tests.safetensors_bytes import save_with_length_bytes
from tests.training import fixtures as fx


@pytest.mark.parametrize("first", [b"\x80", b"PK"], ids=["0x80", "PK"])
def test_checkpoint_with_magic_looking_header_length_is_ingested(runs_dir, workspace, native_run, first):
    from safetensors import safe_open
    from safetensors.torch import load_file

    run = fx.native(runs_dir, native_run)
    ckpts = sorted((run / "checkpoints").glob("*.safetensors"))
    last = ckpts[-1]
    with safe_open(str(last), "pt") as s:
        md = s.metadata()
    save_with_length_bytes(load_file(str(last)), last, first, md)
    assert last.read_bytes()[: len(first)] == first
    r = ingest_run(run, workspace[1]).record
    codes = {f.code for f in r.findings}
    assert not codes & {"RUNTIME.LORA_INVALID", "TRAINING.CONFIG_UNKNOWN"}, [
        (f.code, f.message) for f in r.findings]
    assert [c.path for c in r.checkpoints] == [str(p) for p in ckpts] and r.ignored == []
    assert r.base_model.architecture == "sd1" and r.rank == fx.RANK
    assert len(scan_run(run, workspace[1]).checkpoints) == len(ckpts)
