"""Fixtures for the daemon tests: real toy LoRAs trained once per package (tests/conftest.py's toy
base and dataset)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon.harness import TRIGGER


@pytest.fixture(scope="package")
def three_checkpoint_run(tmp_path_factory, toy_base, toy_dataset) -> Path:
    """A native run with checkpoints at steps 2, 4 and 6 (rank 2)."""
    from lora_pipeline.toy.train import TrainSpec, train

    out = tmp_path_factory.mktemp("daemon-runs") / "run-a"
    train(TrainSpec(base=toy_base, dataset=toy_dataset, out=out, trigger=TRIGGER, steps=6, save_every=2, rank=2,
                    alpha=2.0, lr=5e-2, resolution=64, format="native"))
    return out


@pytest.fixture(scope="package")
def one_step_lora(tmp_path_factory, toy_base, toy_dataset) -> Path:
    """A native run with one rank-1 checkpoint: the cheapest real LoRA, the seed of the scale workspace."""
    from lora_pipeline.toy.train import TrainSpec, train

    out = tmp_path_factory.mktemp("daemon-tiny") / "tiny"
    train(TrainSpec(base=toy_base, dataset=toy_dataset, out=out, trigger=TRIGGER, steps=1, save_every=1, rank=1,
                    alpha=1.0, lr=5e-2, resolution=64, format="native"))
    return out
