"""Toy base models of the flow-matching families (SD3, FLUX.1, FLUX.2), each built once per session
with seed 0. Reusable: toy_sd3_base, toy_flux1_base, toy_flux2_base (diffusers folders)."""

from __future__ import annotations

from pathlib import Path

import pytest


def _write(tmp_path_factory, family: str) -> Path:
    from lora_pipeline.toy.base import write_toy_base

    return write_toy_base(tmp_path_factory.mktemp("models") / f"toy-{family}", seed=0, family=family)


@pytest.fixture(scope="session")
def toy_sd3_base(tmp_path_factory) -> Path:
    return _write(tmp_path_factory, "sd3")


@pytest.fixture(scope="session")
def toy_flux1_base(tmp_path_factory) -> Path:
    return _write(tmp_path_factory, "flux1")


@pytest.fixture(scope="session")
def toy_flux2_base(tmp_path_factory) -> Path:
    return _write(tmp_path_factory, "flux2")
