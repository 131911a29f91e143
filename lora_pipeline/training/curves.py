"""Loss and delta-norm curves drawn to small PNGs with PIL only (no matplotlib): kept small enough to
inline in Dagster metadata (a few KB) and in reports.

Layout, top to bottom: the title (wrapped to the width, never under the legend), a legend row when
there is more than one series or a reference line, then the plot. A series that carries no
information (no finite point, or the same value everywhere) is better not drawn at all:
`informative()` says so, and the callers write a sentence instead of a plot.
"""

from __future__ import annotations

import io
import math

from PIL import Image, ImageDraw

W, PLOT_H, PAD_L, PAD_R, PAD_B, LINE = 480, 150, 52, 12, 26, 13
Series = tuple[str, list[tuple[float, float]], tuple[int, int, int]]
REF_RGB, FAR_RGB = (200, 0, 0), (150, 60, 60)  # drawn reference lines; those named only


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def informative(points: list[tuple[float, float]] | list[list[float]], rel_tol: float = 1e-9) -> bool:
    """True when a curve through `points` would show something: two or more finite values that differ."""
    ys = [float(p[1]) for p in points if isinstance(p[1], int | float) and math.isfinite(p[1])]
    if len(ys) < 2:
        return False
    lo, hi = min(ys), max(ys)
    return hi - lo > rel_tol * max(abs(lo), abs(hi), 1e-300)


def wrap(d: ImageDraw.ImageDraw, text: str, width: float) -> list[str]:
    """`text` broken at spaces into lines no wider than `width` (a word longer than that stays whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and d.textlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def line_chart(title: str, series: list[Series], marks: list[float] | None = None,
               refs: list[tuple[float, str]] | None = None, marks_label: str | None = None) -> bytes:
    """PNG bytes of one chart; `series` = (label, [(x, y)], rgb); non-finite points are drawn as
    red ticks on the x axis; `marks` are x positions drawn as dotted verticals (checkpoints, named in
    the legend by `marks_label`); `refs` are (y, label) dashed horizontal reference lines (thresholds)."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_lines = wrap(probe, title, W - 8)
    legend = [(label, rgb) for label, _, rgb in series] if len(series) > 1 else []
    refs, far = _near_refs(series, refs or [])
    legend += [(label, REF_RGB) for _, label in refs] + [(label, FAR_RGB) for label in far]
    if marks and marks_label:
        legend.append((marks_label, (150, 150, 210)))
    legend_rows = _legend_rows(probe, legend)
    pad_t = 4 + LINE * (len(title_lines) + len(legend_rows)) + 6
    img = Image.new("RGB", (W, pad_t + PLOT_H + PAD_B), "white")
    d = ImageDraw.Draw(img)
    for i, line in enumerate(title_lines):
        d.text((4, 4 + i * LINE), line, fill=(0, 0, 0))
    y_leg = 4 + LINE * len(title_lines)
    for row in legend_rows:
        for x, label, rgb in row:
            if rgb != FAR_RGB:  # no line is drawn for a reference off the chart: no swatch either
                d.line([(x, y_leg + 6), (x + 14, y_leg + 6)], fill=rgb, width=2)
            d.text((x + 18, y_leg), label, fill=rgb)
        y_leg += LINE
    x0, y0, x1, y1 = PAD_L, pad_t, W - PAD_R, pad_t + PLOT_H
    d.rectangle([x0, y0, x1, y1], outline=(160, 160, 160))
    pts = [(x, y) for _, s, _ in series for x, y in s if math.isfinite(y)]
    if not pts:
        d.text((x0 + 10, (y0 + y1) // 2), "no data", fill=(120, 120, 120))
        return _png(img)
    xs = [x for _, s, _ in series for x, _ in s] + list(marks or [])
    ys = [y for _, y in pts] + [y for y, _ in refs]
    xmin, xmax, ymin, ymax = min(xs), max(xs), min(ys), max(ys)
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
    for y, _ in refs:
        ry = px(xmin, y)[1]
        for xx in range(x0, x1, 8):
            d.line([(xx, ry), (xx + 4, ry)], fill=REF_RGB)
    for label_i, (_, s, rgb) in enumerate(series):
        _draw_series(d, s, rgb, 2 if label_i else 1, px, ymin, y1)
    d.text((4, y0), _fmt(ymax), fill=(80, 80, 80))
    d.text((4, y1 - 10), _fmt(ymin), fill=(80, 80, 80))
    d.text((x0, y1 + 6), _fmt(xmin), fill=(80, 80, 80))
    d.text((x1 - 40, y1 + 6), _fmt(xmax), fill=(80, 80, 80))
    return _png(img)


def _near_refs(series: list[Series], refs: list[tuple[float, str]]) -> tuple[list[tuple[float, str]], list[str]]:
    """Reference lines close enough to the data to draw (within one data span of it, so the data keeps
    most of the height), and legend words for the others ('... above the chart')."""
    ys = [y for _, s, _ in series for _, y in s if math.isfinite(y)]
    if not ys:
        return [], []
    lo, hi = min(ys), max(ys)
    span = max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
    near, far = [], []
    for y, label in refs:
        if not math.isfinite(y):
            continue
        if lo - span <= y <= hi + span:
            near.append((y, label))
        else:
            far.append(f"{label}: {'above' if y > hi else 'below'} the chart")
    return near, far


def _legend_rows(d: ImageDraw.ImageDraw, legend: list[tuple[str, tuple[int, int, int]]]) -> list[list]:
    rows: list[list] = []
    x = W
    for label, rgb in legend:
        width = 18 + d.textlength(label) + 14
        if x + width > W - 4:
            rows.append([])
            x = 4
        rows[-1].append((x, label, rgb))
        x += width
    return rows


def _draw_series(d: ImageDraw.ImageDraw, s: list[tuple[float, float]], rgb, width: int, px, ymin: float,
                 y1: float) -> None:
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
        d.line(run, fill=rgb, width=width)
    elif len(run) == 1:
        d.ellipse([run[0][0] - 2, run[0][1] - 2, run[0][0] + 2, run[0][1] + 2], fill=rgb)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")  # no `optimize`: 1.7x the encode for a few bytes
    return buf.getvalue()


def loss_curve(loss: list[tuple[int, float]], smoothed: list[float], checkpoint_steps: list[int]) -> bytes:
    raw = [(float(s), v) for s, v in loss]
    sm = [(float(s), v) for (s, _), v in zip(loss, smoothed, strict=False)]
    return line_chart("Training loss per step", [("raw", raw, (170, 170, 170)), ("smoothed (EMA)", sm, (20, 60, 200))],
                      marks=[float(x) for x in checkpoint_steps], marks_label="checkpoints")


def delta_norm_curve(points: list[tuple[float, float]]) -> bytes:
    return line_chart("LoRA weight change per checkpoint (norm of delta W, all modules)",
                      [("norm", points, (200, 90, 0))])
