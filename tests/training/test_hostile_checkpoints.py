"""One bad file costs one partition: a run holding a hostile checkpoint between two good ones, beside
another good run. Discovery and ingestion never raise; the good checkpoints of both runs are found and
ingested; the bad file is its own RUNTIME.LORA_INVALID finding, one line naming the file and what is
wrong; a valid file with a malformed part (an empty or NaN alpha) stays a checkpoint, with its finding;
an fp8 checkpoint is just a checkpoint."""

from __future__ import annotations

import time

import pytest

from lora_pipeline.config import load_config
from lora_pipeline.training.ingest import discover_runs, ingest_run
from lora_pipeline.training.norms import with_norms
from lora_pipeline.training.scan import scan_runs
from tests import hostile_safetensors as H

BAD = "chairs-step00000200.safetensors"
VALID_WITH_FINDING = {"empty_alpha": "is empty (shape [0])", "nan_alpha": "is nan"}
CASES = [*H.CASES, "fp8"]


@pytest.fixture
def training_runs(tmp_path):
    def build(bad: bytes):
        runs = tmp_path / "runs"
        H.write(runs / "chairs" / "chairs-step00000100.safetensors", H.lora_bytes(seed=1))
        H.write(runs / "chairs" / BAD, bad)
        H.write(runs / "chairs" / "chairs-step00000300.safetensors", H.lora_bytes(seed=3))
        H.write(runs / "other" / "other-step00000050.safetensors", H.lora_bytes(seed=5))
        (tmp_path / "lora_pipeline.yaml").write_text("storage: storage\ntraining_runs: runs\n")
        return runs, load_config(tmp_path / "lora_pipeline.yaml")
    return build


def _bad_bytes(case: str) -> bytes:
    return H.fp8_bytes() if case == "fp8" else H.CASES[case][0](H.lora_bytes())


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_checkpoint_costs_only_itself(training_runs, case):
    runs, config = training_runs(_bad_bytes(case))
    later = time.time() + 3600  # every file settled
    fragment = None if case == "fp8" else H.CASES[case][1]
    valid = fragment is None

    scans = {s.run_id: s for s in scan_runs(config, now=later)}
    assert [c.checkpoint_id for c in scans["other"].checkpoints] == ["step-00000050"]
    good_ids = ["step-00000100", "step-00000300"]
    want = ["step-00000100", "step-00000200", "step-00000300"] if valid else good_ids
    assert [c.checkpoint_id for c in scans["chairs"].checkpoints] == want
    assert scans["chairs"].waiting == ([] if valid else [BAD])
    if not valid:  # unchanged across a second tick and settled: final, no longer waiting for ever
        again = {s.run_id: s for s in scan_runs(config, now=later)}
        assert again["chairs"].waiting == [] and [c.checkpoint_id for c in again["chairs"].checkpoints] == good_ids

    record = ingest_run(runs / "chairs", config, now=later).record
    assert [c.checkpoint_id for c in record.checkpoints] == want
    invalid = [f for f in record.findings if f.code == "RUNTIME.LORA_INVALID"]
    if case == "fp8":
        assert invalid == [] and record.checkpoint("step-00000200").total_delta_norm is None  # not at ingestion
        assert with_norms(config, record).checkpoint("step-00000200").total_delta_norm > 0
    else:
        assert invalid and {f.subject for f in invalid} == {str(runs / "chairs" / BAD)}
        for f in invalid:
            assert "\n" not in f.message and f.message.startswith(f"{BAD}: ")
        first = invalid[0].message
        if valid:
            assert VALID_WITH_FINDING[case] in first and repr(H.ALPHA) in first
            assert record.checkpoint("step-00000200") is not None
        else:
            assert fragment in first and repr(H.NAMES[case])[1:-1] in first, first
            assert record.ignored == [BAD]

    other = ingest_run(runs / "other", config, now=later).record
    assert [c.checkpoint_id for c in other.checkpoints] == ["step-00000050"]
    assert not [f for f in other.findings if f.code.startswith("RUNTIME.")]
    assert sorted(r.run_id for r in discover_runs(config)) == ["chairs", "other"]


def test_a_run_of_only_a_hostile_checkpoint_is_recorded_with_its_findings(training_runs):
    runs, config = training_runs(b"")
    for p in (runs / "chairs").iterdir():
        p.unlink()
    H.write(runs / "chairs" / BAD, H.CASES["overlapping_offsets"][0](H.lora_bytes()))
    record = ingest_run(runs / "chairs", config, now=time.time() + 3600).record
    codes = [f.code for f in record.findings]
    assert record.checkpoints == [] and "RUNTIME.LORA_INVALID" in codes
    assert "TRAINING.CONFIG_UNKNOWN" in codes  # the header was to tell the config: nothing does now


def test_header_values_that_break_fact_parsing_are_left_out(training_runs):
    """Metadata is the file writer's: a timestamp past year 9999, a resolution of 5000 digits, JSON
    nested past the recursion limit, a non-numeric lora_alpha: those facts are unknown, nothing raises."""
    md = {"ss_network_dim": "4", "ss_training_started_at": "1e300", "ss_resolution": "9" * 5000,
          "training_info": "[" * 100_000, "ss_dataset_dirs": "{" * 100_000,
          "lora_adapter_metadata": '{"r": 4, "lora_alpha": "eight"}', "ss_steps": "9" * 400}
    runs, config = training_runs(H.lora_bytes(seed=2, metadata=md))
    for p in (runs / "chairs").glob("*0[13]00.safetensors"):
        p.unlink()  # the odd file is the run's last checkpoint: its header is where the facts come from
    record = ingest_run(runs / "chairs", config, now=time.time() + 3600).record
    assert [c.checkpoint_id for c in record.checkpoints] == ["step-00000200"]
    assert record.started_at is None and record.resolution is None and record.rank == 4
