"""`lora-pipeline toy-base OUT_DIR [--family sd1|sdxl|sd3|flux1|flux2]`."""

from __future__ import annotations

import argparse

LABELS = {"sd1": "SD1.x", "sdxl": "SDXL", "sd3": "SD3", "flux1": "FLUX.1", "flux2": "FLUX.2 (Klein)"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lora_pipeline.toy.base import FAMILIES  # a light module: torch & co. load inside its functions

    p.add_argument("out_dir", metavar="OUT_DIR", help="empty or new folder for the diffusers model")
    p.add_argument("--family", choices=list(FAMILIES), default=None,
                   help="architecture of the toy model (default sd1)")
    p.add_argument("--seed", type=int, default=0, help="weight seed (same seed -> same weights)")
    p.add_argument("--sdxl", action="store_true", help="same as --family sdxl")


def run(args: argparse.Namespace) -> int:
    from lora_pipeline.cli import UsageError
    from lora_pipeline.toy.base import write_toy_base

    if args.sdxl and args.family not in (None, "sdxl"):
        raise UsageError(f"--sdxl contradicts --family {args.family}; give one of them")
    family = args.family or ("sdxl" if args.sdxl else "sd1")
    try:
        out = write_toy_base(args.out_dir, seed=args.seed, family=family)
    except FileExistsError as e:
        raise UsageError(f"OUT_DIR {e}") from None
    print(f"wrote toy {LABELS[family]} base model to {out}")
    return 0
