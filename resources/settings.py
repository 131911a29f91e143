"""`PipelineSettings`: hands every step the one typed config (lora_pipeline.config.Config)."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from lora_pipeline.config import Config, load_config


class PipelineSettings(dg.ConfigurableResource):
    """The config every step uses: `config_json` (the resolved config the definitions were built
    from, so steps see exactly what the launcher or code location saw), else the file at
    `config_path`, else the usual lookup (env var, ./lora_pipeline.yaml, the demo default)."""

    config_path: str = ""
    config_json: str = ""
    _config: Config | None = PrivateAttr(default=None)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = (Config.from_json(self.config_json) if self.config_json
                            else load_config(self.config_path or None))
        return self._config
