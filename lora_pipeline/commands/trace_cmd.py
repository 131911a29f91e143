"""`lora-pipeline trace IMAGE [--json]`: walk back from a render to its source files, hashes re-checked.

The config: --config or LORA_PIPELINE_CONFIG when given; otherwise the first of ./lora_pipeline.yaml,
one beside the image or above it, one beside the LoRA file its manifest names or above it, and the demo
workspace whose storage holds the run the image's manifest names (lora_pipeline/commands/_trace_config.py;
said on stderr). None holds it: exit 2 with one line naming the run and what to pass.

Exit codes (CONTRACT section 6): 0 when the walk ran, whatever it found: a forged or altered chunk, a
replaced checkpoint or a changed stored object is reported as mismatch / unverifiable checks (and
`summary` counts them), not as a failure; 2 when IMAGE is not a file or not a lora-pipeline render (no
readable PNG `lora_pipeline` chunk holding a JSON object), or no config holds its run, with one line.
`--json` prints one document.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", help="a render PNG (a copied file works: the walk starts from its chunk)")
    p.add_argument("--json", action="store_true", help="print one JSON document")


def run(args: argparse.Namespace) -> int:
    import sys

    from lora_pipeline.cli import UsageError
    from lora_pipeline.commands._trace_config import config_for_image
    from lora_pipeline.report.trace import TraceError, format_trace, trace_image

    config, how = config_for_image(args.image, args.config)
    if how:
        print(f"trace: config {how}", file=sys.stderr)
    from assets.lookup import latest_run_lookup

    try:
        t = trace_image(config, args.image, run_lookup=latest_run_lookup(config))
    except TraceError as e:
        raise UsageError(str(e)) from None
    print(json.dumps(t, indent=1, default=str) if args.json else format_trace(t))
    return 0
