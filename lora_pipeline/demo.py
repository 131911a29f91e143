"""The demo workspace: toy base models (SD1 and FLUX.1), a generated product dataset with planted
faults, and three real toy training runs: two SD1 runs (a sensible one in kohya format, a hot one in
our native format) and a small FLUX.1 run (native format) on the same dataset.

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
from lora_pipeline.toy.train_flux import train_flux1

DEMO_TRIGGER = "sks_chair"
DEMO_FAULTS = ("orphan_caption", "vague_caption", "respelled_trigger")
# base_models name in demo_config.yaml -> toy family written there; a name not listed is SD1.
DEMO_BASE_FAMILIES = {"toy-sd1": "sd1", "toy-flux1": "flux1"}


@dataclass(frozen=True)
class DemoRun:
    name: str
    format: str
    steps: int
    save_every: int
    rank: int
    alpha: float
    lr: float
    base: str = "toy-sd1"  # a base_models name; its family picks the trainer


DEMO_RUNS = (
    # Sensible: modest rank and learning rate; its effect grows across checkpoints.
    DemoRun("products-sensible", "kohya", steps=40, save_every=10, rank=8, alpha=16.0, lr=1e-3),
    # Hot: rank 32 on 14 images at lr 0.05: flagged as aggressive, and its trigger stops mattering
    # (the LoRA bleeds into every prompt) while its weights keep growing: overtraining.
    DemoRun("products-hot", "native", steps=60, save_every=15, rank=32, alpha=64.0, lr=5e-2),
    # FLUX.1: a modest run on the toy FLUX.1 base; three checkpoints keep the demo's render time low.
    DemoRun("products-flux1", "native", steps=30, save_every=10, rank=8, alpha=16.0, lr=5e-3,
            base="toy-flux1"),
)


def build_demo_workspace(config: Config, log: Callable[[str], None] = print,
                         progress: Callable[[str, int, int], None] | None = None) -> None:
    """Create what is missing of the demo workspace described by `config` (the embedded default)."""
    for base_name, base_path in config.base_models.items():
        if not (base_path / "model_index.json").is_file():
            family = DEMO_BASE_FAMILIES.get(base_name, "sd1")
            log(f"demo: writing toy base model {base_name} ({family}) -> {base_path}")
            write_toy_base(base_path, seed=0, family=family)
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
        family = DEMO_BASE_FAMILIES.get(run.base, "sd1")
        log(f"demo: training {run.name} ({family}, {run.format}, rank {run.rank}, lr {run.lr}, {run.steps} steps)")
        tmp = config.training_runs / f".{run.name}.partial"
        _rmtree(tmp)
        spec = TrainSpec(base=config.base_models[run.base], dataset=ds.path, out=tmp, trigger=ds.trigger or DEMO_TRIGGER,
                         steps=run.steps, save_every=run.save_every, rank=run.rank, alpha=run.alpha,
                         lr=run.lr, resolution=config.checks.resolution, format=run.format, name=run.name)

        def step_cb(step: int, loss: float, _name: str = run.name, _total: int = run.steps) -> None:
            if progress:
                progress(_name, step, _total)

        (train_flux1 if family == "flux1" else train)(spec, progress=step_cb)
        tmp.rename(out)  # the runs folder only ever shows complete runs


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)
