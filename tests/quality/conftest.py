"""Quality tests work on constructed images (numpy + PIL) and a tiny random CLIP built here."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
