from __future__ import annotations

from pathlib import Path

import pytest

from lora_pipeline.config import load_config
from tests.training import fixtures as fx


@pytest.fixture(scope="session")
def toy_lora(native_run):
    return fx.toy_tensors(native_run)


@pytest.fixture
def workspace(tmp_path, toy_dataset):
    (tmp_path / "runs").mkdir()
    cfg_file = fx.config_text(tmp_path, toy_dataset)
    return tmp_path, load_config(cfg_file), cfg_file


@pytest.fixture
def runs_dir(workspace) -> Path:
    return workspace[0] / "runs"
