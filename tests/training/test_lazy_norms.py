"""Delta norms after ingestion (lora_pipeline/training/norms.py): ingestion forms no Gram product but
still names same-weights aliases (their norms computed for that case only, as the sensor's scan
does); `with_norms` computes each checkpoint's norm once per file hash, caches it, and makes the norm
findings and the curve from them."""

from __future__ import annotations

import json

import pytest

from lora_pipeline.lora import inspect
from lora_pipeline.training import checkpoints
from lora_pipeline.training.ingest import ingest_run
from lora_pipeline.training.norms import POINTS_FILE, cached_norm, run_dir, stored_points, with_norms
from lora_pipeline.training.scan import scan_runs
from tests.training import fixtures as fx


def _norm_files(config, run_id):
    return sorted(p.name for p in (run_dir(config.storage, run_id) / "norms").glob("*.json"))


def test_ingestion_forms_no_gram_product(runs_dir, workspace, toy_lora, monkeypatch):
    run = fx.generic(runs_dir, toy_lora[0])

    def refuse(*a, **k):
        raise AssertionError("ingestion computed a delta norm")

    monkeypatch.setattr(inspect, "_lora_norms", refuse)
    r = ingest_run(run, workspace[1]).record
    assert [c.checkpoint_id for c in r.checkpoints] == ["step-00000300", "step-00000600"]
    assert all(c.total_delta_norm is None for c in r.checkpoints) and not _norm_files(workspace[1], r.run_id)


@pytest.mark.parametrize("same", [True, False])
def test_same_step_same_size_other_bytes_is_an_alias_when_the_norms_agree(runs_dir, workspace, toy_lora, same):
    config = workspace[1]
    run = runs_dir / "twins"
    fx._save(run / "a_step100.safetensors", fx.at_step(toy_lora[0], 0.5), {})
    fx._save(run / "a_step200.safetensors", toy_lora[0], {"note": "first"})
    fx._save(run / "b_step200.safetensors", toy_lora[0] if same else fx.at_step(toy_lora[0], 2.0), {"note": "other"})
    assert (run / "a_step200.safetensors").stat().st_size == (run / "b_step200.safetensors").stat().st_size
    r = ingest_run(run, config).record
    ids = [c.checkpoint_id for c in r.checkpoints]
    if same:
        assert ids == ["step-00000100", "step-00000200"]
        assert r.checkpoints[-1].aliases == [str(run / "b_step200.safetensors")]
    else:
        assert ids == ["step-00000100", "step-00000200", "b_step200"]
    assert len(_norm_files(config, "twins")) == 2  # only the two files that claim step 200
    assert all(c.total_delta_norm is None for c in r.checkpoints)
    scanned = {s.run_id: s for s in scan_runs(config)}["twins"]  # the sensor names them alike
    assert [c.checkpoint_id for c in scanned.checkpoints] == ids


def test_with_norms_computes_once_per_file_and_writes_the_curve(runs_dir, workspace, toy_lora, monkeypatch):
    config = workspace[1]
    run = runs_dir / "grow"
    for step, scale in ((100, 1.0), (200, 1.5), (300, 2.0)):
        fx._save(run / f"grow_step{step}.safetensors", fx.at_step(toy_lora[0], scale), {})
    r = ingest_run(run, config).record
    assert with_norms(config, r, compute=False, write=False).checkpoints[0].total_delta_norm is None
    got = [c.total_delta_norm for c in with_norms(config, r).checkpoints]
    assert got[0] > 0 and got[1] == pytest.approx(1.5 * got[0], rel=1e-3) and got[2] > got[1]
    assert [cached_norm(config.storage, "grow", c.sha256) for c in r.checkpoints] == [(True, n) for n in got]
    folder = run_dir(config.storage, "grow")
    assert (folder / "delta_norm.png").read_bytes()[:4] == b"\x89PNG"
    assert [p[1] for p in stored_points(config.storage, "grow")] == got
    assert json.loads((folder / POINTS_FILE).read_text())["checkpoints"][2]["step"] == 300

    def refuse(*a, **k):
        raise AssertionError("computed again")

    monkeypatch.setattr(checkpoints, "analyse_checkpoint", refuse)
    again = ingest_run(run, config).record  # a fresh record: its norms come from the cache
    assert [c.total_delta_norm for c in with_norms(config, again, write=False).checkpoints] == got


def test_a_file_changed_since_ingestion_has_no_norm_from_that_record(runs_dir, workspace, toy_lora):
    config = workspace[1]
    run = runs_dir / "moving"
    fx._save(run / "m_step100.safetensors", toy_lora[0], {})
    r = ingest_run(run, config).record
    fx._save(run / "m_step100.safetensors", fx.at_step(toy_lora[0], 3.0), {})
    assert with_norms(config, r, write=False).checkpoints[0].total_delta_norm is None
    (run / "m_step100.safetensors").unlink()
    assert with_norms(config, r, write=False).checkpoints[0].total_delta_norm is None  # gone: no norm, no error


def test_the_reports_carry_the_norm_findings_and_the_curve(runs_dir, workspace, toy_lora):
    from lora_pipeline.fsutil import atomic_write_json
    from lora_pipeline.report.diagnosis import write_checkpoint_report
    from lora_pipeline.report.run import write_run_report
    from lora_pipeline.storage import Storage
    from lora_pipeline.training.ingest import write_run_record

    config = workspace[1]
    run = runs_dir / "boom"
    fx._save(run / "boom_step100.safetensors", toy_lora[0], {})
    fx._save(run / "boom_step200.safetensors", fx.at_step(toy_lora[0], 50.0), {})
    ingested = ingest_run(run, config)
    write_run_record(config, ingested)
    stored = json.loads(Storage(config.storage).run_record("boom").read_text())
    assert "TRAINING.WEIGHTS_EXPLODING" not in {f["code"] for f in stored["findings"]}
    assert not (run_dir(config.storage, "boom") / "delta_norm.png").exists()
    # an evaluation of the last checkpoint with nothing to say (the renders are not the point here)
    atomic_write_json(Storage(config.storage).renders_dir("boom", "step-00000200") / "evaluation.json",
                      {"run_id": "boom", "checkpoint_id": "step-00000200", "step": 200, "findings": [],
                       "renders": [], "provenance": {}})
    doc, folder = write_checkpoint_report(config, "boom", "step-00000200")
    assert "TRAINING.WEIGHTS_EXPLODING" in {f["code"] for f in doc["findings"]}
    assert doc["verdict"] == "training_problem"  # WEIGHTS_EXPLODING is an error, as at ingestion before
    assert doc["metrics"]["training"]["total_delta_norm"] > 0
    run_doc, run_folder = write_run_report(config, "boom")
    assert "TRAINING.WEIGHTS_EXPLODING" in {f["code"] for f in run_doc["findings"]}
    assert [p[0] for p in run_doc["signals"]["weights.total_delta_norm"]] == [100.0, 200.0]
    assert "LoRA weight-norm curve" in (run_folder / "report.html").read_text()
    assert (run_dir(config.storage, "boom") / "delta_norm.png").is_file()
