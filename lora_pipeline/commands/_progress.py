"""The progress bar of commands that run the asset graph through the launcher (demo, evaluate)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any


@contextmanager
def launch_progress(desc: str):
    """Yield a `progress(done, total, label)` callback drawing one tqdm bar on stderr."""
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, total: int, label: str) -> None:
        bar.total = total
        bar.set_postfix_str(label[-60:])
        bar.update(done - bar.n)

    callback: Callable[[int, int, str], Any] = progress
    try:
        yield callback
    finally:
        bar.close()
