"""The environment the `dagster` CLI and UI need to work on the instance the `lora-pipeline` CLI uses
(shared by `ui`, `env` and `backfill`):

- `DAGSTER_HOME`: the instance folder (lora_pipeline.instance.prepare_dagster_home: DAGSTER_HOME if
  set, else `<workspace>/.dagster`), its dagster.yaml written when missing;
- `LORA_PIPELINE_CONFIG`: the config file, so the code location reads the same config whatever its
  working directory (for the embedded demo config: `LORA_PIPELINE_DEMO_DIR`, the demo workspace);
- `LORA_PIPELINE_WORKSPACE`: a workspace.yaml inside DAGSTER_HOME like the repository's (same code
  location name), usable from any folder (`dagster ... -w "$LORA_PIPELINE_WORKSPACE"`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

WORKSPACE_ENV = "LORA_PIPELINE_WORKSPACE"


def dagster_env(config: Any) -> dict[str, str]:
    """The variables above for `config` (files written as needed), in the order they are printed."""
    from lora_pipeline.config import CONFIG_ENV, DEMO_DIR_ENV
    from lora_pipeline.instance import prepare_dagster_home

    home = prepare_dagster_home(config)
    out = {"DAGSTER_HOME": str(home)}
    if config.source:
        out[CONFIG_ENV] = str(config.source)
    else:
        out[DEMO_DIR_ENV] = str(config.root)
    out[WORKSPACE_ENV] = str(workspace_file(home))
    return out


def child_env(config: Any) -> dict[str, str]:
    """os.environ with `dagster_env(config)` applied (a demo config drops a stray LORA_PIPELINE_CONFIG)."""
    from lora_pipeline.config import CONFIG_ENV

    env = dict(os.environ)
    if not config.source:
        env.pop(CONFIG_ENV, None)
    env.update(dagster_env(config))
    return env


def workspace_file(home: Path) -> Path:
    """A workspace.yaml like the repo's (same location name), usable from any folder."""
    import lora_pipeline
    from lora_pipeline.fsutil import atomic_write_text

    repo = Path(lora_pipeline.__file__).resolve().parents[1]
    text = ("load_from:\n  - python_module:\n      module_name: lora_pipeline.definitions\n"
            f"      attribute: defs\n      working_directory: {repo}\n      location_name: lora_pipeline\n")
    path = home / "workspace.yaml"
    try:
        if path.read_text("utf-8") == text:
            return path
    except OSError:
        pass
    return atomic_write_text(path, text)
