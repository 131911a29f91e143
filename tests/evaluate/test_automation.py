"""The `reevaluate_stale` schedule on a real instance after a real launch: nothing to do while
everything is fresh; an eval spec change requests exactly the evaluated checkpoints again (with their
reports); a dataset folder edit requests the dataset's snapshot; a repeated tick reuses its run keys."""

from __future__ import annotations

import dagster as dg


def _tick(config, instance, kind="checkpoint"):
    from assets import build_definitions

    defs = build_definitions(config=config)
    schedule = defs.resolve_schedule_def(f"reevaluate_stale_{kind}s")
    # As a context manager: the context sets Dagster's current defs-state storage and must reset it.
    with dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def()) as ctx:
        return schedule.evaluate_tick(ctx)


def test_reevaluate_stale_after_spec_and_dataset_changes(workspace, tmp_path):
    import shutil

    from assets.launch import materialize
    from lora_pipeline.instance import prepare_dagster_home
    from lora_pipeline.training.scan import scan_runs

    config, run_id = workspace
    # The workspace's dataset is shared with other tests: give this one its own copy to edit.
    ds = tmp_path / "products-copy"
    shutil.copytree(config.datasets["products"].path, ds)
    config = config.model_copy(update={"datasets": {"products": config.datasets["products"].model_copy(
        update={"path": ds})}})
    summary = materialize(config)
    assert not summary.failed
    ckpts = sorted(c.partition_key for s in scan_runs(config) for c in s.checkpoints)
    with dg.DagsterInstance.from_config(str(prepare_dagster_home(config))) as inst:
        for kind in ("dataset", "run", "checkpoint"):
            fresh = _tick(config, inst, kind)
            assert fresh.run_requests == [] and "out of date" in (fresh.skip_message or "")

        changed = config.model_copy(update={"eval": config.eval.model_copy(update={"steps": 3})})
        result = _tick(changed, inst)
        by_partition = {r.partition_key: r for r in result.run_requests}
        assert sorted(by_partition) == ckpts
        for r in by_partition.values():
            assert {k.path[-1] for k in r.asset_selection} == {"eval_renders", "checkpoint_report"}
            assert r.tags["lora_pipeline/why"] == "checkpoint stale"
        again = _tick(changed, inst)
        assert sorted(r.run_key for r in again.run_requests) == sorted(r.run_key for r in result.run_requests)

        (ds / "img_new.png").write_bytes((ds / "img_000.png").read_bytes()[:-1] + b"\x01")
        (ds / "img_new.txt").write_text("a photo of sks_chair, a new chair")
        edited = _tick(config, inst, "dataset")
        [snap] = edited.run_requests
        assert snap.partition_key == "products"
        assert [k.path[-1] for k in snap.asset_selection] == ["dataset_snapshot"]
