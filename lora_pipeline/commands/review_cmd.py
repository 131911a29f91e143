"""`lora-pipeline review RUN [--checkpoint ID] --decision accept|reject|needs-work --note TEXT [--by NAME]`:
append one decision to storage/reviews.jsonl, whole or not at all (fsynced; the file is never rewritten).
A failed write (full disk, I/O error) exits 1 with one line naming the file and the cause; unreadable
lines already in the log (torn by a crash) are reported as a warning on stderr."""

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
    return 0
