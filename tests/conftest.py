"""Shared fixtures: the toy world (base model, dataset, trained runs), built once per session on
real diffusers/peft/torch. Tests never touch a hub or the user's demo workspace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep every test away from the user's ~/.lora_pipeline and any config in the cwd.
os.environ.pop("LORA_PIPELINE_CONFIG", None)
os.environ.pop("DAGSTER_HOME", None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
TRIGGER = "sks_chair"


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LORA_PIPELINE_DEMO_DIR", str(tmp_path_factory.getbasetemp() / "demo-home"))
    monkeypatch.delenv("LORA_PIPELINE_CONFIG", raising=False)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One torch thread for the whole session: on a 2-core machine oversubscribed threads make the toy
    renders ~10x slower, and a fixed thread count keeps float results bit-stable across tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def toy_base(tmp_path_factory) -> Path:
    from lora_pipeline.toy.base import write_toy_base

    return write_toy_base(tmp_path_factory.mktemp("models") / "toy-sd1", seed=0)


@pytest.fixture(scope="session")
def toy_sdxl_base(tmp_path_factory) -> Path:
    from lora_pipeline.toy.base import write_toy_base

    return write_toy_base(tmp_path_factory.mktemp("models") / "toy-sdxl", seed=0, sdxl=True)


def _toy_family(tmp_path_factory, family: str) -> Path:
    from lora_pipeline.toy.base import write_toy_base

    return write_toy_base(tmp_path_factory.mktemp("models") / f"toy-{family}", seed=0, family=family)


@pytest.fixture(scope="session")
def toy_sd3_base(tmp_path_factory) -> Path:
    return _toy_family(tmp_path_factory, "sd3")


@pytest.fixture(scope="session")
def toy_flux1_base(tmp_path_factory) -> Path:
    return _toy_family(tmp_path_factory, "flux1")


@pytest.fixture(scope="session")
def toy_flux2_base(tmp_path_factory) -> Path:
    return _toy_family(tmp_path_factory, "flux2")


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory) -> Path:
    from lora_pipeline.toy.dataset import write_toy_dataset

    return write_toy_dataset(tmp_path_factory.mktemp("data") / "products", trigger=TRIGGER, n=8, size=64)


def _train(tmp_path_factory, toy_base, toy_dataset, fmt: str, **kw) -> Path:
    from lora_pipeline.toy.train import TrainSpec, train

    out = tmp_path_factory.mktemp("runs") / f"run-{fmt}"
    spec = TrainSpec(base=toy_base, dataset=toy_dataset, out=out, trigger=TRIGGER, steps=kw.get("steps", 6),
                     save_every=kw.get("save_every", 3), rank=kw.get("rank", 4), alpha=kw.get("alpha", 8.0),
                     lr=kw.get("lr", 5e-3), resolution=64, format=fmt)
    train(spec)
    return out


@pytest.fixture(scope="session")
def native_run(tmp_path_factory, toy_base, toy_dataset) -> Path:
    return _train(tmp_path_factory, toy_base, toy_dataset, "native")


@pytest.fixture(scope="session")
def kohya_run(tmp_path_factory, toy_base, toy_dataset) -> Path:
    return _train(tmp_path_factory, toy_base, toy_dataset, "kohya", alpha=2.0)


@pytest.fixture(scope="session")
def toy_pipe(toy_base):
    """A loaded toy pipeline (fp32, CPU). Tests that load adapters must delete them again."""
    from diffusers import StableDiffusionPipeline

    from lora_pipeline.quiet import quiet_libraries

    quiet_libraries()
    return StableDiffusionPipeline.from_pretrained(toy_base)
