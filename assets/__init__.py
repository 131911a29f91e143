"""The Dagster layer: assets grouped by domain (dataset, training, evaluation, reports).

Each domain module exposes `definitions(config) -> dg.Definitions`; `build_definitions` merges them
with the shared resources. The domain logic lives in `lora_pipeline/`; these modules only call it.
"""

from __future__ import annotations

import dagster as dg

from lora_pipeline.config import Config, load_config

# Domain modules, in graph order. Each has `definitions(config) -> dg.Definitions`; a module not
# written yet is skipped, so the code location always loads what exists.
DOMAIN_MODULES: list[str] = ["dataset", "training", "evaluation", "reports", "automation"]


def build_definitions(config_path: str | None = None, config: Config | None = None) -> dg.Definitions:
    import importlib

    from lora_pipeline.dataset.guard import protect_workspace
    from resources import build_resources

    config = config if config is not None else load_config(config_path)
    protect_workspace(config)  # its storage, runs and Dagster home are never part of a dataset
    parts = []
    for name in DOMAIN_MODULES:
        try:
            module = importlib.import_module(f"assets.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"assets.{name}":
                raise
            continue
        parts.append(module.definitions(config))
    return dg.Definitions.merge(*parts, dg.Definitions(resources=build_resources(config)))
