"""`lora-pipeline toy-base OUT_DIR [--family sd1|sdxl|sd3|flux1|flux2] [--drawing [--train] [--weights FILE]]`."""

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
    p.add_argument("--drawing", action="store_true",
                   help="the SD1.x drawing base (trained on captioned scenes, lora_pipeline/toy/drawing_base.py) "
                        "instead of random weights")
    p.add_argument("--train", action="store_true",
                   help="with --drawing: train its weights from scratch first (tens of minutes of CPU) into --weights")
    p.add_argument("--weights", metavar="FILE", default=None,
                   help="with --drawing: the weights file to write the model from (default: the shipped one); "
                        "with --train, the file training writes")


def run(args: argparse.Namespace) -> int:
    from lora_pipeline.cli import UsageError

    if args.sdxl and args.family not in (None, "sdxl"):
        raise UsageError(f"--sdxl contradicts --family {args.family}; give one of them")
    family = args.family or ("sdxl" if args.sdxl else "sd1")
    if args.drawing:
        return _drawing(args, family)
    if args.train or args.weights:
        raise UsageError("--train and --weights go with --drawing")
    from lora_pipeline.toy.base import write_toy_base

    try:
        out = write_toy_base(args.out_dir, seed=args.seed, family=family)
    except FileExistsError as e:
        raise UsageError(f"OUT_DIR {e}") from None
    print(f"wrote toy {LABELS[family]} base model to {out}")
    return 0


def _drawing(args: argparse.Namespace, family: str) -> int:
    from pathlib import Path

    from lora_pipeline.cli import UsageError
    from lora_pipeline.toy.drawing_base import WEIGHTS, read_meta, write_drawing_base

    if family != "sd1":
        raise UsageError(f"--drawing builds an SD1.x model; it does not go with --family {family}")
    if args.train and not args.weights:
        raise UsageError("--train needs --weights FILE: the weights file training writes")
    if args.seed and not args.train:
        raise UsageError("--seed with --drawing needs --train: the shipped weights were trained with seed 0")
    out = Path(args.out_dir)
    if (out / "model_index.json").is_file() or (out.exists() and any(out.iterdir())):
        raise UsageError(f"OUT_DIR {out.resolve()}: folder is not empty")
    weights = Path(args.weights) if args.weights else WEIGHTS
    if args.train:
        import copy
        import time

        from tqdm import tqdm

        from lora_pipeline.toy.train_base import RECIPE, train_drawing_base

        recipe = copy.deepcopy(RECIPE)
        recipe["seed"] = args.seed
        bars: dict[str, tqdm] = {}

        def progress(phase: str, step: int, total: int, loss: float) -> None:
            bar = bars.get(phase) or bars.setdefault(phase, tqdm(total=total, desc=f"train {phase}", unit="step"))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if step == total:
                bar.close()

        started = time.time()
        train_drawing_base(weights, recipe, progress)
        print(f"trained the drawing base's weights in {time.time() - started:.0f} s -> {weights}")
    elif not weights.is_file():
        raise UsageError(f"--weights {weights}: no such file")
    try:
        out = write_drawing_base(out, weights)
    except (FileExistsError, ValueError) as e:
        raise UsageError(str(e)) from None
    meta = read_meta(weights)
    print(f"wrote the toy SD1.x drawing base (recipe {meta.get('recipe_id')}, seed {meta.get('seed')}) to {out}")
    return 0
