"""`lora-pipeline toy-base OUT_DIR`."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", metavar="OUT_DIR", help="empty or new folder for the diffusers model")
    p.add_argument("--seed", type=int, default=0, help="weight seed (same seed -> same weights)")
    p.add_argument("--sdxl", action="store_true", help="build the SDXL-architecture toy (two text encoders)")


def run(args: argparse.Namespace) -> int:
    from lora_pipeline.cli import UsageError
    from lora_pipeline.toy.base import write_toy_base

    try:
        out = write_toy_base(args.out_dir, seed=args.seed, sdxl=args.sdxl)
    except FileExistsError as e:
        raise UsageError(f"OUT_DIR {e}") from None
    print(f"wrote toy {'SDXL' if args.sdxl else 'SD1.x'} base model to {out}")
    return 0
