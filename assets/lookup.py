"""Read-only look-ups in the Dagster instance for the core's walks (trace): which Dagster run
materialized an asset partition last. Kept here so that lora_pipeline/ never imports Dagster."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from lora_pipeline.config import Config


def latest_run_lookup(config: Config) -> Callable[[str, str], str | None]:
    """(asset, partition) -> run id of its latest materialization in the workspace's instance."""
    home = Path(os.environ["DAGSTER_HOME"]) if os.environ.get("DAGSTER_HOME") else config.dagster_home
    if not (home / "dagster.yaml").is_file():
        return lambda _asset, _partition: None
    try:
        instance = dg.DagsterInstance.from_config(str(home))
    except Exception:  # noqa: BLE001 - no usable instance: the walk still works without run ids
        return lambda _asset, _partition: None

    def lookup(asset: str, partition: str) -> str | None:
        try:
            res = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1)
        except Exception:  # noqa: BLE001
            return None
        return res.records[0].run_id if res.records else None

    return lookup
