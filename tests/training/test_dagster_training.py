"""The Dagster layer on a real instance: sensor ticks and materializing the two assets."""

from __future__ import annotations

import dagster as dg
import pytest

from assets.training import CHECKPOINT_JOB, RUN_JOB, definitions
from resources.settings import PipelineSettings
from tests.training import fixtures as fx


@pytest.fixture
def defs(workspace):
    tmp, config, cfg_file = workspace
    return dg.Definitions.merge(definitions(config),
                                dg.Definitions(resources={"settings": PipelineSettings(config_path=str(cfg_file))}))


def _tick(defs, instance):
    sensor = defs.resolve_sensor_def("training_runs_sensor")
    return sensor(dg.build_sensor_context(instance=instance, definitions=defs))


def _apply(defs, instance, result):
    """What the daemon does with a tick: add the partitions, launch each run with its run key."""
    for req in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    for rr in result.run_requests:
        job = defs.resolve_job_def(rr.job_name)
        assert job.execute_in_process(instance=instance, partition_key=rr.partition_key,
                                      tags={"dagster/run_key": rr.run_key}).success


def test_sensor_adds_new_partitions_requests_once_and_skips_half_written(defs, workspace, native_run):
    runs = workspace[0] / "runs"
    import json

    run = fx.native(runs, native_run)
    doc = json.loads((run / "lora_run.json").read_text())
    doc["finished_at"] = None  # still training: an unlisted file must hold its size across ticks
    (run / "lora_run.json").write_text(json.dumps(doc))
    (runs / "empty-run").mkdir()
    good = (run / "checkpoints" / "run-native-step00000006.safetensors").read_bytes()
    half = run / "checkpoints" / "run-native-step00000009.safetensors"
    half.write_bytes(good[: len(good) // 3])  # still being written (not listed in lora_run.json)
    with dg.instance_for_test() as instance:
        r1 = _tick(defs, instance)
        adds = {req.partitions_def_name: sorted(req.partition_keys) for req in r1.dynamic_partitions_requests}
        assert adds == {"training_runs": ["empty-run", "native_run"],
                        "checkpoint_ids": ["step-00000003", "step-00000006"]}
        ck = [rr for rr in r1.run_requests if rr.job_name == CHECKPOINT_JOB]
        assert sorted(rr.partition_key for rr in ck) == ["step-00000003|native_run", "step-00000006|native_run"]
        assert all(rr.run_key.endswith("@" + rr.tags["lora_pipeline/sha256"]) for rr in ck)
        assert sorted(rr.partition_key for rr in r1.run_requests if rr.job_name == RUN_JOB) == adds["training_runs"]
        _apply(defs, instance, r1)
        assert isinstance(_tick(defs, instance), dg.SkipReason)  # nothing new: no partition, no request
        assert isinstance(_tick(defs, instance), dg.SkipReason)
        half.write_bytes(good)  # the trainer finishes the file: size must hold for one more tick
        r3 = _tick(defs, instance)
        assert isinstance(r3, dg.SkipReason)
        r4 = _tick(defs, instance)
        assert [req.partition_keys for req in r4.dynamic_partitions_requests] == [["step-00000009"]]
        assert [rr.partition_key for rr in r4.run_requests if rr.job_name == CHECKPOINT_JOB] == \
            ["step-00000009|native_run"]
        _apply(defs, instance, r4)
        assert isinstance(_tick(defs, instance), dg.SkipReason)
        assert instance.get_dynamic_partitions("checkpoint_ids") == [
            "step-00000003", "step-00000006", "step-00000009"]


def test_materialize_training_run_and_lora_checkpoint(defs, workspace, native_run):
    import json

    from lora_pipeline.storage import Storage

    run = fx.native(workspace[0] / "runs", native_run)
    assert run.name == "native run"
    settings = PipelineSettings(config_path=str(workspace[2]))
    assets = [defs.get_assets_def("training_run"), defs.get_assets_def("lora_checkpoint")]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("training_runs", ["native_run"])
        instance.add_dynamic_partitions("checkpoint_ids", ["step-00000006"])
        r1 = dg.materialize(assets[:1], partition_key="native_run", instance=instance,
                            resources={"settings": settings})
        r2 = dg.materialize(assets[1:], partition_key="step-00000006|native_run", instance=instance,
                            resources={"settings": settings})
        assert r1.success and r2.success
        (m1,) = r1.asset_materializations_for_node("training_run")
        assert "](/logs/lora_pipeline/runs/native_run/loss-" in m1.metadata["loss_curve"].value  # inline in the UI
        assert "TRAINING.AGGRESSIVE_SETTINGS" in {r.data["code"] for r in m1.metadata["findings"].value.records}
        (m2,) = r2.asset_materializations_for_node("lora_checkpoint")
    storage = Storage(workspace[1].storage)
    doc = json.loads(storage.run_record("native_run").read_text())
    assert doc["run_id"] == "native_run" and len(doc["checkpoints"]) == 2
    analysis = json.loads(storage.checkpoint_analysis("native_run", "step-00000006").read_text())
    assert analysis["sha256"] == doc["checkpoints"][1]["sha256"] == m2.tags["dagster/data_version"]
    assert analysis["base_check"]["consistent"] and analysis["analysis"]["ranks"] == [4]
    # the delta norms: not at ingestion, but in the checkpoint's step, cached by file hash for the reports
    from lora_pipeline.training.norms import cached_norm

    assert doc["checkpoints"][1]["total_delta_norm"] is None
    norm = analysis["analysis"]["total_delta_norm"]
    assert norm > 0 and m2.metadata["total_delta_norm"].value == norm
    assert cached_norm(workspace[1].storage, "native_run", analysis["sha256"]) == (True, norm)
    assert cached_norm(workspace[1].storage, "native_run", doc["checkpoints"][0]["sha256"]) == (False, None)
    assert "computed by its lora_checkpoint step" in m1.metadata["delta_norm_curve"].value
