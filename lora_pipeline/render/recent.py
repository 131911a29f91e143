"""Renders this process has just written, kept in memory for what follows in the same process.

The checkpoint report's comparison grid (report/grid_image.py) runs right after the evaluation, in
the same process for a launch (`lora-pipeline evaluate`) or an in-process Dagster run, and used to
decode again the 12+ PNGs the evaluation had just encoded from pixels still in memory (a 1024 px
render: ~40 ms each). `remember` keeps the written image; `recalled` gives it back only while the
file is still the one written (size, mtime, inode and device unchanged), else None and the caller
reads the file. At most MAX_BYTES of pixels are kept, the oldest dropped first; RGB images only (the
grid converts what it reads to RGB: the same pixels either way).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

MAX_BYTES = 64 * 1024 * 1024
_LOCK = threading.Lock()
_KEPT: OrderedDict[str, tuple[tuple[int, int, int, int], Any, int]] = OrderedDict()  # path -> (stat, image, bytes)
_TOTAL = [0]


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev


def remember(path: Path, image: Any) -> None:
    """Keep `image` as the pixels of the file just written at `path`."""
    if getattr(image, "mode", None) != "RGB":
        return
    size = image.width * image.height * 3
    try:
        sig, key = _signature(os.stat(path)), os.path.realpath(path)
    except OSError:
        return
    with _LOCK:
        old = _KEPT.pop(key, None)
        _TOTAL[0] -= old[2] if old else 0
        if size > MAX_BYTES:
            return
        _KEPT[key] = (sig, image, size)
        _TOTAL[0] += size
        while _TOTAL[0] > MAX_BYTES:
            _TOTAL[0] -= _KEPT.popitem(last=False)[1][2]


def recalled(path: Path) -> Any | None:
    """The image kept for `path` while the file is unchanged since it was written, else None."""
    try:
        sig, key = _signature(os.stat(path)), os.path.realpath(path)
    except OSError:
        return None
    with _LOCK:
        got = _KEPT.get(key)
    return got[1] if got is not None and got[0] == sig else None


def forget_all() -> None:
    with _LOCK:
        _KEPT.clear()
        _TOTAL[0] = 0
