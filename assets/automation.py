"""Re-evaluation after changes: the `reevaluate_stale_*` schedules (running by default).

New runs and checkpoints are the sensor's business (assets/training.py); this schedule looks after
what was evaluated before and is now out of date:

- a dataset folder whose content differs from its latest snapshot -> `dataset_snapshot[<dataset>]`
  (which makes the runs trained on it stale in turn);
- a run or checkpoint partition that Dagster itself reports STALE: the eval spec, quality thresholds
  or runtime changed (`eval_renders`' code version follows them), or an upstream data version moved
  (a new snapshot, a re-ingested run) -> its assets and everything after them in that partition.

Missing partitions are never requested here, nor assets with an automation condition (run_report:
its own sensor requests it after its checkpoint reports). Run keys name the partition and the
materialization that went stale, and a key that already has a run (queued, running or done) is not
requested again: Dagster dedupes a schedule's run keys only within one tick, so without this a
re-evaluation still queued from the last tick would be requested on every tick. A later change gets
a new key; a failed run's key is requested again.
A schedule targets one job and a job one partitions definition, so there are three schedules over
one function: datasets, runs and checkpoints.
"""

from __future__ import annotations

import hashlib
import os

import dagster as dg

from assets.partitions import CHECKPOINTS_NAME, TRAINING_RUNS
from assets.staleness import partitioned_by, stale_resolver
from lora_pipeline.config import Config

SCHEDULE_NAME = "reevaluate_stale"
# Every 30 minutes; LORA_PIPELINE_REEVALUATE_CRON overrides it (the daemon tests tick every minute).
CRON = os.environ.get("LORA_PIPELINE_REEVALUATE_CRON", "*/30 * * * *")
KINDS = ("dataset", "run", "checkpoint")


def _key(partition: str, keys: list[dg.AssetKey], instance: dg.DagsterInstance) -> str:
    """Partition + the latest materialization of each key: the same stale state gives the same key."""
    h = hashlib.sha256(partition.encode())
    for k in keys:
        rec = instance.get_latest_data_version_record(k, partition_key=partition)
        h.update(f"{k.to_user_string()}={rec.storage_id if rec else None};".encode())
    return f"{SCHEDULE_NAME}:{partition}:{h.hexdigest()[:16]}"


def _stale_in_partition(resolver, graph, keys: list[dg.AssetKey], partition: str,
                        instance: dg.DagsterInstance) -> list[dg.AssetKey]:
    from dagster._core.definitions.data_version import StaleStatus

    need: list[dg.AssetKey] = []
    for k in keys:
        if instance.get_latest_data_version_record(k, partition_key=partition) is None:
            if any(u in need for u in graph.get(k).parent_keys):
                need.append(k)
            continue  # never materialized: the sensor's business
        if resolver.get_status(k, partition) == StaleStatus.STALE or any(u in need for u in graph.get(k).parent_keys):
            need.append(k)
    return need


def stale_run_requests(config: Config, instance: dg.DagsterInstance, graph) -> list[dg.RunRequest]:
    """The run requests for everything evaluated before and out of date now (module docstring)."""
    from lora_pipeline.dataset.layout import DatasetError
    from lora_pipeline.dataset.snapshot import latest_snapshot, source_fingerprint

    requests: list[dg.RunRequest] = []
    snapshot_key = dg.AssetKey("dataset_snapshot")
    for name, ds in sorted(config.datasets.items()):
        snap = latest_snapshot(config.storage, name)
        if snap is None:
            continue  # never snapshotted: the first snapshot is the launcher's or the user's
        try:
            now = source_fingerprint(config.storage, name, ds.path)
        except DatasetError:
            continue
        if now != snap.snapshot_id:
            requests.append(dg.RunRequest(run_key=f"{SCHEDULE_NAME}:dataset:{name}:{now}", partition_key=name,
                                          asset_selection=[snapshot_key], tags={"lora_pipeline/why": "dataset stale"}))
    resolver = stale_resolver(instance, graph)
    for pd_name, kind in ((TRAINING_RUNS.name, "run"), (CHECKPOINTS_NAME, "checkpoint")):
        # An asset with an automation condition (run_report) is its sensor's business, not this schedule's.
        keys = [k for k in partitioned_by(graph, pd_name) if graph.get(k).automation_condition is None]
        if not keys:
            continue
        # Only partitions materialized before can be stale; the checkpoint space (runs x checkpoint
        # ids) also holds combinations no run has, which are never requested.
        for partition in sorted(instance.get_materialized_partitions(keys[0])):
            need = _stale_in_partition(resolver, graph, keys, partition, instance)
            if need:
                requests.append(dg.RunRequest(run_key=_key(partition, need, instance), partition_key=partition,
                                              asset_selection=need, tags={"lora_pipeline/why": f"{kind} stale"}))
    return [r for r in requests if not _requested(instance, r.run_key)]


def _requested(instance: dg.DagsterInstance, run_key: str) -> bool:
    """A run with this key exists and did not fail: Dagster dedupes a schedule's run keys only within one
    tick (with its scheduled time), so work still queued from an earlier tick would be requested again."""
    live = [s for s in dg.DagsterRunStatus if s not in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)]
    return bool(instance.get_run_records(dg.RunsFilter(tags={"dagster/run_key": run_key}, statuses=live), limit=1))


def definitions(config: Config) -> dg.Definitions:
    dataset_job = dg.define_asset_job("dataset_snapshot_job", selection=dg.AssetSelection.assets("dataset_snapshot"))
    run_job = dg.define_asset_job("run_assets_job", selection=dg.AssetSelection.assets("training_run", "run_report"))
    targets = {"dataset": {"job": dataset_job}, "run": {"job": run_job}, "checkpoint": {"job_name": "checkpoint_job"}}

    def build(kind: str) -> dg.ScheduleDefinition:
        def execution_fn(context: dg.ScheduleEvaluationContext):
            graph = context.repository_def.asset_graph
            requests = [r for r in stale_run_requests(config, context.instance, graph)
                        if r.tags.get("lora_pipeline/why") == f"{kind} stale"]
            if not requests:
                yield dg.SkipReason(f"no evaluated {kind} is out of date")
            yield from requests

        return dg.ScheduleDefinition(
            name=f"{SCHEDULE_NAME}_{kind}s", cron_schedule=CRON, execution_fn=execution_fn,
            default_status=dg.DefaultScheduleStatus.RUNNING, **targets[kind],
            description=f"Re-materialize every {kind} partition evaluated before and out of date now "
                        "(dataset folder changed, eval spec or runtime changed, upstream changed).")

    return dg.Definitions(jobs=[dataset_job, run_job], schedules=[build(k) for k in KINDS])
