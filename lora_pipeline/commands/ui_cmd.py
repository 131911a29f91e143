"""`lora-pipeline ui`: the Dagster UI on 127.0.0.1, on the same instance the CLI uses."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=3000)


def run(args: argparse.Namespace) -> int:
    from lora_pipeline.config import CONFIG_ENV, load_config
    from lora_pipeline.instance import prepare_dagster_home

    config = load_config(args.config)
    env = dict(os.environ)
    env["DAGSTER_HOME"] = str(prepare_dagster_home(config))
    if config.source:
        env[CONFIG_ENV] = str(config.source)  # the code location must read the same config
    workspace = _workspace_file(Path(env["DAGSTER_HOME"]))
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "-h", args.host, "-p", str(args.port)]
    print(f"Dagster UI on http://{args.host}:{args.port} (DAGSTER_HOME={env['DAGSTER_HOME']})", flush=True)
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached


def _workspace_file(home: Path) -> Path:
    """A workspace.yaml like the repo's (same location name), usable from any folder."""
    import lora_pipeline
    from lora_pipeline.fsutil import atomic_write_text

    repo = Path(lora_pipeline.__file__).resolve().parents[1]
    text = ("load_from:\n  - python_module:\n      module_name: lora_pipeline.definitions\n"
            f"      attribute: defs\n      working_directory: {repo}\n      location_name: lora_pipeline\n")
    return atomic_write_text(home / "workspace.yaml", text)
