"""`diagnose --fail-on invalid|error|warn` gates a release on the real reports of the toy world (planted
faults: tests/report/conftest.py), and a rejected checkpoint reads as rejected everywhere a verdict is
shown (diagnose, the run report, the summaries) and is never proposed as best, even when the review
came after the reports were written."""

from __future__ import annotations

import json
import shutil

import pytest

CLEAN, LAST = "clean", "step-00000006"
# run -> (its verdict at LAST, does it reach invalid / error / warn)
CASES = {
    "fault-prefix": ("evaluation_invalid", (True, True, True)),  # RUNTIME.LORA_NOT_APPLIED
    "nan-loss": ("training_problem", (False, True, True)),  # TRAINING.LOSS_NOT_FINITE
    "fault-negative": ("ok", (False, False, True)),  # RUNTIME.NEGATIVE_CONTRADICTS (warn) only
}


@pytest.fixture(scope="module")
def fail_on_reports(world):
    from lora_pipeline.report.diagnosis import write_checkpoint_report

    return {run: write_checkpoint_report(world.config, run, LAST)[0] for run in CASES}


@pytest.mark.parametrize("run", list(CASES))
def test_fail_on_exits_1_exactly_when_the_checkpoint_reaches_the_level(world, fail_on_reports, run, capsys):
    from lora_pipeline.cli import main

    verdict, reached = CASES[run]
    assert fail_on_reports[run]["verdict"] == verdict
    errors = {f["severity"] for f in fail_on_reports[run]["findings"]}
    assert ("error" in errors) == reached[1] and bool(errors & {"error", "warn"}) == reached[2]
    base = ["diagnose", "--run", run, "--checkpoint", LAST, "--config", str(world.config_path)]
    assert main(base) == 0  # without --fail-on, findings are not failures
    capsys.readouterr()
    for level, hit in zip(("invalid", "error", "warn"), reached, strict=True):
        code = main([*base, "--fail-on", level])
        out, err = capsys.readouterr()
        assert code == (1 if hit else 0), (level, out, err)
        assert f"--fail-on {level}: {int(hit)} of 1 checkpoint(s) reach it" in out
        if hit:
            [line] = err.strip().splitlines()
            assert line == f"error: --fail-on {level}: 1 of 1 checkpoint(s) reach it: {run}/{LAST} ({verdict})"
        else:
            assert err == ""


def test_fail_on_with_json_is_one_document_and_nothing_to_gate_on_fails(world, fail_on_reports, capsys):
    from lora_pipeline.cli import main

    cfg = str(world.config_path)
    assert main(["diagnose", "--run", "nan-loss", "--checkpoint", LAST, "--json", "--fail-on", "error",
                 "--config", cfg]) == 1
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["fail_on"] == {"level": "error", "checkpoints": 1,
                              "failing": [f"nan-loss/{LAST} (training_problem)"]}
    assert err.startswith("error: --fail-on error: 1 of 1")
    assert main(["diagnose", "--run", "nan-loss", "--checkpoint", "step-99999999", "--fail-on", "warn",
                 "--config", cfg]) == 1
    assert "no report for run nan-loss checkpoint step-99999999" in capsys.readouterr().err
    assert main(["diagnose", "--fail-on", "fatal", "--config", cfg]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "--fail-on: invalid choice: 'fatal'" in line


@pytest.fixture
def copied_world(world, tmp_path):
    """A copy of the toy world's workspace (config paths are relative), so reviews touch no other test."""
    from lora_pipeline.config import load_config
    from lora_pipeline.report.diagnosis import write_checkpoint_report
    from lora_pipeline.report.run import write_run_report

    root = tmp_path / "world"
    shutil.copytree(world.root, root, symlinks=True)
    config = load_config(root / "lora_pipeline.yaml")
    for ck in ("step-00000003", LAST):
        write_checkpoint_report(config, CLEAN, ck)
    doc, _ = write_run_report(config, CLEAN)
    return config, doc


def test_a_rejected_checkpoint_is_rejected_wherever_a_verdict_is_shown(copied_world, capsys):
    from lora_pipeline.cli import main
    from lora_pipeline.demo_report import summarise
    from lora_pipeline.report.reviews import append_review

    config, run_doc = copied_world
    cfg = str(config.source)
    best = run_doc["best"]
    assert best in ("step-00000003", LAST), run_doc["candidates"]
    other = next(c for c in ("step-00000003", LAST) if c != best)
    # Through the CLI: the reports it touches are rewritten at once.
    assert main(["review", CLEAN, "--checkpoint", best, "--decision", "reject", "--note", "faces melt",
                 "--by", "ana", "--config", cfg]) == 0
    assert f"reports updated: {CLEAN}/{best}, {CLEAN} (run report)" in capsys.readouterr().out
    reports = config.storage / "reports" / CLEAN
    ck_doc = json.loads((reports / best / "report.json").read_text())
    assert "REVIEW.REJECTED" in {f["code"] for f in ck_doc["findings"]}
    new_run = json.loads((reports / "report.json").read_text())
    assert new_run["best"] != best and best not in [c["checkpoint_id"] for c in new_run["candidates"]]
    assert next(c for c in new_run["checkpoints"] if c["checkpoint_id"] == best)["review"] == "rejected by ana"
    # Behind the reports' back (another tool appending to reviews.jsonl): still shown, never best.
    append_review(config.storage, CLEAN, other, "reject", "colours drift", by="bo")
    assert main(["diagnose", "--run", CLEAN, "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert f"  {best}: ok, REJECTED by ana  (" in out and f"  {other}: ok, REJECTED by bo  (" in out
    assert "best checkpoint: none" in out.splitlines()[0]
    assert main(["diagnose", "--run", CLEAN, "--json", "--config", cfg]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["runs"][0]["best"] is None
    assert {c["checkpoint_id"]: c["review"] for c in doc["runs"][0]["checkpoints"]} == \
        {best: "rejected by ana", other: "rejected by bo"}
    assert main(["diagnose", "--run", CLEAN, "--fail-on", "invalid", "--config", cfg]) == 1  # rejected: every level
    assert f"2 of 2 checkpoint(s) reach it: {CLEAN}/step-00000003 (ok, rejected by" in capsys.readouterr().err
    rows, lines, _ = summarise(config.storage)  # the demo's summary
    assert {(r[1], r[2]) for r in rows if r[0] == CLEAN} == {(best, "ok, REJECTED by ana"),
                                                             (other, "ok, REJECTED by bo")}
    [line] = [ln for ln in lines if ln.startswith(f"{CLEAN}:")]
    assert "best checkpoint: none" in line and f"best checkpoint {best}" not in line
    # A later accept lifts it: the latest applicable decision counts.
    append_review(config.storage, CLEAN, best, "accept", "fixed upstream", by="ana")
    assert main(["diagnose", "--run", CLEAN, "--fail-on", "invalid", "--checkpoint", best, "--config", cfg]) == 0
    assert f"  {best}: ok, accepted by ana  (" in capsys.readouterr().out
