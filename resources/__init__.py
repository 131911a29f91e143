"""Dagster resources: configuration, storage and the diffusion runtime, built from the one config."""

from __future__ import annotations

from typing import Any

from lora_pipeline.config import Config


def build_resources(config: Config) -> dict[str, Any]:
    from resources.diffusion_runtime import DiffusionRuntime
    from resources.settings import PipelineSettings

    return {"settings": PipelineSettings(config_path=str(config.source) if config.source else "",
                                         config_json=config.to_json()),
            "diffusion_runtime": DiffusionRuntime(device=config.runtime.device, dtype=config.runtime.dtype)}
