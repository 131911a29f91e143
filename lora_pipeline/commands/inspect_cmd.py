"""`lora-pipeline inspect FILE.safetensors [--json]`.

A file that is missing, pickled or not valid safetensors is a bad argument: exit 2 with the parser's
one line (naming the file and the tensor or key). A valid file always gets a report (exit 0), its
malformed parts (an empty alpha tensor) listed in it.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE.safetensors", help="a LoRA file (.safetensors only; pickles are refused)")
    p.add_argument("--json", action="store_true", help="print one JSON document")


def run(args: argparse.Namespace) -> int:
    from lora_pipeline.cli import UsageError, WorkFailed
    from lora_pipeline.lora.inspect import format_report, inspect_file
    from lora_pipeline.lora.safetensors_file import LoraFileError

    try:
        report = inspect_file(args.file)
    except LoraFileError as e:
        raise UsageError(str(e)) from None
    except (ValueError, TypeError, IndexError, KeyError, ArithmeticError, RecursionError) as e:
        # the parser admits no file that breaks the analysis (tests/test_safetensors_fuzz.py); if one
        # ever does, the user still gets one line, and it is the tool's failure, not theirs
        raise WorkFailed(f"{args.file}: the analysis failed ({e.__class__.__name__}: {str(e)[:200]})"
                         .replace("\n", " ")) from None
    print(json.dumps(report.to_dict(), indent=1, default=float) if args.json else format_report(report))
    return 0
