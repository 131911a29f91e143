"""A small comparison-grid PNG (prompt x seed rows; base | LoRA without trigger | LoRA with trigger) for
Dagster metadata, kept under a byte budget (the event log holds it; CONTRACT notes: < 200 KB)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

ARMS = ("base", "lora_no_trigger", "lora_trigger")
MAX_BYTES = 200_000
MAX_ROWS = 8


def comparison_grid_png(renders: list[dict[str, Any]], storage_root: Path, cell: int = 96,
                        max_bytes: int = MAX_BYTES) -> bytes | None:
    """PNG bytes of the grid, shrunk until under `max_bytes`; None when there is nothing to show."""
    from PIL import Image, ImageDraw

    by = {(r.get("prompt_index") or 0, r["seed"], r["arm"]): r["path"] for r in renders}
    keys = sorted({(p, s) for p, s, _ in by})[:MAX_ROWS]
    if not keys:
        return None
    while cell >= 16:
        pad, head = 2, 14
        img = Image.new("RGB", (len(ARMS) * (cell + pad) + pad, head + len(keys) * (cell + pad) + pad), "white")
        d = ImageDraw.Draw(img)
        for j, arm in enumerate(ARMS):
            d.text((pad + j * (cell + pad), 1), arm[:cell // 6], fill=(0, 0, 0))
        for i, (p, s) in enumerate(keys):
            for j, arm in enumerate(ARMS):
                x, y = pad + j * (cell + pad), head + pad + i * (cell + pad)
                path = by.get((p, s, arm))
                try:
                    with Image.open(storage_root / path) as im:
                        img.paste(im.convert("RGB").resize((cell, cell)), (x, y))
                except (OSError, ValueError, TypeError):
                    d.rectangle([x, y, x + cell - 1, y + cell - 1], outline=(200, 200, 200))
                    d.text((x + 4, y + cell // 2 - 5), "missing", fill=(150, 150, 150))
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
        if buf.tell() <= max_bytes:
            return buf.getvalue()
        cell //= 2
    return None
