"""`lora-pipeline env`: print, as POSIX shell `export` lines, what the `dagster` CLI needs to work on
the instance this CLI uses: DAGSTER_HOME, the config (LORA_PIPELINE_CONFIG, or LORA_PIPELINE_DEMO_DIR
for the embedded demo config) and LORA_PIPELINE_WORKSPACE (a workspace.yaml usable from any folder).

    eval "$(lora-pipeline env)"
    dagster job list -w "$LORA_PIPELINE_WORKSPACE"

Exit 0; exit 2 with one line for a bad config."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    del p  # no options besides --config


def run(args: argparse.Namespace) -> int:
    import shlex

    from lora_pipeline.commands._dagster_env import dagster_env
    from lora_pipeline.config import load_config

    config = load_config(args.config)
    print(f"# the Dagster instance of {config.source_label}")
    for key, value in dagster_env(config).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0
