"""`PipelineSettings`: hands every step the one typed config (lora_pipeline.config.Config)."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from lora_pipeline.config import Config, load_config


class PipelineSettings(dg.ConfigurableResource):
    """The config file path ('' = the usual lookup: env var, ./lora_pipeline.yaml, demo default)."""

    config_path: str = ""
    _config: Config | None = PrivateAttr(default=None)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path or None)
        return self._config
