"""The launcher and the Dagster backfill paths on a real instance in the workspace (DAGSTER_HOME =
<workspace>/.dagster): one process, what is missing or stale only, failed partitions reported while
the others complete; `dagster job backfill` over checkpoint partitions creates a real backfill."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from assets.partitions import add_checkpoint_partitions
from lora_pipeline.storage import checkpoint_partition_key, split_checkpoint_partition_key

REPO = Path(__file__).resolve().parents[2]


def _checkpoint_keys(config, run_id):
    from lora_pipeline.training.scan import scan_runs

    return [c.partition_key for s in scan_runs(config) for c in s.checkpoints if s.run_id == run_id]


def _instance(config):
    from lora_pipeline.instance import prepare_dagster_home

    return dg.DagsterInstance.from_config(str(prepare_dagster_home(config)))


def test_backfill_of_old_partitions_one_failing_others_complete(workspace):
    from assets.launch import materialize
    from lora_pipeline.render import pipeline
    from lora_pipeline.storage import Storage

    config, run_id = workspace
    keys = _checkpoint_keys(config, run_id)
    assert len(keys) == 3
    with _instance(config) as inst:  # partitions the sensor added long ago, never evaluated
        add_checkpoint_partitions(inst, keys)
    broken = Path(next(c for c in _record_checkpoints(config, run_id) if c.endswith("2.safetensors")))
    pipeline.clear_cache()

    def progress(done, total, label):  # the file breaks mid-backfill, after the run was ingested
        if label == f"run {run_id}":
            data = broken.read_bytes()
            broken.write_bytes(data[:8] + b"{not json" + data[17:])

    summary = materialize(config, progress=progress)
    failed = {(o.asset, o.partition): o.reason for o in summary.failed}
    bad = checkpoint_partition_key(run_id, "step-00000002")
    assert ("lora_checkpoint", bad) in failed and "safetensors" in failed[("lora_checkpoint", bad)].lower()
    assert all(p == bad for _a, p in failed), failed
    assert all("\n" not in r for r in failed.values())
    ok = [k for k in keys if k != bad]
    for k in ok:
        assert {o.asset for o in summary.materialized if o.partition == k} >= {"lora_checkpoint", "eval_renders"}
        run, ck = split_checkpoint_partition_key(k)
        assert (Storage(config.storage).renders_dir(run, ck) / "evaluation.json").is_file()
    assert summary.base_loads == 1  # one process, one base load for every checkpoint
    assert any(line.startswith(f"FAILED lora_checkpoint[{bad}]") for line in summary.lines())
    with _instance(config) as inst:  # the instance the UI reads has the materializations
        got = inst.get_materialized_partitions(dg.AssetKey("eval_renders"))
    assert got == set(ok)


def _record_checkpoints(config, run_id):
    from lora_pipeline.training.scan import scan_runs

    scan = next(s for s in scan_runs(config) if s.run_id == run_id)
    return sorted(str(p) for p in (scan.folder / "checkpoints").glob("*.safetensors"))


def test_second_launch_is_up_to_date_and_a_config_change_rerenders_nothing(workspace, tmp_path, capsys):
    from assets.launch import materialize
    from lora_pipeline.cli import main
    from lora_pipeline.config import load_config

    config, run_id = workspace
    first = materialize(config)
    assert not first.failed and first.renders > 0
    assert main(["evaluate", "--config", str(config.source)]) == 0  # Dagster's stale status: nothing to do
    out = capsys.readouterr().out
    assert " 0 materialized" in out and "0 render(s)" in out and "0 failed" in out
    # A quality threshold edited: eval_renders' code version moves, every checkpoint is stale; the
    # renders all come from the cache.
    text = config.source.read_text().replace("checks:\n", "checks:\n  quality_max_hf_ratio: 3.5\n")
    config.source.write_text(text)
    again = materialize(load_config(config.source))
    evals = {o.partition for o in again.materialized if o.asset == "eval_renders"}
    assert evals == set(_checkpoint_keys(config, run_id)) and again.renders == 0
    assert not [o for o in again.materialized if o.asset == "lora_checkpoint"]
    assert main(["evaluate", "--config", str(config.source), "--run", "nope"]) == 2
    assert "--run nope: no such run" in capsys.readouterr().err


def test_dagster_job_backfill_over_checkpoint_partitions(workspace):
    config, run_id = workspace
    keys = _checkpoint_keys(config, run_id)
    with _instance(config) as inst:
        add_checkpoint_partitions(inst, keys)
    env = {**os.environ, "DAGSTER_HOME": str(config.root / ".dagster"), "LORA_PIPELINE_CONFIG": str(config.source)}
    proc = subprocess.run([sys.executable, "-m", "dagster", "job", "backfill", "-w", "workspace.yaml",
                           "-j", "checkpoint_job", "--partitions", ",".join(keys[:2]), "--noprompt"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with _instance(config) as inst:
        backfills = inst.get_backfills()
        assert len(backfills) == 1
        bf = backfills[0]
        assert sorted(bf.partition_names) == sorted(keys[:2])
        runs = inst.get_runs(dg.RunsFilter(tags={"dagster/backfill": bf.backfill_id}))
    # Without a daemon the runs stay queued: one per requested checkpoint partition, of checkpoint_job
    # (lora_checkpoint, eval_renders and every other checkpoint-partitioned asset).
    assert sorted(r.tags.get("dagster/partition") for r in runs) == sorted(keys[:2])
    assert {r.status for r in runs} == {dg.DagsterRunStatus.QUEUED} and {r.job_name for r in runs} == {"checkpoint_job"}


def test_dataset_folder_change_is_observed_and_snapshotted_again(workspace, tmp_path):
    """An unchanged folder records no observation; an edited one gets a new one (reported by the launch
    itself, no observation run, tagged as its own) and is snapshotted anew."""
    import shutil

    from assets.dataset import SOURCE_KEY
    from assets.launch import materialize
    from assets.launch_guard import LAUNCH_TAG, OBSERVED_BY_TAG
    from lora_pipeline.dataset.snapshot import latest_snapshot, source_fingerprint

    config, _run_id = workspace
    ds = tmp_path / "products-own"
    shutil.copytree(config.datasets["products"].path, ds)
    config = config.model_copy(update={"datasets": {"products": config.datasets["products"].model_copy(
        update={"path": ds})}})
    materialize(config)
    first = latest_snapshot(config.storage, "products").snapshot_id
    with _instance(config) as inst:
        def observations():
            return inst.event_log_storage.get_event_records(dg.EventRecordsFilter(
                event_type=dg.DagsterEventType.ASSET_OBSERVATION, asset_key=SOURCE_KEY))

        before = len(observations())
        assert before == 1 and observations()[0].run_id == ""  # the first launch's, without a run
        unchanged = materialize(config, instance=inst)
        assert len(observations()) == before  # nothing moved: nothing recorded
        assert ("dataset_snapshot", "products") in {(o.asset, o.partition) for o in unchanged.up_to_date}
        (ds / "img_extra.txt").write_text("a photo of sks_chair, one more chair")
        (ds / "img_extra.png").write_bytes((ds / "img_000.png").read_bytes())
        changed = materialize(config, instance=inst)
        latest = observations()[0]  # newest first
        assert len(observations()) == before + 1 and latest.partition_key == "products"
        assert latest.asset_observation.data_version == source_fingerprint(config.storage, "products", ds)
        assert latest.asset_observation.tags[OBSERVED_BY_TAG] == changed.own_token
        assert not [r for r in inst.get_runs() if r.tags.get(LAUNCH_TAG) == "observe"]
        assert ("dataset_snapshot", "products") in {(o.asset, o.partition) for o in changed.materialized}
    assert latest_snapshot(config.storage, "products").snapshot_id != first
    shutil.rmtree(ds)  # a folder that is gone: observed as unreadable, the reason shown on the observation
    with _instance(config) as inst:
        gone = materialize(config, instance=inst)
        latest = observations()[0]
        assert latest.asset_observation.data_version == "unreadable"
        assert str(ds) in latest.asset_observation.metadata["warning"].value
        failed = {(o.asset, o.partition): o.reason for o in gone.failed}
        assert str(ds) in failed[("dataset_snapshot", "products")]
