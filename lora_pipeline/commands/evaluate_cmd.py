"""`lora-pipeline evaluate [--run ID]... [--checkpoint ID]... [--all]`: discover datasets, runs and
checkpoints and materialize what is missing or stale for them, through Dagster, in the instance the
UI reads (assets/launch.py).

It then says what it did (stdout, lora_pipeline/commands/_summary.py): per checkpoint what this launch
did (new, stale with the reason, up to date, FAILED with the reason), the verdict (with the latest
review beside it) and the main finding; per run the run verdict, the best checkpoint and the report
path; and the one next command to look closer. Exit 0 when every partition materialized or was up to
date (findings are not failures); exit 1 with the same summary and one line per failed partition (its
root cause, on stderr) otherwise; exit 2 for an unknown run or checkpoint; 130 / 143 on Ctrl-C /
SIGTERM, at once, even while waiting. Waits (another launch holds the instance, a pool slot is taken)
and lost runs closed are said once each, on stderr, as they happen."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", metavar="ID", action="append", default=[], help="only this run (repeatable)")
    p.add_argument("--checkpoint", metavar="ID", action="append", default=[],
                   help="only this checkpoint: its id (step-00000500) or partition key (step-...|run); repeatable")
    p.add_argument("--all", action="store_true",
                   help="materialize everything selected again, not only what is missing or stale "
                        "(renders still come from the render cache when unchanged)")


def run(args: argparse.Namespace) -> int:
    import sys

    from lora_pipeline.cli import UsageError, WorkFailed
    from lora_pipeline.commands._progress import launch_progress
    from lora_pipeline.config import load_config

    config = load_config(args.config)
    from tqdm import tqdm

    from assets.launch import LaunchError, materialize

    def say(line: str) -> None:  # above the progress bar, which then redraws
        tqdm.write(line, file=sys.stderr)

    with launch_progress("evaluate") as progress:
        try:
            summary = materialize(config, run_ids=args.run, checkpoint_ids=args.checkpoint,
                                  include_all=args.all, progress=progress, say=say)
        except LaunchError as e:
            raise UsageError(str(e)) from None
    from lora_pipeline.commands._summary import print_launch

    lines = summary.lines()
    print_launch(config, summary, config_arg=args.config)
    sys.stdout.flush()
    for line in lines[1:]:
        print(line, file=sys.stderr)
    if summary.failed:
        raise WorkFailed(lines[0])
    print(lines[0])
    return 0

