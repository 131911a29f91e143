"""`eval_renders` through real Dagster: definitions validate with and without the training group, and
one in-process run over 3 checkpoint partitions loads the base once and leaves no adapter."""

from __future__ import annotations

import json
import shutil

import dagster as dg

from assets.partitions import add_checkpoint_partitions
from lora_pipeline.storage import checkpoint_partition_key, split_checkpoint_partition_key


def _workspace(tmp_path, toy_base, native_run, toy_dataset):
    from lora_pipeline.render.contract import base_identity
    from lora_pipeline.training.record import BaseModelRef, CheckpointRecord, DatasetRef, RunRecord

    cfg = tmp_path / "lora_pipeline.yaml"
    cfg.write_text(
        "storage: storage\n"
        f"datasets:\n  products:\n    path: {toy_dataset}\n    trigger: sks_chair\n"
        f"base_models:\n  toy-sd1: {toy_base}\n"
        "eval:\n  prompts: ['a photo of {trigger}']\n  negative_prompt: 'blurry'\n  seeds: [5]\n"
        "  width: 64\n  height: 64\n  steps: 2\n  guidance_scale: 4.0\n"
        "runtime:\n  device: cpu\n  dtype: float32\n"
        # toy renders move ~1 level under a toy LoRA: judge the runtime here, not the quality defaults
        "checks:\n  quality_min_lora_effect: 0.001\n  quality_min_trigger_effect: 0.001\n")
    files = sorted((native_run / "checkpoints").glob("*.safetensors"))
    third = tmp_path / "extra" / "run-native-step00000009.safetensors"
    third.parent.mkdir()
    shutil.copy(files[-1], third)
    cks = []
    for step, f in zip((3, 6, 9), [*files, third], strict=True):
        cid = f"step-{step:08d}"
        cks.append(CheckpointRecord(cid, str(f), "", f.stat().st_size, step=step,
                                    partition_key=checkpoint_partition_key("run-native", cid)))
    rec = RunRecord(run_id="run-native", folder=str(native_run), format="native",
                    base_model=BaseModelRef("toy-sd1", str(toy_base), base_identity(toy_base), "sd1"),
                    trigger="sks_chair", rank=4, alpha=8.0, resolution=64,
                    dataset=DatasetRef(str(toy_dataset), None, "products"), checkpoints=cks)
    (tmp_path / "storage" / "runs" / "run-native").mkdir(parents=True)
    (tmp_path / "storage" / "runs" / "run-native" / "run.json").write_text(json.dumps(rec.to_dict()))
    return cfg, [c.partition_key for c in cks]


def _defs(cfg):
    from assets import evaluation
    from lora_pipeline.config import load_config
    from resources import build_resources

    config = load_config(cfg)
    return dg.Definitions.merge(evaluation.definitions(config), dg.Definitions(resources=build_resources(config)))


def test_definitions_validate_with_and_without_training(tmp_path, toy_base, native_run, toy_dataset, monkeypatch):
    cfg, _ = _workspace(tmp_path, toy_base, native_run, toy_dataset)
    alone = _defs(cfg)  # lora_checkpoint only declared by key
    dg.Definitions.validate_loadable(alone)
    spec = alone.resolve_assets_def("eval_renders").specs_by_key[dg.AssetKey("eval_renders")]
    assert spec.group_name == "evaluation"
    assert alone.resolve_assets_def("eval_renders").node_def.pool == "gpu"
    assert dg.AssetKey("lora_checkpoint") in {d.asset_key for d in spec.deps}
    monkeypatch.setenv("LORA_PIPELINE_CONFIG", str(cfg))
    from assets import build_definitions

    full = build_definitions(str(cfg))
    dg.Definitions.validate_loadable(full)
    assert full.resolve_job_def("evaluation").executor_def is dg.in_process_executor


def test_one_run_three_checkpoints_loads_the_base_once(tmp_path, toy_base, native_run, toy_dataset):
    from lora_pipeline.render import pipeline
    from resources.diffusion_runtime import DiffusionRuntime

    cfg, keys = _workspace(tmp_path, toy_base, native_run, toy_dataset)
    defs = _defs(cfg)
    pipeline.clear_cache()
    before = DiffusionRuntime.base_loads()
    with dg.instance_for_test() as instance:
        add_checkpoint_partitions(instance, keys)
        result = defs.resolve_job_def("evaluation").execute_in_process(
            instance=instance, tags={"dagster/asset_partition_range_start": keys[0],
                                     "dagster/asset_partition_range_end": keys[-1]})
        assert result.success
        mats = result.asset_materializations_for_node("eval_renders")
        assert sorted(m.partition for m in mats) == sorted(keys)
        md = mats[0].metadata
        assert md["renders"].value == 9 and md["skipped"].value == 0
        logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
    assert DiffusionRuntime.base_loads() - before == 1
    assert all(not v for v in DiffusionRuntime.adapters_loaded().values())
    assert any("pipeline load cold" in m for m in logs) and any("denoise step 1/2" in m for m in logs)
    for key in keys:
        ck = split_checkpoint_partition_key(key)[1]
        doc = json.loads((tmp_path / "storage" / "renders" / "run-native" / ck / "evaluation.json").read_text())
        assert doc["verdict"] == "ok", doc["findings"]
        assert doc["provenance"]["dagster_run_id"] == result.run_id
        assert {r["arm"] for r in doc["renders"]} == {"base", "lora_no_trigger", "lora_trigger"}


def test_missing_run_record_is_a_one_line_failure(tmp_path, toy_base, native_run, toy_dataset):
    cfg, _ = _workspace(tmp_path, toy_base, native_run, toy_dataset)
    defs = _defs(cfg)
    with dg.instance_for_test() as instance:
        add_checkpoint_partitions(instance, ["step-00000001|nope"])
        result = defs.resolve_job_def("evaluation").execute_in_process(
            instance=instance, partition_key="step-00000001|nope", raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("eval_renders")
    assert "no run record for run 'nope'" in failure.user_failure_data.description
