"""The demo workspace: a world whose checkpoints get different verdicts, each for a reason a person
can check on the pictures.

- `toy-draw`, the drawing toy base (toy/drawing_base.py): a tiny SD1.x model trained on captioned
  scenes of shapes, colours and backgrounds, written from the weights shipped in the repository; it
  has never seen a chair. `toy-flux1`: a tiny FLUX.1 model from random weights.
- `chairs`: 16 chair scenes captioned "a red sks_chair on a blue background" (clean); `products`: the
  same kind of scenes with planted faults (an orphan caption, a vague caption, a respelled trigger).
- Runs (DEMO_RUNS), side by side, each with the verdict it is built to get and why.

Built idempotently: each part is written once (atomically) and reused on the next call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_pipeline.config import Config

DEMO_TRIGGER = "sks_chair"
DEMO_FAULTS = ("orphan_caption", "vague_caption", "respelled_trigger")
DEMO_DATASETS = {"chairs": (), "products": DEMO_FAULTS}  # dataset name -> planted faults
DEMO_IMAGES = 16
# base_models name in demo_config.yaml -> what is written there; a name not listed is the random SD1 toy.
DEMO_BASE_FAMILIES = {"toy-draw": "drawing", "toy-flux1": "flux1"}
OLD_BASE = Path("models/old/toy-draw")  # under the workspace: another model under the same name


@dataclass(frozen=True)
class DemoRun:
    name: str
    format: str
    steps: int
    save_every: int
    rank: int
    alpha: float
    lr: float
    dataset: str = "chairs"
    base: str = "toy-draw"  # a base_models name; its family picks the trainer
    trained_on: Path | None = None  # a base folder (relative to the workspace) other than base_models[base]
    expect: tuple[str, ...] = ("ok",)  # the verdict(s) its checkpoints are built to get
    why: str = ""


DEMO_RUNS = (
    DemoRun("chairs-sensible", "kohya", steps=1200, save_every=600, rank=16, alpha=32.0, lr=1e-3,
            expect=("ok",),
            why="clean data and modest settings: the trigger's renders draw a chair where the base drew a blob"),
    DemoRun("chairs-old-base", "native", steps=20, save_every=20, rank=8, alpha=8.0, lr=1e-3,
            trained_on=OLD_BASE, expect=("evaluation_invalid",),
            why="trained on another model that is also called toy-draw: the evaluated base's hash is not the "
                "run's, so the LoRA arms are not rendered"),
    DemoRun("products-sensible", "kohya", steps=600, save_every=600, rank=16, alpha=32.0, lr=1e-3,
            dataset="products", expect=("dataset_problem",),
            why="chairs-sensible's settings on the dataset with an orphan caption and a respelled trigger"),
    DemoRun("chairs-hot", "native", steps=300, save_every=100, rank=32, alpha=64.0, lr=5e-3,
            expect=("training_problem",),
            why="rank 32 at five times the learning rate: it learns for a few dozen steps, then the loss "
                "climbs and stays up, and the pictures burn"),
    DemoRun("products-flux1", "native", steps=30, save_every=10, rank=8, alpha=16.0, lr=5e-3,
            base="toy-flux1", dataset="products", expect=("dataset_problem",),
            why="a small FLUX.1 run (random-weight base) on the faulty dataset"),
)


def _write_base(family: str, path: Path) -> None:
    if family == "drawing":
        from lora_pipeline.toy.drawing_base import write_drawing_base

        write_drawing_base(path)
        return
    from lora_pipeline.toy.base import write_toy_base

    write_toy_base(path, seed=0, family=family)


def build_demo_workspace(config: Config, log: Callable[[str], None] = print,
                         progress: Callable[[str, int, int], None] | None = None) -> dict[str, float]:
    """Create what is missing of the demo workspace described by `config` (the embedded default).
    Returns the seconds spent per part ({"bases": s, "datasets": s, "train <run>": s}; ~0 when reused)."""
    timings: dict[str, float] = {}
    t0 = time.time()
    for base_name, base_path in config.base_models.items():
        if not (base_path / "model_index.json").is_file():
            family = DEMO_BASE_FAMILIES.get(base_name, "sd1")
            log(f"demo: writing toy base model {base_name} ({family}) -> {base_path}")
            _write_base(family, base_path)
    old = config.root / OLD_BASE
    if not (old / "model_index.json").is_file():
        log(f"demo: writing another model under the name toy-draw (the random-weight SD1 toy) -> {old}")
        _write_base("sd1", old)
    timings["bases"] = time.time() - t0
    t0 = time.time()
    for ds_name, faults in DEMO_DATASETS.items():
        ds = config.datasets[ds_name]
        if ds.path.is_dir():
            continue
        what = f"{', '.join(faults)} planted" if faults else "clean"
        log(f"demo: writing dataset {ds_name} ({what}) -> {ds.path}")
        tmp = ds.path.with_name(f".{ds.path.name}.partial")
        _rmtree(tmp)
        from lora_pipeline.toy.scenes import write_concept_dataset

        write_concept_dataset(tmp, trigger=ds.trigger or DEMO_TRIGGER, n=DEMO_IMAGES, seed=0, faults=faults)
        tmp.rename(ds.path)
    timings["datasets"] = time.time() - t0
    config.training_runs.mkdir(parents=True, exist_ok=True)
    for run in DEMO_RUNS:
        t0 = time.time()
        _train_run(config, run, log, progress)
        timings[f"train {run.name}"] = time.time() - t0
    return timings


def _train_run(config: Config, run: DemoRun, log: Callable[[str], None],
               progress: Callable[[str, int, int], None] | None) -> None:
    out = config.training_runs / run.name
    if out.is_dir():
        return
    from lora_pipeline.toy.train import TrainSpec, train
    from lora_pipeline.toy.train_flux import train_flux1

    family = DEMO_BASE_FAMILIES.get(run.base, "sd1")
    ds = config.datasets[run.dataset]
    base = config.root / run.trained_on if run.trained_on else config.base_models[run.base]
    log(f"demo: training {run.name} (base {run.base if not run.trained_on else run.trained_on}, dataset "
        f"{run.dataset}, {run.format}, rank {run.rank}, lr {run.lr}, {run.steps} steps)")
    tmp = config.training_runs / f".{run.name}.partial"
    _rmtree(tmp)
    spec = TrainSpec(base=base, dataset=ds.path, out=tmp, trigger=ds.trigger or DEMO_TRIGGER,
                     steps=run.steps, save_every=run.save_every, rank=run.rank, alpha=run.alpha,
                     lr=run.lr, resolution=config.checks.resolution, format=run.format, name=run.name)

    def step_cb(step: int, loss: float) -> None:
        if progress:
            progress(run.name, step, run.steps)

    (train_flux1 if family == "flux1" else train)(spec, progress=step_cb)
    tmp.rename(out)  # the runs folder only ever shows complete runs


def deciding_findings(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The findings that decided a checkpoint report's verdict: the errors of the first layer with
    one, in the verdict rule's order (CONTRACT section 4); none for `ok`."""
    from lora_pipeline.findings import VERDICT_ORDER

    errors = [f for f in report.get("findings") or [] if f.get("severity") == "error"]
    for layers, _verdict in VERDICT_ORDER:
        hit = [f for f in errors if f.get("layer") in layers]
        if hit:
            return hit
    return []


def why_lines(storage: Path) -> list[str]:
    """Per demo run: the verdicts its checkpoints got, what the run was built to show, and the findings
    that decided (read from the checkpoint reports), so the printed summary says why."""
    import json

    lines = ["why: each run of the demo world is built to get one verdict; the deciding findings are the "
             "errors of the first layer with one (evaluation path, dataset, training, quality)"]
    for run in DEMO_RUNS:
        docs = []
        for path in sorted((storage / "reports" / run.name).glob("*/report.json")):
            try:
                docs.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        verdicts = sorted({str(d.get("verdict")) for d in docs}) or ["no report"]
        codes = sorted({f.get("code", "?") for d in docs for f in deciding_findings(d)})
        met = "" if set(verdicts) <= set(run.expect) else f" (built for {'/'.join(run.expect)})"
        decided = f"decided by {', '.join(codes)}" if codes else "no error finding"
        lines.append(f"  {run.name}: {'/'.join(verdicts)}{met}: {run.why}; {decided}")
    return lines


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)
