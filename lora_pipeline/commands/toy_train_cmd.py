"""`lora-pipeline toy-train --base DIR --dataset DIR --out RUN_DIR --trigger T ...` (CONTRACT section 6)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, type=Path, help="diffusers base model folder")
    p.add_argument("--dataset", required=True, type=Path, help="dataset folder (images + captions)")
    p.add_argument("--out", required=True, type=Path, help="new run folder")
    p.add_argument("--trigger", required=True, help="trigger token the captions carry")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--save-every", type=int, default=10, help="save a checkpoint every K steps")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--alpha", type=float, default=4.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--format", choices=["native", "kohya"], default="native")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="output name (default: the run folder's name)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--snapshot-id", help="dataset snapshot id to record in the run, when known")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lora_pipeline.cli import UsageError
    from lora_pipeline.toy.train import TrainError, TrainSpec, train

    spec = TrainSpec(base=args.base.resolve(), dataset=args.dataset.resolve(), out=args.out.resolve(),
                     trigger=args.trigger, steps=args.steps, save_every=args.save_every, rank=args.rank,
                     alpha=args.alpha, lr=args.lr, resolution=args.resolution, format=args.format,
                     seed=args.seed, name=args.name, device=args.device, dataset_snapshot_id=args.snapshot_id)
    try:
        spec.validate()
    except TrainError as e:
        raise UsageError(str(e)) from None
    with tqdm(total=spec.steps, desc=f"toy-train {spec.out.name}", unit="step") as bar:
        def progress(step: int, loss: float) -> None:
            bar.set_postfix(loss=f"{loss:.4f}")
            bar.update(1)

        try:
            result = train(spec, progress=progress)
        except TrainError as e:
            raise UsageError(str(e)) from None
    print(f"wrote {len(result.checkpoints)} checkpoint file(s) to {result.out} ({spec.format} format); "
          f"final loss {result.losses[-1]:.4f}")
    return 0
