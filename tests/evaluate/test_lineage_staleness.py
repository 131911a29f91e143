"""Staleness follows the real lineage (issue 14, item 1), on a real instance after real launches:
a new run makes exactly its own partitions need work; a new checkpoint makes exactly its own
partitions and its run's report need work; nothing of the other run goes stale in Dagster's own
stale-status resolver, and the re-evaluation schedules request nothing for it."""

from __future__ import annotations

import json
import shutil

import dagster as dg

from lora_pipeline.storage import checkpoint_partition_key


def _drop_last_checkpoint(run, keep: int) -> tuple[str, dict]:
    """Hide the run's last checkpoint (as if not saved yet); returns its file and its listing."""
    doc = json.loads((run / "lora_run.json").read_text())
    last = doc["checkpoints"][keep:]
    doc["checkpoints"] = doc["checkpoints"][:keep]
    (run / "lora_run.json").write_text(json.dumps(doc))
    [entry] = last
    (run / entry["file"]).rename(run.parent.parent / "held-back.safetensors")
    return entry["file"], entry


def _restore(run, file: str, entry: dict) -> None:
    (run.parent.parent / "held-back.safetensors").rename(run / file)
    doc = json.loads((run / "lora_run.json").read_text())
    doc["checkpoints"].append(entry)
    (run / "lora_run.json").write_text(json.dumps(doc))


def _statuses(config, keys_by_asset: dict[str, list[str]]) -> dict[tuple[str, str], str]:
    from assets import build_definitions
    from assets.staleness import stale_resolver
    from lora_pipeline.instance import prepare_dagster_home

    graph = build_definitions(config=config).resolve_asset_graph()
    with dg.DagsterInstance.from_config(str(prepare_dagster_home(config))) as inst:
        resolver = stale_resolver(inst, graph)
        return {(a, p): resolver.get_status(dg.AssetKey(a), p).value for a, ps in keys_by_asset.items() for p in ps}


def _done(summary) -> set[tuple[str, str]]:
    return {(o.asset, o.partition) for o in summary.materialized}


CKPT_ASSETS = ("lora_checkpoint", "eval_renders", "checkpoint_report")


def test_new_run_and_new_checkpoint_touch_only_their_own_partitions(workspace, tmp_path):
    from assets.launch import materialize
    from tests.evaluate.test_automation import _tick

    config, first = workspace
    runs = config.root / "runs"
    original = tmp_path / "original"
    shutil.copytree(runs / first, original)
    file, entry = _drop_last_checkpoint(runs / first, keep=2)
    s1 = materialize(config)
    assert not s1.failed
    old = [checkpoint_partition_key(first, f"step-0000000{s}") for s in (2, 4)]
    assert set(s1.checkpoints) == set(old)

    # A second run arrives: exactly its partitions are materialized, and they say they are new.
    shutil.copytree(original, runs / "run-second")
    s2 = materialize(config)
    new = [checkpoint_partition_key("run-second", f"step-0000000{s}") for s in (2, 4, 6)]
    assert not s2.failed
    assert _done(s2) == {("training_run", "run-second"), ("run_report", "run-second")} | {
        (a, k) for a in CKPT_ASSETS for k in new}, s2.lines()
    assert {o.reason for o in s2.materialized if o.asset == "lora_checkpoint"} == {"new"}
    before = {k: v for k, v in _statuses(config, {a: old for a in CKPT_ASSETS}).items()}
    assert set(before.values()) == {"FRESH"}, before  # Dagster itself: nothing of the first run is stale
    assert _statuses(config, {"run_report": [first], "training_run": [first]}) == {
        ("run_report", first): "FRESH", ("training_run", first): "FRESH"}
    from lora_pipeline.instance import prepare_dagster_home

    with dg.DagsterInstance.from_config(str(prepare_dagster_home(config))) as inst:
        for kind in ("run", "checkpoint"):
            assert _tick(config, inst, kind).run_requests == []  # the schedules see nothing to redo

    # The first run saves one more checkpoint: that checkpoint's partitions, the run (ingested again,
    # same facts) and the run's report; its two older checkpoints stay fresh and are not redone.
    _restore(runs / first, file, entry)
    s3 = materialize(config)
    added = checkpoint_partition_key(first, "step-00000006")
    assert not s3.failed
    assert _done(s3) == {("training_run", first), ("run_report", first)} | {(a, added) for a in CKPT_ASSETS}, \
        s3.lines()
    assert set(_statuses(config, {a: old + new for a in CKPT_ASSETS}).values()) == {"FRESH"}
    report = next(o for o in s3.materialized if o.asset == "run_report")
    assert report.reason.startswith("stale: checkpoint_report[") and added in report.reason, report.reason

    # Nothing changed: nothing is materialized.
    s4 = materialize(config)
    assert _done(s4) == set() and not s4.failed
