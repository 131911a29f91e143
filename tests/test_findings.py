import re
from pathlib import Path

import pytest

from lora_pipeline.findings import CATALOGUE, Finding, catalogue_markdown, verdict

REPO = Path(__file__).resolve().parents[1]


def _contract_codes() -> set[str]:
    contract = REPO.parent / "shared" / "CONTRACT.md"
    if not contract.is_file():
        pytest.skip("shared/CONTRACT.md is not beside the checkout")
    section = contract.read_text().split("## 5. Finding codes", 1)[1].split("## 6.", 1)[0]
    return set(re.findall(r"`([A-Z]+\.[A-Z_]+)`", section))


def test_catalogue_holds_exactly_the_contract_codes():
    assert set(CATALOGUE) == _contract_codes()


def test_docs_findings_md_is_generated_from_the_catalogue():
    assert (REPO / "docs" / "findings.md").read_text() == catalogue_markdown(), (
        "regenerate: python -m lora_pipeline.findings > docs/findings.md")


def test_every_code_has_layer_severity_meaning_and_fix():
    for c in CATALOGUE.values():
        assert c.layer == c.code.split(".")[0].lower()
        assert c.severity in ("error", "warn", "info") and c.meaning and c.fix
    assert CATALOGUE["REVIEW.REJECTED"].severity == "info"


def test_unknown_code_is_refused():
    with pytest.raises(ValueError, match="unknown finding code"):
        Finding("RUNTIME.NOPE", "x", "y")


@pytest.mark.parametrize("codes, expected", [
    ([], "ok"),
    (["OPERATIONAL.SLOW_WARMUP"], "ok"),
    (["QUALITY.NOISE_COLLAPSE"], "quality_problem"),
    (["QUALITY.NOISE_COLLAPSE", "TRAINING.LOSS_DIVERGED"], "training_problem"),
    (["TRAINING.LOSS_DIVERGED", "DATASET.CAPTION_WITHOUT_IMAGE"], "dataset_problem"),
    (["DATASET.CAPTION_WITHOUT_IMAGE", "RUNTIME.LORA_NOT_APPLIED"], "evaluation_invalid"),
    (["COMPARISON.ARM_MISSING"], "evaluation_invalid"),
    (["DATASET.VAGUE_CAPTIONS"], "ok"),  # warn only
])
def test_verdict_rule_of_contract_section_4(codes, expected):
    assert verdict([Finding(c, "s", "m") for c in codes]) == expected


def test_severity_override_changes_verdict():
    assert verdict([Finding("DATASET.VAGUE_CAPTIONS", "s", "m", severity="error")]) == "dataset_problem"


def test_finding_round_trips_in_report_shape():
    f = Finding("RUNTIME.LORA_NOT_APPLIED", "runs/x.safetensors", "no change", {"probe_rel_delta": 0.0})
    d = f.to_dict()
    assert list(d) == ["code", "layer", "severity", "subject", "message", "evidence", "fix"]
    assert Finding.from_dict(d) == f
