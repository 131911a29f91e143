"""The acceptance scenario table: in the toy world, each planted fault yields exactly its expected code
(beyond what the clean run already has, plus the documented consequences of a failed LoRA contract) and
the verdict of CONTRACT section 4; the clean run is `ok` with no error finding."""

from __future__ import annotations

import pytest

CLEAN, LAST = "clean", "step-00000006"

SKIPPED_ARMS = {"COMPARISON.ARM_MISSING"}  # a failed LoRA contract skips the LoRA arms, on purpose
SCENARIOS = [  # (run, expected code, verdict, allowed consequences)
    ("fault-prefix", "RUNTIME.LORA_NOT_APPLIED", "evaluation_invalid", SKIPPED_ARMS),
    ("fault-shape", "RUNTIME.LORA_INCOMPATIBLE", "evaluation_invalid", SKIPPED_ARMS),
    ("fault-partial", "RUNTIME.LORA_PARTIAL", "evaluation_invalid", SKIPPED_ARMS),
    ("fault-zero", "QUALITY.NO_LORA_EFFECT", "quality_problem", set()),
    ("fault-base", "RUNTIME.BASE_MODEL_MISMATCH", "evaluation_invalid", SKIPPED_ARMS),
    ("fault-missing", "RUNTIME.LORA_MISSING", "evaluation_invalid", SKIPPED_ARMS),
    ("fault-truncated", "RUNTIME.TRIGGER_TRUNCATED", "evaluation_invalid",
     {"RUNTIME.PROMPT_TRUNCATED", "QUALITY.TRIGGER_NO_EFFECT"}),  # the model never sees the trigger
    ("fault-respelled", "RUNTIME.TRIGGER_MISMATCH", "evaluation_invalid", set()),
    ("fault-resolution", "RUNTIME.RESOLUTION_BELOW_TRAINING", "ok", set()),
    ("fault-negative", "RUNTIME.NEGATIVE_CONTRADICTS", "ok", set()),
    ("unpaired", "DATASET.IMAGE_WITHOUT_CAPTION", "dataset_problem", set()),
    ("changed", "DATASET.SOURCE_CHANGED", "ok", set()),
    ("nan-loss", "TRAINING.LOSS_NOT_FINITE", "training_problem", set()),
]


def _codes(doc) -> set[str]:
    return {f["code"] for f in doc["findings"]}


@pytest.fixture(scope="module")
def reports(world):
    from lora_pipeline.report.diagnosis import write_checkpoint_report

    out = {run: write_checkpoint_report(world.config, run, LAST)[0] for run, *_ in SCENARIOS}
    out[CLEAN] = write_checkpoint_report(world.config, CLEAN, LAST)[0]
    return out


def test_clean_run_is_ok_without_errors(reports):
    doc = reports[CLEAN]
    assert doc["verdict"] == "ok", [(f["code"], f["message"]) for f in doc["findings"]]
    assert not [f for f in doc["findings"] if f["severity"] == "error"]
    assert {r["arm"] for r in doc["renders"]} == {"base", "lora_no_trigger", "lora_trigger"}
    assert all(c["passed"] for c in doc["metrics"]["contracts"].values())


@pytest.mark.parametrize(("run", "code", "expected_verdict", "consequences"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_planted_fault(reports, run, code, expected_verdict, consequences):
    doc = reports[run]
    new = _codes(doc) - _codes(reports[CLEAN])
    assert code in new, [(f["code"], f["message"]) for f in doc["findings"]]
    assert new - consequences == {code}, sorted(new)
    assert doc["verdict"] == expected_verdict
    layer = code.split(".")[0].lower()
    contract = {"runtime": "runtime", "dataset": "dataset"}.get(layer)
    if contract and expected_verdict != "ok":
        assert not doc["metrics"]["contracts"][contract]["passed"]
        assert code in doc["metrics"]["contracts"][contract]["errors"]
