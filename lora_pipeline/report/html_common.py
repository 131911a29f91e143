"""Pieces shared by the HTML reports: one inline stylesheet, escaping, inline thumbnails (data URIs)
linked to the full images by relative path, findings tables. No scripts, fonts or network."""

from __future__ import annotations

import base64
import html
import io
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

THUMB_PX = 160
VERDICT_COLOURS = {"ok": "#1b7f3b", "quality_problem": "#b26a00", "training_problem": "#b26a00",
                   "dataset_problem": "#b0401a", "evaluation_invalid": "#b00020"}
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1300px;margin:0 auto;padding:12px 20px}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:26px}
.banner{color:#fff;padding:14px 20px;font-size:20px;font-weight:600}
.banner small{font-weight:400;font-size:14px;opacity:.9;margin-left:12px}
table{border-collapse:collapse;margin:6px 0;background:#fff}td,th{border:1px solid #ddd;padding:4px 8px;
vertical-align:top;font-size:13px;text-align:left}th{background:#f0f0f0}
.sev-error{color:#b00020;font-weight:600}.sev-warn{color:#a36200;font-weight:600}.sev-info{color:#555}
.pass{color:#1b7f3b;font-weight:600}.fail{color:#b00020;font-weight:600}
.grid td{text-align:center}.grid img{image-rendering:pixelated;width:160px;height:auto;border:1px solid #ccc}
.missing{width:160px;height:60px;display:flex;align-items:center;justify-content:center;color:#999;
border:1px dashed #ccc;font-size:12px}
pre{white-space:pre-wrap;word-break:break-word;font-size:12px;margin:0;max-width:640px}
code{font-size:12px}.plots img{margin:4px 12px 4px 0;border:1px solid #ddd}
"""


def esc(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def data_uri(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(png).decode()}"


_THUMBS: OrderedDict[tuple, bytes | None] = OrderedDict()  # (path, size, mtime, px) -> thumbnail
THUMBS_KEPT = 1024  # ~40 MB at most for 160 px thumbnails; a run report shows the checkpoints' images again


def thumbnail(path: Path, px: int = THUMB_PX) -> bytes | None:
    """A small PNG of an image file (None when it cannot be read). A PNG already no larger than `px`
    is its own thumbnail (its bytes, once PIL has read its header); the last `THUMBS_KEPT` are kept
    in memory, keyed by path, size and mtime, for the run report that shows them again."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns, px)
    if key in _THUMBS:
        _THUMBS.move_to_end(key)
        return _THUMBS[key]
    thumb = _THUMBS[key] = _make_thumbnail(path, px)
    while len(_THUMBS) > THUMBS_KEPT:
        _THUMBS.popitem(last=False)
    return thumb


def _make_thumbnail(path: Path, px: int) -> bytes | None:
    from PIL import Image

    try:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "PNG" and max(im.size) <= px and im.mode in ("RGB", "RGBA", "L"):
                im.load()  # decodes: a truncated or corrupt file is not passed on
                return data
            im = im.convert("RGB")
            im.thumbnail((px, px))
            buf = io.BytesIO()
            im.save(buf, format="PNG")  # no `optimize`: 1.7x the encode for a few bytes
            return buf.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def linked_thumb(storage_root: Path, rel_path: str | None, page_dir: Path, title: str = "") -> str:
    """<a href=relative full image><img src=inline thumbnail></a>, or a 'not rendered' box."""
    if not rel_path:
        return '<div class="missing">not rendered</div>'
    full = storage_root / rel_path
    thumb = thumbnail(full)
    href = os.path.relpath(full, page_dir)
    if thumb is None:
        return f'<a href="{esc(href)}"><div class="missing">unreadable</div></a>'
    return f'<a href="{esc(href)}" title="{esc(title)}"><img alt="{esc(title)}" src="{data_uri(thumb)}"></a>'


def img_file(path: Path, alt: str) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return f"<p>{esc(alt)}: not available</p>"
    return f'<img alt="{esc(alt)}" src="{data_uri(data)}">'


def no_loss_reason(record: dict[str, Any]) -> str:
    """Why a run record has no training loss, in one sentence naming where it was looked for."""
    fmt = str(record.get("format"))
    where = {"kohya": "as TensorBoard events under logs/ or log/ (sd-scripts' --logging_dir)",
             "native": "in loss.jsonl", "ai-toolkit": "in loss_log.db",
             "simpletuner": "as TensorBoard events under logs/", "onetrainer": "as TensorBoard events under tensorboard/",
             "diffusers": "as TensorBoard events under logs/"}.get(fmt)
    if where:
        return f"No training loss found: a {fmt} run logs it {where}, and this run folder has none."
    return f"No training loss found in this run folder ({fmt} format)."


def training_plots(run_dir: Path) -> str:
    """The run's loss and weight-norm curves (beside run.json: the loss at ingestion, the weight norms
    where they are computed), each only when it carries information; otherwise one sentence why not."""
    import contextlib
    import json

    from lora_pipeline.training.curves import informative

    try:
        record = json.loads((run_dir / "run.json").read_text("utf-8"))
    except (OSError, ValueError):
        return "<p>No run record: no training plots.</p>"
    loss = [p for p in record.get("loss") or [] if isinstance(p, list | tuple) and len(p) == 2]
    checkpoints = record.get("checkpoints") or []
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # the delta norms are computed
        # after ingestion and written beside their curve (lora_pipeline/training/norms.py)
        checkpoints = json.loads((run_dir / "delta_norms.json").read_text("utf-8"))["checkpoints"]
    norms = [(c.get("step") or i, c.get("total_delta_norm")) for i, c in enumerate(checkpoints)
             if isinstance(c.get("total_delta_norm"), int | float)]
    parts = [img_file(run_dir / "loss.png", "training loss curve") if loss else f"<p>{esc(no_loss_reason(record))}</p>"]
    if informative(norms):
        parts.append(img_file(run_dir / "delta_norm.png", "LoRA weight-norm curve"))
    else:
        said = ("no checkpoint analysed yet" if not norms else f"{norms[0][1]:.4g} at the only checkpoint"
                if len(norms) == 1 else f"{norms[0][1]:.4g} at each of the {len(norms)} checkpoints")
        parts.append(f"<p>LoRA weight norm: {said}, no curve to draw.</p>")
    return f"<div class=\"plots\">{''.join(parts)}</div>"


def findings_table(findings: list[dict[str, Any]], with_layer: bool = True) -> str:
    if not findings:
        return "<p>No findings.</p>"
    head = "<tr>" + ("<th>layer</th>" if with_layer else "") + \
        "<th>severity</th><th>code</th><th>subject</th><th>message</th><th>fix</th><th>evidence</th></tr>"
    rows = []
    for f in findings:
        import json

        ev = json.dumps(f.get("evidence") or {}, indent=1, default=str)
        rows.append("<tr>" + (f"<td>{esc(f['layer'])}</td>" if with_layer else "")
                    + f"<td class=\"sev-{esc(f['severity'])}\">{esc(f['severity'])}</td><td><code>{esc(f['code'])}"
                    f"</code></td><td>{esc(f.get('subject'))}</td><td>{esc(f.get('message'))}</td>"
                    f"<td>{esc(f.get('fix'))}</td><td><details><summary>evidence</summary><pre>{esc(ev[:4000])}"
                    "</pre></details></td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def kv_table(rows: list[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def reviews_table(reviews: list[dict[str, Any]]) -> str:
    if not reviews:
        return "<p>No reviews yet (<code>lora-pipeline review RUN --checkpoint ID --decision ... --note ...</code>).</p>"
    rows = "".join(f"<tr><td>{esc(r.get('at'))}</td><td>{esc(r.get('by'))}</td><td>{esc(r.get('checkpoint_id') or 'whole run')}"
                   f"</td><td>{esc(r.get('decision'))}</td><td>{esc(r.get('note'))}</td></tr>" for r in reviews)
    return f"<table><tr><th>at</th><th>by</th><th>scope</th><th>decision</th><th>note</th></tr>{rows}</table>"


def page(title: str, verdict: str, subtitle: str, body: str) -> str:
    colour = VERDICT_COLOURS.get(verdict, "#555")
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><div class=\"banner\" id=\"verdict\" style=\"background:{colour}\">"
            f"verdict: {esc(verdict)}<small>{esc(subtitle)}</small></div><main><h1>{esc(title)}</h1>{body}"
            "</main></body></html>\n")
