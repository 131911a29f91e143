"""Plots only where they carry information, titles that wrap instead of running into legends, and the
metadata the Dagster UI shows (images served by the webserver's file route, findings table)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import dagster as dg
from PIL import Image

from lora_pipeline.report.html_common import training_plots
from lora_pipeline.report.run import signal_thresholds, signals_of
from lora_pipeline.report.run_html import signals_html
from lora_pipeline.training.curves import _near_refs, informative, line_chart

THRESHOLDS = {"min_lora_effect": 0.01, "min_trigger_effect": 0.01, "max_hf_ratio": 4.0,
              "min_seed_diversity_ratio": 0.25, "memorization_distance": 4, "worsening": 0.25}


def _rows(effects: list[float]) -> list[dict]:
    rows = []
    for i, e in enumerate(effects):
        m = {"comparison": {"base_vs_lora_trigger_mean_abs": e * 255},
             "quality": {"thresholds": THRESHOLDS, "aggregate": {"lora_effect": e, "memorized": 0.0, "hf_ratio": 1.0}}}
        rows.append({"checkpoint_id": f"step-{i}", "step": 10 * (i + 1), "total_delta_norm": 1.0 + i,
                     "_doc": {"metrics": m}})
    return rows


def test_informative_needs_two_finite_values_that_differ():
    assert not informative([]) and not informative([(1, 0.5)]) and not informative([(1, 0.0), (2, 0.0)])
    assert not informative([(1, float("nan")), (2, 1.0)])
    assert informative([[1, 0.5], [2, 0.50001]])


def test_thresholds_are_not_signals_but_reference_lines_of_the_signal_they_bound():
    rows = _rows([0.02, 0.03, 0.025])
    signals = signals_of(rows)
    assert not [k for k in signals if "thresholds" in k]
    limits = signal_thresholds(rows)
    assert limits["quality.aggregate.lora_effect"] == {"threshold": "min_lora_effect", "value": 0.01, "bound": "min"}
    assert limits["quality.aggregate.hf_ratio"]["bound"] == "max" and "worsening" not in json.dumps(limits)
    html = signals_html(signals, limits)
    plotted = {a.split('"')[0] for a in html.split('<img alt="')[1:]}
    # lora_effect moves; comparison.* is the same numbers x 255; weights are plotted under Training;
    # memorized (0 everywhere) and hf_ratio (1.0 everywhere) are named in a sentence instead
    assert plotted == {"quality.aggregate.lora_effect"}
    flat = html.split('id="flat-signals"')[1]
    assert "quality.aggregate.memorized" in flat and "0 at every checkpoint (3)" in flat
    assert "quality.aggregate.hf_ratio" in flat and " over steps" not in html


def test_a_long_title_wraps_above_the_legend_and_far_thresholds_are_named_not_drawn():
    pts = [(1.0, 1.0), (2.0, 1.1)]
    short = Image.open(io.BytesIO(line_chart("Short", [("a", pts, (0, 0, 0))])))
    long_title = "A title long enough that it cannot fit on one line of a chart four hundred and eighty pixels " * 2
    two = Image.open(io.BytesIO(line_chart(long_title, [("a", pts, (0, 0, 0)), ("b", pts, (9, 9, 9))])))
    assert two.height >= short.height + 2 * 13  # a second title line and a legend row, not overlap
    near, far = _near_refs([("a", pts, (0, 0, 0))], [(1.05, "inside"), (1.15, "close"), (4.0, "max allowed: 4")])
    assert [label for _, label in near] == ["inside", "close"] and far == ["max allowed: 4: above the chart"]


def test_training_plots_say_why_a_curve_is_missing(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"format": "kohya", "loss": [], "checkpoints": [
        {"step": 10, "total_delta_norm": 1.5}]}))
    (tmp_path / "loss.png").write_bytes(line_chart("x", []))
    html = training_plots(tmp_path)
    assert "<img" not in html
    assert "No training loss found: a kohya run logs it as TensorBoard events under logs/" in html
    assert "1.5 at the only checkpoint" in html


def test_findings_table_keeps_message_and_fix_in_one_wide_column():
    from assets.ui_metadata import findings_table

    value = findings_table([
        {"code": "DATASET.VAGUE_CAPTIONS", "severity": "warn", "message": "Vague.", "fix": "Describe.",
         "subject": "/a/very/long/path/" + "x" * 200},
        {"code": "RUNTIME.TRIGGER_TRUNCATED", "severity": "error", "message": "Lost.", "fix": "Move it."}])
    assert [c.name for c in value.schema.columns] == ["code", "severity, message and fix"]
    assert [r.data for r in value.records] == [
        {"code": "RUNTIME.TRIGGER_TRUNCATED", "severity, message and fix": "error: Lost. Fix: Move it."},
        {"code": "DATASET.VAGUE_CAPTIONS", "severity, message and fix": "warn: Vague. Fix: Describe."}]
    assert findings_table([]).value == "no findings"


def test_an_image_is_served_from_the_compute_log_folder_by_content(tmp_path):
    from assets.ui_metadata import image, served

    png = line_chart("x", [("a", [(1.0, 1.0), (2.0, 2.0)], (0, 0, 0))])
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        md = image(instance, ["reports", "run-a", "step-1", "grid"], png, "a [grid]").value
        url = md.split("](")[1].rstrip(")")
        assert md.startswith("![a (grid)](/logs/lora_pipeline/reports/run-a/step-1/grid-") and len(md) < 1000
        *key, ext = url.removeprefix("/logs/").split("/")  # what the webserver's /logs/ route does
        assert Path(instance.compute_log_manager.get_captured_local_path(key, ext)).read_bytes() == png
        assert served(instance, ["reports", "run-a", "step-1", "grid"], png, "png") == url  # same content, same URL
    assert image(None, ["x"], png, "grid").value.startswith("![grid](data:image/png;base64,")  # no file route


def test_a_kohya_style_events_log_written_step_by_step_is_the_runs_loss(tmp_path):
    """The layout sd-scripts writes (`<logging_dir>/<prefix><time>/network_train/events...`), appended a
    step at a time as the toy trainer should for its kohya runs, is what kohya ingestion reads."""
    from lora_pipeline.training.tensorboard import append_scalars, loss_from_logs

    events = tmp_path / "logs" / "20261130120000" / "network_train" / "events.out.tfevents.1795891480.host.1.0"
    for step, loss in enumerate([0.5, 0.25, 0.125], start=1):
        append_scalars(events, {"loss/current": loss, "loss/average": 0.3}, step, 1795891480.0 + step)
    assert loss_from_logs(tmp_path / "logs") == ([(1, 0.5), (2, 0.25), (3, 0.125)], "loss/current")


def test_truncation_findings_read_as_english_naming_the_text_encoder(tmp_path):
    """With a real CLIP tokenizer (trained locally): 'the CLIP text encoder (tokenizer)', counted from 1."""
    from transformers import CLIPTokenizer

    from lora_pipeline.render.families import TextEncoder
    from lora_pipeline.render.prompts import check_prompt
    from lora_pipeline.toy.tokenizer import train_clip_tokenizer

    tok = CLIPTokenizer.from_pretrained(str(train_clip_tokenizer(tmp_path / "tok")))
    prompt = "a photo of a chair, " * 20 + "sks_chair"
    found, counts = check_prompt({"tokenizer": TextEncoder(tok, 77, lambda t: t)}, prompt, None, "sks_chair",
                                 "spec", {})
    by = {f.code: f.message for f in found}
    n = counts["prompt"]["tokenizer"]
    assert by["RUNTIME.PROMPT_TRUNCATED"] == (f"The prompt is {n} tokens long for the CLIP text encoder (tokenizer), "
                                              f"which reads only the first 77: the last {n - 77} never reach the model.")
    lost = by["RUNTIME.TRIGGER_TRUNCATED"]
    assert lost.startswith("The trigger 'sks_chair' is at tokens ") and lost.endswith(
        " of the prompt for the CLIP text encoder (tokenizer), which reads only the first 77: the model never "
        "sees the trigger.")
    first, last = (int(x) for x in lost.split("at tokens ")[1].split(" ")[0].split("-"))
    assert 77 < first <= last == n - 1  # 1-based, before the end-of-text token


def test_thumbnail_is_the_file_when_small_resized_when_large_and_none_when_unreadable(tmp_path):
    import os

    from lora_pipeline.report.html_common import THUMB_PX, thumbnail

    rng = __import__("numpy").random.default_rng(0)
    small, large, broken = tmp_path / "small.png", tmp_path / "large.png", tmp_path / "broken.png"
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype="uint8")).save(small)
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype="uint8")).save(large)  # 400 wide
    broken.write_bytes(small.read_bytes()[:200])  # a truncated PNG: header fine, pixels missing
    assert thumbnail(small) == small.read_bytes()  # no larger than a thumbnail: its own bytes
    with Image.open(io.BytesIO(thumbnail(large))) as im:
        assert max(im.size) == THUMB_PX and im.size == (THUMB_PX, 120)
    assert thumbnail(broken) is None and thumbnail(tmp_path / "absent.png") is None
    # Kept by path, size and mtime: a file replaced in place gets a new thumbnail.
    Image.new("RGB", (64, 64), (255, 0, 0)).save(small)
    os.utime(small, ns=(1, 1))
    with Image.open(io.BytesIO(thumbnail(small))) as im:
        assert im.size == (64, 64) and im.getpixel((3, 3)) == (255, 0, 0)


def test_comparison_grid_is_the_largest_cell_of_the_series_within_the_byte_budget(tmp_path):
    from lora_pipeline.report.grid_image import _draw, _next_cell, comparison_grid_png

    rng = __import__("numpy").random.default_rng(1)
    renders = []
    for arm in ("base", "lora_no_trigger", "lora_trigger"):
        for p, s in ((0, 1), (0, 2), (1, 1), (1, 2)):
            rel = f"{arm}-{p}-{s}.png"
            Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype="uint8")).save(tmp_path / rel)
            renders.append({"arm": arm, "prompt_index": p, "seed": s, "path": rel})
    budget = 150_000  # noise: 128 px cells need ~3x this
    png = comparison_grid_png(renders, tmp_path, max_bytes=budget)
    assert png is not None and len(png) <= budget
    by = {(r["prompt_index"], r["seed"], r["arm"]): r["path"] for r in renders}
    series = [128]
    while series[-1] * 4 // 5 >= 16:
        series.append(series[-1] * 4 // 5)

    def size(cell: int) -> int:
        buf = io.BytesIO()
        _draw(by, sorted({(p, s) for p, s, _ in by}), tmp_path, cell).save(buf, format="PNG")
        return buf.tell()

    fits = next(c for c in series if size(c) <= budget)  # what trying every cell in turn gives
    with Image.open(io.BytesIO(png)) as im:
        assert im.width == _draw(by, [(0, 1)], tmp_path, fits).width  # the width says the cell
    assert _next_cell(128, 10 * budget, budget) < 128 * 4 // 5  # far over: cells that cannot fit skipped
    assert _next_cell(128, budget + 1, budget) == 128 * 4 // 5  # just over: the next cell is tried


def test_grid_uses_renders_just_written_from_memory_and_only_while_the_file_is_unchanged(tmp_path):
    """render/recent.py: the same grid bytes from memory as from the files; a file changed since it was
    written is read from disk."""
    from lora_pipeline.render import recent
    from lora_pipeline.render.manifest import write_render
    from lora_pipeline.report.grid_image import _render_rgb, comparison_grid_png

    rng = __import__("numpy").random.default_rng(2)
    manifest = {"prompt": "p", "scheduler": "DDIMScheduler", "steps": 2, "guidance_scale": 4.0, "seed": 1,
                "width": 48, "height": 48, "base_model": {"name": "toy", "sha256": "0" * 64}}
    renders = []
    for arm in ("base", "lora_no_trigger", "lora_trigger"):
        rel = f"{arm}/0-1.png"
        (tmp_path / arm).mkdir()
        image = Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype="uint8"))
        write_render(tmp_path / rel, image, {**manifest, "arm": arm})
        renders.append({"arm": arm, "prompt_index": 0, "seed": 1, "path": rel})
        assert recent.recalled(tmp_path / rel) is image
    from_memory = comparison_grid_png(renders, tmp_path)
    recent.forget_all()
    assert recent.recalled(tmp_path / renders[0]["path"]) is None
    assert comparison_grid_png(renders, tmp_path) == from_memory  # the same pixels either way
    # A file replaced after it was written: its own pixels, not the remembered ones.
    target = tmp_path / renders[1]["path"]
    kept = Image.new("RGB", (48, 48), (0, 0, 255))
    write_render(target, kept, {**manifest, "arm": "lora_no_trigger"})
    Image.new("RGB", (48, 48), (255, 0, 0)).save(target)
    assert recent.recalled(target) is None and _render_rgb(target).getpixel((5, 5)) == (255, 0, 0)
