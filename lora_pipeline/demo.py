"""The demo workspace: toy base model, a generated product dataset with planted faults, and two real
toy training runs (a sensible one in kohya format, a hot one in our native format).

Built idempotently: each part is written once (atomically) and reused on the next call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lora_pipeline.config import Config
from lora_pipeline.toy.base import write_toy_base
from lora_pipeline.toy.dataset import write_toy_dataset
from lora_pipeline.toy.train import TrainSpec, train

DEMO_TRIGGER = "sks_chair"
DEMO_FAULTS = ("orphan_caption", "vague_caption", "respelled_trigger")


@dataclass(frozen=True)
class DemoRun:
    name: str
    format: str
    steps: int
    save_every: int
    rank: int
    alpha: float
    lr: float


DEMO_RUNS = (
    # Sensible: modest rank and learning rate; its effect grows across checkpoints.
    DemoRun("products-sensible", "kohya", steps=40, save_every=10, rank=8, alpha=16.0, lr=1e-3),
    # Hot: rank 32 on 14 images at lr 0.05: flagged as aggressive, and its trigger stops mattering
    # (the LoRA bleeds into every prompt) while its weights keep growing: overtraining.
    DemoRun("products-hot", "native", steps=60, save_every=15, rank=32, alpha=64.0, lr=5e-2),
)


def build_demo_workspace(config: Config, log: Callable[[str], None] = print,
                         progress: Callable[[str, int, int], None] | None = None) -> None:
    """Create what is missing of the demo workspace described by `config` (the embedded default)."""
    base_name, base_path = next(iter(config.base_models.items()))
    if not (base_path / "model_index.json").is_file():
        log(f"demo: writing toy base model {base_name} -> {base_path}")
        write_toy_base(base_path, seed=0)
    ds_name, ds = next(iter(config.datasets.items()))
    if not ds.path.is_dir():
        log(f"demo: writing dataset {ds_name} ({', '.join(DEMO_FAULTS)} planted) -> {ds.path}")
        tmp = ds.path.with_name(f".{ds.path.name}.partial")
        _rmtree(tmp)
        write_toy_dataset(tmp, trigger=ds.trigger or DEMO_TRIGGER, n=14, size=96, faults=DEMO_FAULTS)
        tmp.rename(ds.path)
    config.training_runs.mkdir(parents=True, exist_ok=True)
    for run in DEMO_RUNS:
        out = config.training_runs / run.name
        if out.is_dir():
            continue
        log(f"demo: training {run.name} ({run.format}, rank {run.rank}, lr {run.lr}, {run.steps} steps)")
        tmp = config.training_runs / f".{run.name}.partial"
        _rmtree(tmp)
        spec = TrainSpec(base=base_path, dataset=ds.path, out=tmp, trigger=ds.trigger or DEMO_TRIGGER,
                         steps=run.steps, save_every=run.save_every, rank=run.rank, alpha=run.alpha,
                         lr=run.lr, resolution=config.checks.resolution, format=run.format, name=run.name)

        def step_cb(step: int, loss: float, _name: str = run.name, _total: int = run.steps) -> None:
            if progress:
                progress(_name, step, _total)

        train(spec, progress=step_cb)
        tmp.rename(out)  # the runs folder only ever shows complete runs


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)
