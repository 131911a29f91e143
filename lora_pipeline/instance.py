"""Where the Dagster instance lives: `DAGSTER_HOME` inside the workspace, shared by CLI and UI.

Plain files only (no Dagster import): the shipped dagster.yaml limits the `gpu` pool to one step
at a time, so renders never compete for one device.
"""

from __future__ import annotations

import os
from pathlib import Path

from lora_pipeline.config import Config
from lora_pipeline.fsutil import atomic_write_text

DAGSTER_YAML = """\
# Written by lora-pipeline. Local sqlite storage inside the workspace; see deploy/ for Postgres.
concurrency:
  pools:
    default_limit: 1   # the `gpu` pool: one render step at a time per instance
telemetry:
  enabled: false
"""


def prepare_dagster_home(config: Config) -> Path:
    """The instance folder for this config (DAGSTER_HOME if set, else `<workspace>/.dagster`)."""
    home = Path(os.environ["DAGSTER_HOME"]) if os.environ.get("DAGSTER_HOME") else config.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        atomic_write_text(home / "dagster.yaml", DAGSTER_YAML)
    return home.resolve()
