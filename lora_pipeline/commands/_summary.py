"""What `lora-pipeline evaluate` prints when the launch is done (stdout), after the progress bar:

    dataset products    up to date
    run     chairs-r32  new
    <table> run | checkpoint | this launch | verdict | main finding
            this launch: new | stale: <why> | up to date | FAILED <asset>: <why>   (assets/launch.py Outcome)
            verdict: the report's, with the latest review beside it (`ok, REJECTED by ana`)
            main finding: the finding that decides the verdict (else the most severe), + how many more
    run <id>: run verdict <v>; best checkpoint <id> | none (...)
      report <storage>/reports/<run>/report.html (checkpoint reports: <checkpoint>/report.html beside it)
    verdicts: ... (what a run verdict is next to a checkpoint verdict)
    next: lora-pipeline diagnose --run <id>   (the one command to look closer)
    <the launcher's count line: N materialized, N up to date, N failed; renders; seconds; instance>

Checkpoint partition keys are split only by lora_pipeline.storage.split_checkpoint_partition_key.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from lora_pipeline.demo_report import (
    DATASET_ASSET,
    VERDICTS_NOTE,
    Standing,
    best_text,
    failed_blocking_checks,
    main_finding,
    print_table,
    read_doc,
    top_codes,
)


def what_was(outcomes: list[Any]) -> str:
    """What the launch did for one partition: FAILED <asset>: why | new | stale: why | up to date.
    The first materialized asset in graph order says why (the ones after it follow from it)."""
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        return f"FAILED {failed[0].asset}: {_reason(failed[0]) or 'failed'}"
    done = [o for o in outcomes if o.status == "materialized"]
    if done:
        return _reason(done[0]) or "materialized"
    return "up to date" if outcomes else "not launched"


def _reason(o: Any) -> str:
    """One line; `asset[<this row's partition>]` said as `asset` (the row names the partition)."""
    text = " ".join(str(o.reason or "").split())
    return text.replace(f"[{o.partition}]", "") if o.partition else text


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def print_launch(config: Any, summary: Any, config_arg: str | None = None) -> None:
    """The evaluate summary (module docstring) on stdout."""
    from lora_pipeline.storage import Storage, split_checkpoint_partition_key

    storage = Storage(Path(config.storage))
    standing = Standing(storage.root)
    by_partition: dict[tuple[str, str | None], list[Any]] = {}
    for o in summary.outcomes:
        kind = "dataset" if o.asset == DATASET_ASSET else "checkpoint" if o.partition in summary.checkpoints \
            else "run"
        by_partition.setdefault((kind, o.partition), []).append(o)
    blocking = failed_blocking_checks(summary)
    heads = [(f"dataset {p}", what_was(os)) for (k, p), os in by_partition.items() if k == "dataset"]
    heads += [(f"run {r}", what_was([o for o in by_partition.get(("run", r), []) if o.asset == "training_run"]))
              for r in summary.runs]
    width = max((len(h) for h, _ in heads), default=0)
    for head, was in heads:
        print(f"{head.ljust(width)}  {was}")
    for (asset, partition), said in blocking.items():
        for s in said:
            print(f"  {asset}[{partition}]: {s} (the Dagster UI shows its run failed; the rest went on)")
    rows = []
    for pk in summary.checkpoints:
        run_id, ck = split_checkpoint_partition_key(pk)
        doc = read_doc(storage.checkpoint_report_dir(run_id, ck) / "report.json")
        verdict = standing.verdict(doc.get("verdict") if doc else None, run_id, ck)
        rows.append((run_id, ck, _clip(what_was(by_partition.get(("checkpoint", pk), [])), 64), verdict,
                     main_finding(doc.get("findings") or []) if doc else "-"))
    if rows:
        print()
        print_table(rows, ("run", "checkpoint", "this launch", "verdict", "main finding (e=error, w=warn, i=info)"))
    for r in summary.runs:
        run_doc = read_doc(storage.run_report_dir(r) / "report.json")
        if run_doc is None:
            print(f"run {r}: no run report yet")
            continue
        codes = top_codes(run_doc.get("findings") or [], n=4)
        print(f"run {r}: run verdict {run_doc.get('verdict')}; {best_text(run_doc, standing)}"
              f"{'; ' + ' '.join(codes) if codes else ''}")
        print(f"  report {storage.run_report_dir(r) / 'report.html'} "
              "(checkpoint reports: <checkpoint>/report.html beside it)")
    if rows:
        print(VERDICTS_NOTE)
    print(f"next: {next_command(summary, rows, config_arg)}")


def next_command(summary: Any, rows: list[tuple[str, ...]], config_arg: str | None) -> str:
    cfg = f" --config {shlex.quote(config_arg)}" if config_arg else ""
    if summary.failed:
        return (f"fix what the FAILED line(s) name, then `lora-pipeline evaluate{cfg}` again "
                "(only what failed or went stale is redone)")
    if not summary.runs:
        return "no training run found: put run folders under `training_runs` (CONTRACT section 1)"
    runs = sorted({r[0] for r in rows}) or list(summary.runs)
    run = f" --run {shlex.quote(runs[0])}" if len(runs) == 1 else ""
    return f"lora-pipeline diagnose{run}{cfg}   # every finding with its fix; or open the run report above"
