"""`lora-pipeline backfill [--run ID]... [--checkpoint ID]... [--dry-run]`: queue a Dagster backfill
of `checkpoint_job` over the selected checkpoints, on the instance the CLI and the UI use.

It runs Dagster's own `dagster job backfill -w <workspace> -j checkpoint_job --partitions ... --noprompt`
with DAGSTER_HOME, the config and the workspace set (lora_pipeline/commands/_dagster_env.py) and prints
that command, so the same backfill can be written by hand after `eval "$(lora-pipeline env)"`. The
partition keys come from lora_pipeline.storage (never typed by hand); their partitions are added to the
instance first. The runs are queued: a Dagster daemon runs them (`lora-pipeline ui` starts one; its
Backfills page shows the progress). `lora-pipeline evaluate --run ID --all` does the same work now, in
this process, instead.

Selection: complete checkpoint files of ingested runs (lora_pipeline.training.scan, as the sensor sees
them); no option = every run. Exit 0 when queued (or printed with --dry-run); 2 for an unknown run or
checkpoint, a run not ingested yet or nothing to backfill; 1 when Dagster refused the backfill (its
last error line).
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", metavar="ID", action="append", default=[], help="only this run (repeatable)")
    p.add_argument("--checkpoint", metavar="ID", action="append", default=[],
                   help="only this checkpoint id (e.g. step-00000500); repeatable")
    p.add_argument("--dry-run", action="store_true", help="print the partitions and the dagster command only")


def select(config, run_ids: list[str], checkpoint_ids: list[str]) -> list[str]:
    """The checkpoint partition keys to backfill (module docstring); UsageError with one line otherwise."""
    from lora_pipeline.cli import UsageError
    from lora_pipeline.storage import Storage, split_checkpoint_partition_key
    from lora_pipeline.training.scan import scan_runs

    scans = scan_runs(config)
    known = {s.run_id: s for s in scans}
    for r in run_ids:
        if r not in known:
            raise UsageError(f"--run {r}: no such run under {config.training_runs} "
                             f"(runs found: {', '.join(sorted(known)) or 'none'})")
    chosen = [known[r] for r in dict.fromkeys(run_ids)] if run_ids else scans
    storage = Storage(config.storage)
    for s in chosen:
        if not storage.run_record(s.run_id).is_file():
            raise UsageError(f"run {s.run_id}: not ingested yet ({storage.run_record(s.run_id)} missing): "
                             f"run `lora-pipeline evaluate --run {s.run_id}` (it ingests and evaluates), "
                             "or let the UI's training_runs_sensor pick it up")
    keys = [c.partition_key for s in chosen for c in s.checkpoints]
    if checkpoint_ids:
        have = {split_checkpoint_partition_key(k)[1]: k for k in keys}
        lost = [c for c in checkpoint_ids if c not in have]
        if lost:
            raise UsageError(f"--checkpoint {lost[0]}: no such complete checkpoint in the selected run(s) "
                             f"(known: {', '.join(sorted(have)) or 'none'})")
        keys = [k for k in keys if split_checkpoint_partition_key(k)[1] in checkpoint_ids]
    if not keys:
        raise UsageError(f"nothing to backfill: no complete checkpoint file under {config.training_runs}")
    return keys


def run(args: argparse.Namespace) -> int:
    import shlex
    import subprocess
    import sys

    from lora_pipeline.cli import WorkFailed
    from lora_pipeline.commands._dagster_env import WORKSPACE_ENV, child_env
    from lora_pipeline.config import load_config

    config = load_config(args.config)
    keys = select(config, args.run, args.checkpoint)
    from assets.training import CHECKPOINT_JOB

    env = child_env(config)
    tail = ["-j", CHECKPOINT_JOB, "--partitions", ",".join(keys), "--noprompt"]
    shown = "dagster job backfill -w \"$LORA_PIPELINE_WORKSPACE\" " + " ".join(shlex.quote(a) for a in tail)
    print(f"{len(keys)} checkpoint partition(s): {', '.join(keys)}")
    print(f"as a dagster command: eval \"$(lora-pipeline env)\" && {shown}")
    if args.dry_run:
        return 0
    from pathlib import Path

    from assets.launch_guard import open_instance
    from assets.partitions import add_checkpoint_partitions

    instance = open_instance(Path(env["DAGSTER_HOME"]))
    try:
        add_checkpoint_partitions(instance, keys)
    finally:
        instance.dispose()
    cmd = [sys.executable, "-m", "dagster", "job", "backfill", "-w", env[WORKSPACE_ENV], *tail]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        last = next((ln.strip() for ln in reversed((proc.stderr or proc.stdout).splitlines()) if ln.strip()),
                    f"exit status {proc.returncode}")
        raise WorkFailed(f"dagster job backfill failed: {last[:300]}")
    launched = next((ln.strip() for ln in proc.stdout.splitlines() if ln.startswith("Launched backfill")), "")
    print(f"queued: {launched or 'backfill submitted'} on instance {env['DAGSTER_HOME']}")
    print("its runs wait for a Dagster daemon on this instance: `lora-pipeline ui` starts one (Backfills page); "
          "`lora-pipeline evaluate --all` does the same work now, in this process")
    return 0
