"""Partitions shared across the asset graph, in one place.

- datasets: one static partition per configured dataset (names come from the config);
- training_runs: one dynamic partition per run (key = run_id, CONTRACT section 3);
- checkpoints: two dimensions, run (the same dynamic training_runs) x checkpoint (dynamic checkpoint
  ids); key `<checkpoint_id>|<run_id>` (lora_pipeline.storage.checkpoint_partition_key).

Why two dimensions (docs/architecture.md, "Staleness"): an asset on checkpoints depends on exactly its
own run's partition through `TO_RUN` (MultiToSingleDimensionPartitionMapping on "run"), and a run's
report on exactly that run's checkpoints. A one-dimensional checkpoint key can only reach the runs
through AllPartitionMapping (Dagster has no prefix mapping), which made every checkpoint of every run
stale whenever any run was added. The price: the partition space is runs x checkpoint ids, so a
combination no run has (run A never saved step-700) shows as missing; nothing requests it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import dagster as dg

from lora_pipeline.config import Config
from lora_pipeline.storage import split_checkpoint_partition_key

TRAINING_RUNS = dg.DynamicPartitionsDefinition(name="training_runs")
CHECKPOINT_IDS = dg.DynamicPartitionsDefinition(name="checkpoint_ids")
CHECKPOINTS = dg.MultiPartitionsDefinition({"run": TRAINING_RUNS, "checkpoint": CHECKPOINT_IDS})
CHECKPOINTS_NAME = "checkpoints"  # what launch/automation call the checkpoint partitions (not a Dagster name)
# A checkpoint-partitioned asset -> its run's partition; a run-partitioned asset -> that run's checkpoints.
with warnings.catch_warnings():  # beta in 1.13; the public API for exactly this edge
    warnings.simplefilter("ignore", dg.BetaWarning)
    TO_RUN = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="run")


def partitions_kind(pd: dg.PartitionsDefinition | None) -> str | None:
    """'training_runs' or 'checkpoints' for the two dynamic partitionings; None otherwise."""
    if isinstance(pd, dg.MultiPartitionsDefinition):
        return CHECKPOINTS_NAME
    return pd.name if isinstance(pd, dg.DynamicPartitionsDefinition) else None


def dimension_keys(keys: Iterable[str]) -> tuple[list[str], list[str]]:
    """(run ids, checkpoint ids) that the checkpoint partition `keys` need, each once, in order."""
    pairs = [split_checkpoint_partition_key(k) for k in keys]
    return list(dict.fromkeys(r for r, _ in pairs)), list(dict.fromkeys(c for _, c in pairs))


def has_checkpoint_partition(instance: dg.DagsterInstance, key: str) -> bool:
    run_id, checkpoint_id = split_checkpoint_partition_key(key)
    return (instance.has_dynamic_partition(TRAINING_RUNS.name, run_id)
            and instance.has_dynamic_partition(CHECKPOINT_IDS.name, checkpoint_id))


def checkpoint_add_requests(instance: dg.DagsterInstance, keys: Iterable[str]) -> list:
    """The sensor's AddDynamicPartitionsRequests for the checkpoint partition `keys` (both dimensions)."""
    runs, ids = dimension_keys(keys)
    runs = [r for r in runs if not instance.has_dynamic_partition(TRAINING_RUNS.name, r)]
    ids = [c for c in ids if not instance.has_dynamic_partition(CHECKPOINT_IDS.name, c)]
    return ([TRAINING_RUNS.build_add_request(runs)] if runs else []) + (
        [CHECKPOINT_IDS.build_add_request(ids)] if ids else [])


def dataset_partitions(config: Config) -> dg.StaticPartitionsDefinition:
    # Dagster refuses an empty static partition set; a config without datasets gets a placeholder
    # partition that the dataset assets report as "no dataset configured".
    return dg.StaticPartitionsDefinition(sorted(config.datasets) or ["__none__"])


def add_checkpoint_partitions(instance: dg.DagsterInstance, keys: Iterable[str]) -> None:
    """Add both dimensions of the checkpoint partition `keys` to the instance (idempotent)."""
    for req in checkpoint_add_requests(instance, list(keys)):
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
