"""`lora-pipeline review RUN [--checkpoint ID] --decision accept|reject|needs-work --note TEXT [--by NAME]`:
append one decision to storage/reviews.jsonl, whole or not at all (fsynced; the file is never rewritten).
A failed write (full disk, I/O error) exits 1 with one line naming the file and the cause; unreadable
lines already in the log (torn by a crash) are reported as a warning on stderr.

Then the reports the decision touches are written again from the files already in storage (no render,
no Dagster run): the checkpoint's report (every evaluated checkpoint's for a whole-run decision) and the
run report when there is one, so report.json / report.html say `rejected` at once and a rejected
checkpoint stops being the best. A report that cannot be rebuilt is a warning; the review stays recorded."""

from __future__ import annotations

import argparse
import json
import sys

from lora_pipeline.report.reviews import DECISIONS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", metavar="RUN", help="run id (the run folder's name, CONTRACT section 3)")
    p.add_argument("--checkpoint", metavar="ID", help="checkpoint id (e.g. step-00000500); omitted: the whole run")
    p.add_argument("--decision", required=True, choices=DECISIONS)
    p.add_argument("--note", required=True, metavar="TEXT", help="why")
    p.add_argument("--by", metavar="NAME", help="reviewer (default: the login name)")
    p.add_argument("--json", action="store_true", help="print the recorded review as one JSON document")


def run(args: argparse.Namespace) -> int:
    from lora_pipeline.cli import UsageError, WorkFailed
    from lora_pipeline.config import load_config
    from lora_pipeline.report.reviews import ReviewError, ReviewNotRecorded, append_review, read_review_log
    from lora_pipeline.storage import Storage
    from lora_pipeline.training.ingest import IngestError, load_run_record

    config = load_config(args.config)
    try:
        record = load_run_record(config.storage, args.run_id)
    except IngestError as e:
        raise UsageError(str(e)) from None
    if record is None:
        raise UsageError(f"RUN {args.run_id!r}: no such run in {Storage(config.storage).root / 'runs'} "
                         "(ingest it first, e.g. lora-pipeline evaluate)")
    if args.checkpoint and record.checkpoint(args.checkpoint) is None:
        known = ", ".join(c.checkpoint_id for c in record.checkpoints) or "none"
        raise UsageError(f"--checkpoint {args.checkpoint!r}: run {args.run_id} has no such checkpoint (known: {known})")
    try:
        entry = append_review(config.storage, args.run_id, args.checkpoint, args.decision, args.note, args.by)
    except ReviewError as e:
        raise UsageError(str(e)) from None
    except ReviewNotRecorded as e:
        raise WorkFailed(str(e)) from None
    if problems := read_review_log(config.storage).summary():
        print(f"warning: {problems}", file=sys.stderr)
    if args.json:
        print(json.dumps(entry))
    else:
        scope = f"{args.run_id}/{args.checkpoint}" if args.checkpoint else f"{args.run_id} (whole run)"
        print(f"recorded: {entry['decision']} {scope} by {entry['by']} -> {Storage(config.storage).reviews}")
    updated = refresh_reports(config, record, args.checkpoint)
    if updated and not args.json:
        print(f"reports updated: {', '.join(updated)}")
    return 0


def refresh_reports(config, record, checkpoint_id: str | None) -> list[str]:
    """Rewrite the reports a review touches (module docstring); warnings on stderr."""
    from lora_pipeline.report.diagnosis import (
        EVALUATION_FILE,
        REPORT_FILE,
        ReportError,
        write_checkpoint_report,
    )
    from lora_pipeline.report.run import write_run_report
    from lora_pipeline.storage import Storage

    storage = Storage(config.storage)
    run_id, done = record.run_id, []
    ids = [checkpoint_id] if checkpoint_id else [c.checkpoint_id for c in record.checkpoints]
    try:
        for ck in ids:
            if (storage.renders_dir(run_id, ck) / EVALUATION_FILE).is_file():
                write_checkpoint_report(config, run_id, ck)
                done.append(f"{run_id}/{ck}")
        if (storage.run_report_dir(run_id) / REPORT_FILE).is_file():
            write_run_report(config, run_id)
            done.append(f"{run_id} (run report)")
    except (ReportError, OSError) as e:
        print(f"warning: the review is recorded, but a report was not rewritten: {e}", file=sys.stderr)
    return done
