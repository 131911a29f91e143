"""`lora-pipeline ui`: the Dagster UI (and its daemon) on 127.0.0.1, on the same instance the CLI uses
(lora_pipeline/commands/_dagster_env.py). It runs until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=3000)


def run(args: argparse.Namespace) -> int:
    from lora_pipeline.commands._dagster_env import WORKSPACE_ENV, child_env
    from lora_pipeline.config import load_config

    config = load_config(args.config)
    env = child_env(config)
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", env[WORKSPACE_ENV], "-h", args.host, "-p", str(args.port)]
    base = f"http://{args.host}:{args.port}"
    print(f"Dagster UI on {base} (DAGSTER_HOME={env['DAGSTER_HOME']})", flush=True)
    # The global lineage opens with every group collapsed unless the URL names them (Dagster 1.13).
    print(f"lineage, every group open: {base}/asset-groups?expanded="
          + ",".join(f"global@global:{g}" for g in ("dataset", "training", "evaluation", "reports")), flush=True)
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached
