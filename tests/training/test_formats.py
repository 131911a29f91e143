"""One fixture run of every trainer format, ingested into the normalised record."""

from __future__ import annotations

import math

import pytest

from lora_pipeline.training.ingest import discover_runs, ingest_run
from lora_pipeline.training.norms import with_norms
from tests.training import fixtures as fx


def _codes(record):
    return {f.code for f in record.findings}


def test_native(runs_dir, workspace, native_run, toy_base):
    r = ingest_run(fx.native(runs_dir, native_run), workspace[1]).record
    assert (r.format, r.run_id) == ("native", "native_run")
    assert [(c.checkpoint_id, c.step) for c in r.checkpoints] == [("step-00000003", 3), ("step-00000006", 6)]
    assert r.base_model.name == "toy-sd1" and r.base_model.path == str(toy_base) and len(r.base_model.sha256) == 64
    assert (r.trigger, r.rank, r.alpha, r.learning_rate, r.steps, r.resolution) == (fx.TRIGGER, 4, 8.0, 5e-3, 6, 64)
    assert [s for s, _ in r.loss] == [1, 2, 3, 4, 5, 6] and all(math.isfinite(v) for _, v in r.loss)
    assert r.dataset.name == "products" and r.images == 8
    assert r.checkpoints[-1].final and r.checkpoints[0].partition_key == "step-00000003|native_run"
    assert all(len(c.sha256) == 64 and c.size > 0 and c.total_delta_norm is None for c in r.checkpoints)
    assert all(c.total_delta_norm > 0 for c in with_norms(workspace[1], r).checkpoints)  # computed after ingestion
    assert "TRAINING.CONFIG_UNKNOWN" not in _codes(r) and not r.conflicts


def test_kohya(runs_dir, workspace, kohya_run):
    r = ingest_run(fx.kohya(runs_dir, kohya_run), workspace[1]).record
    assert (r.format, r.run_id) == ("kohya", "kohya")
    # the final `run-kohya.safetensors` holds the step-6 weights: an alias of that checkpoint
    assert [(c.checkpoint_id, c.step) for c in r.checkpoints] == [("step-00000003", 3), ("step-00000006", 6)]
    assert r.checkpoints[-1].final and r.checkpoints[-1].aliases[0].endswith("run-kohya.safetensors")
    assert (r.base_model.name, r.base_model.architecture) == ("toy-sd1", "sd1")
    assert (r.trigger, r.rank, r.alpha, r.learning_rate, r.steps, r.resolution) == (fx.TRIGGER, 4, 2.0, 5e-3, 6, 64)
    assert r.sources["rank"] == "config.toml" and r.sources["trigger"].startswith("header:")
    assert r.loss == fx.LOSS_F32
    assert r.started_at and r.images == 8 and r.dataset.name == "products"
    assert "optimizer.bin" in " ".join(r.extra["trainer_state_files"]) and not r.ignored


def test_aitoolkit(runs_dir, workspace, toy_lora, toy_base, toy_dataset):
    r = ingest_run(fx.aitoolkit(runs_dir, *toy_lora[:1], toy_base, toy_dataset), workspace[1]).record
    assert (r.format, r.run_id) == ("ai-toolkit", "chairs_aitk")
    assert [(c.checkpoint_id, c.step) for c in r.checkpoints] == [("step-00000003", 3), ("step-00000006", 6)]
    assert r.checkpoints[-1].final and r.checkpoints[-1].aliases  # chairs.safetensors == chairs_000000006
    assert (r.base_model.name, r.base_model.architecture) == (str(toy_base), "sd1")
    assert (r.trigger, r.rank, r.alpha, r.learning_rate, r.optimizer) == (fx.TRIGGER, 4, 8.0, 5e-4, "adamw8bit")
    assert (r.steps, r.resolution, r.name) == (6, 64, "chairs")
    assert r.loss == fx.LOSS and r.started_at.startswith("2026-11-27")
    assert r.dataset.name == "products" and "optimizer.pt" in r.extra["trainer_state_files"]


def test_simpletuner(runs_dir, workspace, toy_lora, toy_base, toy_dataset):
    r = ingest_run(fx.simpletuner(runs_dir, *toy_lora, toy_base, toy_dataset), workspace[1]).record
    assert (r.format, r.run_id) == ("simpletuner", "chairs-simpletuner")
    assert [(c.checkpoint_id, c.step, c.epoch) for c in r.checkpoints] == [("step-00000003", 3, 1),
                                                                            ("step-00000006", 6, 1)]
    assert r.checkpoints[-1].final  # the root pytorch_lora_weights.safetensors, same bytes as checkpoint-6
    assert (r.base_model.name, r.base_model.architecture) == (str(toy_base), "sd1")
    assert (r.trigger, r.rank, r.alpha, r.learning_rate, r.steps, r.resolution) == (fx.TRIGGER, 4, 8.0, 1e-4, 6, 64)
    assert r.loss == fx.LOSS and r.dataset.name == "products"


def test_onetrainer(runs_dir, workspace, toy_lora, toy_base, toy_dataset):
    r = ingest_run(fx.onetrainer(runs_dir, toy_lora[0], toy_base, toy_dataset), workspace[1]).record
    assert (r.format, r.run_id) == ("onetrainer", "chairs-onetrainer")
    assert [(c.checkpoint_id, c.step, c.epoch) for c in r.checkpoints] == [
        ("step-00000003", 3, 1), ("step-00000006", 6, 2), ("chairs", None, None)]
    assert r.checkpoints[-1].final
    assert (r.base_model.name, r.base_model.architecture) == (str(toy_base), "sd1")
    # OneTrainer records no trigger: it comes from the configured dataset the run trained on
    assert (r.trigger, r.sources["trigger"]) == (fx.TRIGGER, "config:datasets.products.trigger")
    assert (r.rank, r.alpha, r.learning_rate, r.optimizer, r.resolution, r.epochs) == (4, 8.0, 3e-4, "ADAMW", 64, 2)
    assert r.loss == fx.LOSS_F32 and r.started_at.startswith("2026-11-28T10:00")


def test_diffusers_examples(runs_dir, workspace, toy_lora, toy_base, toy_dataset):
    r = ingest_run(fx.diffusers_examples(runs_dir, *toy_lora, toy_base, toy_dataset), workspace[1]).record
    assert (r.format, r.run_id) == ("diffusers", "chairs-diffusers")
    assert [(c.checkpoint_id, c.step) for c in r.checkpoints] == [
        ("step-00000003", 3), ("step-00000006", 6), ("pytorch_lora_weights", None)]
    assert (r.base_model.name, r.rank, r.alpha, r.learning_rate, r.steps) == (str(toy_base), 4, 8.0, 1e-4, 6)
    assert r.sources["alpha"].startswith("header:")  # hparams carry no alpha; lora_adapter_metadata does
    assert r.trigger == fx.TRIGGER and r.loss == fx.LOSS_F32
    assert not r.ignored and len(r.extra["trainer_state_files"]) == 6  # accelerate state: not LoRA files


def test_generic(runs_dir, workspace, toy_lora):
    r = ingest_run(fx.generic(runs_dir, toy_lora[0]), workspace[1]).record
    assert (r.format, r.run_id) == ("generic", "loose-files")
    assert [(c.checkpoint_id, c.step) for c in r.checkpoints] == [("step-00000300", 300), ("step-00000600", 600)]
    assert r.rank == 4 and r.sources["rank"].startswith("weights:") and r.base_model.name is None
    assert "TRAINING.CONFIG_UNKNOWN" in _codes(r)


def test_discover_runs_every_subfolder(runs_dir, workspace, toy_lora, native_run):
    fx.native(runs_dir, native_run)
    fx.generic(runs_dir, toy_lora[0])
    (runs_dir / ".hidden").mkdir()
    (runs_dir / "empty").mkdir()
    (runs_dir / "notes.txt").write_text("x")
    recs = discover_runs(workspace[1])
    assert [r.run_id for r in recs] == ["empty", "loose-files", "native_run"]
    assert recs[0].checkpoints == [] and recs[0].format == "generic"


@pytest.mark.parametrize("missing", [True])
def test_curves_are_small_pngs(runs_dir, workspace, native_run, missing):
    from lora_pipeline.training.ingest import write_run_record

    ing = ingest_run(fx.native(runs_dir, native_run), workspace[1])
    files = write_run_record(workspace[1], ing)
    assert "delta_norm.png" not in files  # drawn where the norms are computed (training/norms.py)
    with_norms(workspace[1], ing.record)
    files["delta_norm.png"] = files["run.json"].parent / "delta_norm.png"
    for name in ("loss.png", "delta_norm.png"):
        data = files[name].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 20_000
    assert files["run.json"].is_file()
