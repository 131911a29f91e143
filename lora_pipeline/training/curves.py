"""Loss and delta-norm curves drawn to small PNGs with PIL only (no matplotlib): kept small enough to
inline in Dagster metadata (a few KB) and in reports."""

from __future__ import annotations

import io
import math

from PIL import Image, ImageDraw

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 480, 200, 52, 12, 22, 26


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def line_chart(title: str, series: list[tuple[str, list[tuple[float, float]], tuple[int, int, int]]],
               marks: list[float] | None = None) -> bytes:
    """PNG bytes of one chart; `series` = (label, [(x, y)], rgb); non-finite points are drawn as
    red ticks on the x axis; `marks` are x positions drawn as dotted verticals (checkpoints)."""
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    pts = [(x, y) for _, s, _ in series for x, y in s if math.isfinite(y)]
    d.text((PAD_L, 4), title, fill=(0, 0, 0))
    x0, y0, x1, y1 = PAD_L, PAD_T, W - PAD_R, H - PAD_B
    d.rectangle([x0, y0, x1, y1], outline=(160, 160, 160))
    if not pts:
        d.text((x0 + 10, (y0 + y1) // 2), "no data", fill=(120, 120, 120))
        return _png(img)
    xs = [x for _, s, _ in series for x, _ in s] + list(marks or [])
    xmin, xmax = min(xs), max(xs)
    ymin, ymax = min(y for _, y in pts), max(y for _, y in pts)
    if xmax == xmin:
        xmax = xmin + 1
    if ymax == ymin:
        ymax, ymin = ymax + abs(ymax) * 0.05 + 1e-9, ymin - abs(ymin) * 0.05 - 1e-9

    def px(x: float, y: float) -> tuple[float, float]:
        return (x0 + (x - xmin) / (xmax - xmin) * (x1 - x0), y1 - (y - ymin) / (ymax - ymin) * (y1 - y0))

    for m in marks or []:
        mx = px(m, ymin)[0]
        for yy in range(y0, y1, 6):
            d.line([(mx, yy), (mx, yy + 2)], fill=(190, 190, 230))
    for label_i, (label, s, rgb) in enumerate(series):
        run: list[tuple[float, float]] = []
        for x, y in s:
            if math.isfinite(y):
                run.append(px(x, y))
            else:
                xx = px(x, ymin)[0]
                d.line([(xx, y1 - 6), (xx, y1)], fill=(220, 0, 0), width=2)
                if len(run) > 1:
                    d.line(run, fill=rgb, width=1)
                run = []
        if len(run) > 1:
            d.line(run, fill=rgb, width=2 if label_i else 1)
        elif len(run) == 1:
            d.ellipse([run[0][0] - 2, run[0][1] - 2, run[0][0] + 2, run[0][1] + 2], fill=rgb)
        d.text((W - PAD_R - 8 * len(label) - 60 * (len(series) - 1 - label_i), 4), label, fill=rgb)
    d.text((4, y0), _fmt(ymax), fill=(80, 80, 80))
    d.text((4, y1 - 10), _fmt(ymin), fill=(80, 80, 80))
    d.text((x0, y1 + 6), _fmt(xmin), fill=(80, 80, 80))
    d.text((x1 - 40, y1 + 6), _fmt(xmax), fill=(80, 80, 80))
    return _png(img)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def loss_curve(loss: list[tuple[int, float]], smoothed: list[float], checkpoint_steps: list[int]) -> bytes:
    raw = [(float(s), v) for s, v in loss]
    sm = [(float(s), v) for (s, _), v in zip(loss, smoothed, strict=False)]
    return line_chart("training loss (raw, smoothed; dotted: checkpoints)",
                      [("raw", raw, (170, 170, 170)), ("ema", sm, (20, 60, 200))],
                      marks=[float(x) for x in checkpoint_steps])


def delta_norm_curve(points: list[tuple[float, float]]) -> bytes:
    return line_chart("LoRA ||delta W|| per checkpoint", [("norm", points, (200, 90, 0))])
