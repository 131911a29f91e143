"""Partitions shared across the asset graph, in one place.

- datasets: one static partition per configured dataset (names come from the config);
- training_runs: one dynamic partition per run (key = run_id, CONTRACT section 3);
- checkpoints: one dynamic partition per checkpoint (key = `<run_id>~<checkpoint_id>`, see
  lora_pipeline.storage.checkpoint_partition_key).
"""

from __future__ import annotations

import dagster as dg

from lora_pipeline.config import Config

TRAINING_RUNS = dg.DynamicPartitionsDefinition(name="training_runs")
CHECKPOINTS = dg.DynamicPartitionsDefinition(name="checkpoints")


def dataset_partitions(config: Config) -> dg.StaticPartitionsDefinition:
    # Dagster refuses an empty static partition set; a config without datasets gets a placeholder
    # partition that the dataset assets report as "no dataset configured".
    return dg.StaticPartitionsDefinition(sorted(config.datasets) or ["__none__"])
