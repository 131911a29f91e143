"""`lora-pipeline trace IMAGE [--json]`: walk back from a render to its source files, hashes re-checked.

Exit codes (CONTRACT section 6): 0 when the walk ran, whatever it found: a forged or altered chunk, a
replaced checkpoint or a changed stored object is reported as mismatch / unverifiable checks (and
`summary` counts them), not as a failure; 2 when IMAGE is not a file or not a lora-pipeline render (no
readable PNG `lora_pipeline` chunk holding a JSON object), with one line. `--json` prints one document.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", help="a render PNG (a copied file works: the walk starts from its chunk)")
    p.add_argument("--json", action="store_true", help="print one JSON document")


def run(args: argparse.Namespace) -> int:
    from assets.lookup import latest_run_lookup
    from lora_pipeline.cli import UsageError
    from lora_pipeline.config import load_config
    from lora_pipeline.report.trace import TraceError, format_trace, trace_image

    config = load_config(args.config)
    try:
        t = trace_image(config, args.image, run_lookup=latest_run_lookup(config))
    except TraceError as e:
        raise UsageError(str(e)) from None
    print(json.dumps(t, indent=1, default=str) if args.json else format_trace(t))
    return 0
