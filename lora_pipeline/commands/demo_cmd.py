"""`lora-pipeline demo`: build the demo workspace, run the asset graph on it, print the verdicts."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", help="demo workspace folder (default: $LORA_PIPELINE_DEMO_DIR or ~/.lora_pipeline/demo)")


def run(args: argparse.Namespace) -> int:
    import os

    from tqdm import tqdm

    from lora_pipeline.config import DEMO_DIR_ENV, load_config

    if args.dir:
        os.environ[DEMO_DIR_ENV] = os.path.abspath(args.dir)
    # The demo always runs on the embedded default config (CONTRACT section 1), whatever is in cwd.
    os.environ.pop("LORA_PIPELINE_CONFIG", None)
    config = load_config(args.config)
    print(f"demo workspace: {config.root} (config: {config.source_label})", flush=True)

    import torch

    # One thread: as fast as two for these toy models on an idle 2-core machine (measured), and several
    # times faster when other work shares the cores (two threads then wait on each other).
    torch.set_num_threads(1)

    from lora_pipeline.demo import build_demo_workspace

    bars: dict[str, tqdm] = {}

    def progress(name: str, step: int, total: int) -> None:
        bar = bars.get(name) or bars.setdefault(name, tqdm(total=total, desc=f"train {name}", unit="step"))
        bar.update(1)
        if step == total:
            bar.close()

    import time

    timings = build_demo_workspace(config, log=lambda m: print(m, flush=True), progress=progress)
    training = sum(v for k, v in timings.items() if k.startswith("train "))
    print(f"demo: workspace ready: toy models {timings['bases']:.0f} s, datasets {timings['datasets']:.0f} s, "
          f"toy training {training:.0f} s (0 s: reused)", flush=True)

    import sys

    from assets.launch import materialize
    from lora_pipeline.cli import WorkFailed
    from lora_pipeline.commands._progress import launch_progress
    from lora_pipeline.demo_report import print_summary

    print("demo: running the asset graph through Dagster (dataset -> training -> evaluation -> reports)",
          flush=True)
    started = time.time()
    with launch_progress("pipeline") as step:
        summary = materialize(config, progress=step)
    pipeline_s = time.time() - started
    lines = summary.lines()
    print_summary(config.storage, summary)
    from lora_pipeline.demo import why_lines

    print("\n" + "\n".join(why_lines(config.storage)))
    print(f"\n{lines[0]}")
    for line in lines[1:]:
        print(line, file=sys.stderr)
    print(f"demo: pipeline {pipeline_s:.0f} s (dataset -> training -> evaluation -> reports)")
    print(f"Dagster instance: {summary.dagster_home} (browse it with `make ui`)")
    if summary.failed:
        raise WorkFailed(f"{len(summary.failed)} partition(s) failed; see above")
    return 0
