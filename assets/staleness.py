"""What is missing or stale, asked of Dagster's own stale-status resolver: one place for the launcher
(assets/launch.py) and the re-evaluation schedules (assets/automation.py)."""

from __future__ import annotations

import dagster as dg

from assets.partitions import partitions_kind


def partitioned_by(graph, name: str) -> list[dg.AssetKey]:
    """Materializable assets on `name` ('training_runs' or 'checkpoints', assets/partitions.py), in
    graph order."""
    return [k for k in graph.toposorted_asset_keys
            if graph.get(k).is_materializable and partitions_kind(graph.get(k).partitions_def) == name]


def stale_resolver(instance: dg.DagsterInstance, graph):
    """Dagster's own stale-status resolver over `graph`, as of now."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._time import get_current_datetime

    view = AssetGraphView(temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
                          instance=instance, asset_graph=graph)
    return CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)


def stale_cause(resolver, key: dg.AssetKey, partition: str) -> str:
    """Dagster's first stale cause in words: "stale: eval_renders has a new code version",
    "stale: training_run[r1] has a new data version"."""
    causes = resolver.get_stale_causes(key, partition)
    if not causes:
        return "stale"
    c = causes[0]
    where = c.asset_key.to_user_string() + (f"[{c.partition_key}]" if c.partition_key else "")
    return f"stale: {where} {c.reason}"
