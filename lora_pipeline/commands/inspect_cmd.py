"""`lora-pipeline inspect FILE.safetensors [--json]`."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE.safetensors", help="a LoRA file (.safetensors only; pickles are refused)")
    p.add_argument("--json", action="store_true", help="print one JSON document")


def run(args: argparse.Namespace) -> int:
    from lora_pipeline.cli import UsageError, WorkFailed
    from lora_pipeline.lora.inspect import format_report, inspect_file
    from lora_pipeline.lora.safetensors_file import LoraFileError, PickleRefusedError

    try:
        report = inspect_file(args.file)
    except PickleRefusedError as e:
        raise UsageError(str(e)) from None
    except LoraFileError as e:
        if "not found" in str(e):
            raise UsageError(str(e)) from None
        raise WorkFailed(str(e)) from None
    print(json.dumps(report.to_dict(), indent=1, default=float) if args.json else format_report(report))
    return 0
