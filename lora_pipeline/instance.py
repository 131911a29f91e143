"""Where the Dagster instance lives: `DAGSTER_HOME` inside the workspace, shared by CLI and UI.

Plain files only (no Dagster import): the shipped dagster.yaml limits the `gpu` pool to one step
at a time, so renders never compete for one device, and turns on Dagster's run monitoring for when a
daemon runs on this instance (`lora-pipeline ui`): it fails runs stuck starting or cancelling and
frees the pool slots of runs that ended. The CLI runs no daemon; every launch checks for runs whose
process is gone itself (assets/run_health.py). A dagster.yaml exactly as an earlier version wrote it
is brought up to date; one edited by hand is left alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from lora_pipeline.config import Config
from lora_pipeline.fsutil import atomic_write_text

_V1 = """\
# Written by lora-pipeline. Local sqlite storage inside the workspace; see deploy/ for Postgres.
concurrency:
  pools:
    default_limit: 1   # the `gpu` pool: one render step at a time per instance
telemetry:
  enabled: false
"""
DAGSTER_YAML = _V1 + """\
# With a daemon (lora-pipeline ui): runs stuck starting/cancelling are failed, and the pool slots of
# runs that ended are freed. Without one, each `lora-pipeline evaluate` closes runs whose process is gone.
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  poll_interval_seconds: 30
  free_slots_after_run_end_seconds: 30
"""
_EARLIER = (_V1,)


def prepare_dagster_home(config: Config) -> Path:
    """The instance folder for this config (DAGSTER_HOME if set, else `<workspace>/.dagster`)."""
    home = Path(os.environ["DAGSTER_HOME"]) if os.environ.get("DAGSTER_HOME") else config.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    yaml_file = home / "dagster.yaml"
    try:
        current = yaml_file.read_text()
    except FileNotFoundError:
        current = None
    if current is None or current in _EARLIER:
        atomic_write_text(yaml_file, DAGSTER_YAML)
    return home.resolve()
