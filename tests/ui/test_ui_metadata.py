"""What a user sees of the reports in the Dagster UI, in a real headless Chromium on the real webserver
of the demo instance, with no click: the comparison grid and curves inline (an <img> the browser
decoded, not markdown behind "Show Markdown"), a report link the webserver answers with the report,
a findings table whose text column stays wide, the global lineage opened on the assets."""

from __future__ import annotations

import io
import json
import urllib.request
from pathlib import Path

from lora_pipeline.report.run_html import ELSEWHERE, SAME_AS
from lora_pipeline.storage import checkpoint_partition_key
from lora_pipeline.training.curves import informative

from .browser import Tab

GROUPS = ("dataset", "training", "evaluation", "reports")
ASSETS = ("dataset_snapshot", "training_run", "lora_checkpoint", "eval_renders", "checkpoint_report", "run_report")
# Dagster opens the global lineage with every group collapsed when there is more than one group, unless
# the URL (or this browser's saved choice) names the groups to expand (ui-core asset-graph/layout.ts).
LINEAGE_EXPANDED = "/asset-groups?expanded=" + ",".join(f"global@global:{g}" for g in GROUPS)
ROW_JS = """(() => {{
  const row = [...document.querySelectorAll('tr')].find(r => r.firstElementChild
      && r.firstElementChild.textContent.trim() === {key});
  if (!row) return null;
  const img = row.querySelector('img'), link = row.querySelector('a[href]');
  return {{text: row.textContent, src: img && img.getAttribute('src'), complete: !!img && img.complete,
          natural: img ? [img.naturalWidth, img.naturalHeight] : null,
          shown: img ? [img.getBoundingClientRect().width, img.getBoundingClientRect().height] : null,
          href: link && link.getAttribute('href')}};
}})()"""


def _row(tab: Tab, key: str, image: bool = False, markdown: bool = False, timeout: float = 60) -> dict:
    # A row appears before its value cell renders: for a markdown value wait for it (an image, or
    # Dagster's "Show Markdown" toggle), so that what is asserted is what the page settles on.
    done = " && r.complete" if image else " && (r.src || r.text.includes('Show Markdown'))" if markdown else ""
    return tab.wait_for(f"(r => r{done} && r)({ROW_JS.format(key=json.dumps(key))})", timeout=timeout)


def _get(url: str) -> tuple[bytes, dict]:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read(), dict(r.headers)


def _inline_image(tab: Tab, webserver: str, key: str) -> tuple[dict, bytes]:
    row = _row(tab, key, markdown=True)
    assert "Show Markdown" not in row["text"] and row["src"], f"{key} is not an inline image: {row['text'][:200]}"
    row = _row(tab, key, image=True)
    assert row["natural"][0] > 100 and row["natural"][1] > 100, row
    assert row["shown"][0] > 100 and row["shown"][1] > 100, row  # laid out in the page, not hidden
    data, _ = _get(webserver + row["src"])
    return row, data


def _reports(root: Path) -> dict[str, dict]:
    """run id -> its run report.json, for every run of the demo (whatever the demo names them)."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((root / "storage" / "reports").glob("*/report.json"))}


def _a_rendered_checkpoint(root: Path) -> tuple[str, str, dict]:
    for folder in sorted((root / "storage" / "reports").glob("*/step-*"), reverse=True):
        doc = json.loads((folder / "report.json").read_text())
        if doc["renders"]:
            return folder.parent.name, folder.name, doc
    raise AssertionError("the demo rendered no checkpoint")


def test_checkpoint_report_page_shows_the_grid_inline_with_a_report_link(demo_world, webserver):
    from PIL import Image

    from lora_pipeline.report.grid_image import comparison_grid_png

    root, _, _ = demo_world
    run, cid, doc = _a_rendered_checkpoint(root)
    url = f"{webserver}/assets/checkpoint_report?view=partitions&partition={checkpoint_partition_key(run, cid)}"
    with Tab(1600, 1500) as tab:
        tab.goto(url.replace("|", "%7C"))
        row, png = _inline_image(tab, webserver, "comparison_grid")
        # the image the browser decoded is this checkpoint's grid, drawn from its renders
        assert png == comparison_grid_png(doc["renders"], root / "storage")
        with Image.open(io.BytesIO(png)) as im:
            assert list(im.size) == row["natural"]
        link = _row(tab, "report_html_download")
        assert link["href"].startswith(f"/logs/lora_pipeline/reports/{run}/{cid}/report-")
        page, headers = _get(webserver + link["href"])
        # a click downloads the report as it was written (the webserver's file route sends attachments)
        assert page == (root / "storage" / "reports" / run / cid / "report.html").read_bytes()
        assert headers["content-disposition"].startswith("attachment") and page.startswith(b"<!DOCTYPE html>")
        findings = _row(tab, "findings")
        assert doc["findings"][0]["code"] in findings["text"] and "Fix: " in findings["text"]
        width = tab.eval("[...document.querySelectorAll('th')].find(e => e.textContent.startsWith("
                         "'severity, message and fix')).getBoundingClientRect().width")
        assert width >= 200, f"the findings' text column is squeezed to {width}px"
        tab.screenshot("ui-checkpoint-report.png")


def test_run_report_and_training_run_pages_show_their_curves_inline(demo_world, webserver):
    from lora_pipeline.report.run_html import key_signal_pngs

    root, _, _ = demo_world
    curves = {run: [name for name, _, _ in key_signal_pngs(doc)] for run, doc in _reports(root).items()}
    run, names = next((r, n) for r, n in curves.items() if n)  # a run whose effects move over its checkpoints
    records = {p.parent.name: json.loads(p.read_text()) for p in (root / "storage" / "runs").glob("*/run.json")}
    logged = sorted(r for r, rec in records.items() if rec["loss"])
    assert logged, "no demo run logged a training loss"
    with Tab(1600, 1400) as tab:
        tab.goto(f"{webserver}/assets/run_report?view=partitions&partition={run}")
        for name in names:
            _, png = _inline_image(tab, webserver, f"{name.split('.')[-1]}_curve")
            assert png.startswith(b"\x89PNG")
        tab.screenshot("ui-run-report.png")
        tab.goto(f"{webserver}/assets/training_run?view=partitions&partition={logged[0]}")
        _, png = _inline_image(tab, webserver, "loss_curve")
        assert png.startswith(b"\x89PNG")
        tab.screenshot("ui-training-run.png")


def test_global_lineage_opens_on_the_assets_with_the_expanded_link(webserver):
    names = f"{list(ASSETS)}.filter(n => document.body.innerText.includes(n))"
    with Tab(1600, 1000) as tab:
        tab.goto(webserver + "/asset-groups")
        tab.wait_for("document.body.innerText.includes('reports')")
        assert tab.eval(names) == [], "Dagster now opens the global lineage expanded: simplify the docs"
        tab.goto(webserver + LINEAGE_EXPANDED)
        assert tab.wait_for(f"{names}.length === {len(ASSETS)} && {names}")
        tab.screenshot("ui-global-lineage.png")


def test_demo_run_reports_plot_only_what_moves(demo_world):
    root, _, _ = demo_world
    for run, doc in _reports(root).items():
        assert doc["signals"] and not [k for k in doc["signals"] if k.startswith("quality.thresholds.")], run
        html = (root / "storage" / "reports" / run / "report.html").read_text()
        plotted = {a.split('"')[0] for a in html.split('<img alt="')[1:]}
        for name, points in doc["signals"].items():
            if SAME_AS.get(name) in doc["signals"] or name in ELSEWHERE:
                continue  # the same numbers as another signal's plot, or drawn in another section
            if not informative(points):  # a flat line says nothing: a sentence names it instead
                assert name not in plotted and f"<code>{name}</code>" in html.split('id="flat-signals"')[1], run
        assert {n for n in plotted if "." in n} <= {n for n, pts in doc["signals"].items() if informative(pts)}, run
