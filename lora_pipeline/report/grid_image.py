"""A small comparison-grid PNG (prompt x seed rows; base | LoRA without trigger | LoRA with trigger) for
Dagster metadata, kept under a byte budget (the event log or the webserver's file route holds it;
CONTRACT notes: < 200 KB). Columns are titled in words, rows by prompt and seed."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

ARMS = (("base", "base model"), ("lora_no_trigger", "LoRA, no trigger"), ("lora_trigger", "LoRA with trigger"))
MAX_BYTES = 200_000
MAX_ROWS = 8
COMPRESS_LEVEL = 3
HEAD, LABEL_W, PAD = 28, 52, 2


def comparison_grid_png(renders: list[dict[str, Any]], storage_root: Path, cell: int = 128,
                        max_bytes: int = MAX_BYTES) -> bytes | None:
    """PNG bytes of the grid, shrunk until under `max_bytes`; None when there is nothing to show."""
    by = {(r.get("prompt_index") or 0, r["seed"], r["arm"]): r["path"] for r in renders}
    keys = sorted({(p, s) for p, s, _ in by})[:MAX_ROWS]
    if not keys:
        return None
    while cell >= 16:
        buf = io.BytesIO()
        # zlib level 3: on the demo's 444 x 810 grids 39 ms against 68 ms at the default 6, for 13% more
        # bytes, well inside the budget (noisy toy grids: the same cell either way); `optimize` (level 9
        # and a filter search) cost 1.7x the default's encode for ~0.2% fewer bytes
        _draw(by, keys, storage_root, cell).save(buf, format="PNG", compress_level=COMPRESS_LEVEL)
        if buf.tell() <= max_bytes:
            return buf.getvalue()
        cell = _next_cell(cell, buf.tell(), max_bytes)
    return None


def _next_cell(cell: int, size: int, max_bytes: int) -> int:
    """The next cell of the series (4/5 at a time: the largest grid within the budget), skipping the
    ones that cannot fit: the bytes of a grid of renders grow with its area, so a cell whose area
    predicts more than 1.2x the budget is not drawn (a noisy 128 px grid: 3 encodes -> 2)."""
    nxt = cell * 4 // 5
    while nxt * 4 // 5 >= 16 and size * (nxt / cell) ** 2 > 1.2 * max_bytes:
        nxt = nxt * 4 // 5
    return nxt


def _fit(d, text: str, width: int) -> list[str]:
    """`text` in at most two lines no wider than `width` (the last one cut short when it must be)."""
    lines: list[str] = []
    for word in text.split():
        if lines and d.textlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    lines = lines[:2]
    for i, line in enumerate(lines):
        while len(line) > 1 and d.textlength(line) > width:
            line = line[:-2] + "."
        lines[i] = line
    return lines


def _draw(by: dict, keys: list[tuple[int, int]], storage_root: Path, cell: int):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (LABEL_W + len(ARMS) * (cell + PAD) + PAD, HEAD + len(keys) * (cell + PAD) + PAD), "white")
    d = ImageDraw.Draw(img)
    for j, (_, label) in enumerate(ARMS):
        for k, line in enumerate(_fit(d, label, cell)):
            d.text((LABEL_W + PAD + j * (cell + PAD), 2 + 12 * k), line, fill=(0, 0, 0))
    for i, (p, s) in enumerate(keys):
        y = HEAD + PAD + i * (cell + PAD)
        d.text((2, y + 2), f"prompt {p}", fill=(60, 60, 60))
        d.text((2, y + 14), f"seed {s}", fill=(60, 60, 60))
        for j, (arm, _) in enumerate(ARMS):
            x = LABEL_W + PAD + j * (cell + PAD)
            path = by.get((p, s, arm))
            try:
                im = _render_rgb(storage_root / path)
                up = im.width < cell  # a small render enlarged pixel by pixel (sharper, smaller PNG)
                img.paste(im.resize((cell, cell), Image.NEAREST if up else Image.BICUBIC), (x, y))
            except (OSError, ValueError, TypeError):
                d.rectangle([x, y, x + cell - 1, y + cell - 1], outline=(200, 200, 200))
                d.text((x + 4, y + cell // 2 - 5), "missing", fill=(150, 150, 150))
    return img


def _render_rgb(path: Path):
    """The render's pixels: from memory when this process just wrote the file (render/recent.py)."""
    from PIL import Image

    from lora_pipeline.render.recent import recalled

    kept = recalled(path)
    if kept is not None:
        return kept
    with Image.open(path) as im:
        return im.convert("RGB")
