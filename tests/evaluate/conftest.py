"""Fixtures for the cache and launcher tests: a real workspace (config, toy base, toy dataset, one
toy run trained with 3 checkpoints) copied fresh per test, renders kept tiny (64 px, 2 steps)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

TRIGGER = "sks_chair"




@pytest.fixture(scope="package")
def three_checkpoint_run(tmp_path_factory, toy_base, toy_dataset) -> Path:
    from lora_pipeline.toy.train import TrainSpec, train

    out = tmp_path_factory.mktemp("runs3") / "run-three"
    train(TrainSpec(base=toy_base, dataset=toy_dataset, out=out, trigger=TRIGGER, steps=6, save_every=2, rank=4,
                    alpha=8.0, lr=5e-2, resolution=64, format="native"))
    return out


def write_config(root: Path, toy_base: Path, toy_dataset: Path, seeds=(5,), extra: str = "") -> Path:
    cfg = root / "lora_pipeline.yaml"
    cfg.write_text(
        "storage: storage\ntraining_runs: runs\n"
        f"datasets:\n  products:\n    path: {toy_dataset}\n    trigger: {TRIGGER}\n"
        f"base_models:\n  toy-sd1: {toy_base}\n"
        f"eval:\n  prompts: ['a photo of {{trigger}}']\n  negative_prompt: 'blurry'\n  seeds: {list(seeds)}\n"
        "  width: 64\n  height: 64\n  steps: 2\n  guidance_scale: 4.0\n"
        "runtime:\n  device: cpu\n  dtype: float32\n"
        "checks:\n  min_images: 1\n  resolution: 64\n" + extra)
    return cfg


@pytest.fixture
def workspace(tmp_path, toy_base, toy_dataset, three_checkpoint_run):
    """(config, run_id): a fresh workspace whose runs folder holds a copy of the 3-checkpoint run."""
    from lora_pipeline.config import load_config

    (tmp_path / "runs").mkdir()
    shutil.copytree(three_checkpoint_run, tmp_path / "runs" / three_checkpoint_run.name)
    cfg = write_config(tmp_path, toy_base, toy_dataset)
    return load_config(cfg), three_checkpoint_run.name
