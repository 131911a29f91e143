"""report.json against the CONTRACT section 4 schema, report.html in headless Chromium (screenshots
saved under test-artifacts/), the run report, reviews (append-only, surviving re-evaluation) and the
diagnose / review commands."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from lora_pipeline.findings import CATALOGUE, VERDICTS

CLEAN, LAST = "clean", "step-00000006"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

# A JSON-schema-like description of CONTRACT section 4: type, required keys, closed top level.
FINDING = {"type": dict, "required": {"code": str, "layer": str, "severity": str, "subject": str, "message": str,
                                      "evidence": dict, "fix": str}}
RENDER = {"type": dict, "required": {"path": str, "arm": str, "prompt": str, "negative_prompt": str, "seed": int,
                                     "width": int, "height": int, "steps": int, "guidance_scale": (int, float),
                                     "scheduler": str, "token_counts": dict, "sha256": str}}
REPORT = {"type": dict, "closed": True, "required": {
    "schema_version": int, "run_id": str, "checkpoint_id": str, "step": (int, type(None)), "verdict": str,
    "findings": [FINDING], "renders": [RENDER], "metrics": dict,
    "provenance": {"type": dict, "required": {"base_model": dict, "lora": dict, "trigger": (str, type(None)),
                                              "eval": dict, "runtime": dict, "dataset_snapshot": dict,
                                              "dagster_run_id": (str, type(None))}}}}


def validate(doc, schema, where="$") -> list[str]:
    errs = []
    if isinstance(schema, list):
        if not isinstance(doc, list):
            return [f"{where}: not a list"]
        for i, item in enumerate(doc):
            errs += validate(item, schema[0], f"{where}[{i}]")
        return errs
    if isinstance(schema, dict):
        if not isinstance(doc, schema["type"]):
            return [f"{where}: not {schema['type'].__name__}"]
        for k, sub in schema.get("required", {}).items():
            if k not in doc:
                errs.append(f"{where}.{k}: missing")
            else:
                errs += validate(doc[k], sub, f"{where}.{k}")
        if schema.get("closed"):
            errs += [f"{where}.{k}: not in the contract" for k in set(doc) - set(schema["required"])]
        return errs
    ok = isinstance(doc, schema) and not (schema is int and isinstance(doc, bool))
    return [] if ok else [f"{where}: {type(doc).__name__} is not {schema}"]


@pytest.fixture(scope="module")
def clean_reports(world):
    from lora_pipeline.report.diagnosis import write_checkpoint_report
    from lora_pipeline.report.run import write_run_report

    for ck in ("step-00000003", LAST):
        write_checkpoint_report(world.config, CLEAN, ck)
    return write_run_report(world.config, CLEAN)


def test_report_json_matches_the_contract_schema(world, clean_reports):
    from lora_pipeline.report.diagnosis import write_checkpoint_report

    for run in (CLEAN, "fault-prefix", "unpaired", "nan-loss"):
        doc, folder = write_checkpoint_report(world.config, run, LAST)
        on_disk = json.loads((folder / "report.json").read_text())
        assert validate(on_disk, REPORT) == [], run
        assert on_disk["schema_version"] == 1 and on_disk["verdict"] in VERDICTS
        for f in on_disk["findings"]:
            info = CATALOGUE[f["code"]]
            assert (f["layer"], f["fix"]) == (info.layer, info.fix) and f["severity"] in ("error", "warn", "info")
        for r in on_disk["renders"]:
            assert (Path(world.config.storage) / r["path"]).is_file()
        assert not list(folder.glob(".*.tmp"))  # written atomically, nothing left half-written


def test_run_report(world, clean_reports):
    doc, folder = clean_reports
    on_disk = json.loads((folder / "report.json").read_text())
    assert [c["checkpoint_id"] for c in on_disk["checkpoints"]] == ["step-00000003", LAST]
    assert all(c["verdict"] == "ok" for c in on_disk["checkpoints"])
    assert on_disk["best"] in {"step-00000003", LAST} and on_disk["candidates"][0]["reason"]
    assert "weights.total_delta_norm" in on_disk["signals"]
    assert any(k.startswith("comparison.") for k in on_disk["signals"])
    assert on_disk["verdict"] == "ok"


def _screenshot(html: Path, name: str) -> Path:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (CI installs it)")
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / name
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--screenshot={out}", "--window-size=1400,1000",
                        html.resolve().as_uri()], capture_output=True, timeout=120, check=False)
    assert out.is_file(), f"chromium wrote no screenshot of {html}"
    return out


def _non_trivial(png: Path) -> None:
    from PIL import Image

    assert png.stat().st_size > 20_000
    with Image.open(png) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 200  # text, banner and thumbnails, not a blank page


def test_checkpoint_html_in_chromium(world, clean_reports):
    folder = Path(world.config.storage) / "reports" / CLEAN / LAST
    html = (folder / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html  # opens from disk alone
    assert 'id="comparison-grid"' in html and html.count("data:image/png;base64,") >= 3
    for arm in ("base", "lora_no_trigger", "lora_trigger"):
        href = f"../../../renders/{CLEAN}/{LAST}/{arm}/0-11.png"
        assert f'href="{href}"' in html and (folder / href).resolve().is_file()
    _non_trivial(_screenshot(folder / "report.html", "checkpoint-report.png"))


def test_run_html_in_chromium(world, clean_reports):
    _, folder = clean_reports
    html = (folder / "report.html").read_text()
    assert "progression" in html and 'id="checkpoints"' in html
    _non_trivial(_screenshot(folder / "report.html", "run-report.png"))


def test_reviews_are_appended_and_survive_reevaluation(world, clean_reports, capsys):
    from lora_pipeline.cli import main
    from lora_pipeline.report.diagnosis import write_checkpoint_report
    from lora_pipeline.storage import Storage

    cfg = str(world.config_path)
    reviews = Storage(world.config.storage).reviews
    before = reviews.read_bytes() if reviews.is_file() else b""
    assert main(["review", "reviewed", "--checkpoint", LAST, "--decision", "reject", "--note", "colours drift",
                 "--by", "ana", "--config", cfg]) == 0
    assert main(["review", "reviewed", "--decision", "needs-work", "--note", "retrain later", "--config", cfg]) == 0
    assert main(["review", "reviewed", "--checkpoint", "step-99", "--decision", "accept", "--note", "x",
                 "--config", cfg]) == 2
    assert main(["review", "nope", "--decision", "accept", "--note", "x", "--config", cfg]) == 2
    after = reviews.read_bytes()
    assert after.startswith(before)  # append-only
    lines = [json.loads(x) for x in after[len(before):].decode().splitlines()]
    assert [(x["checkpoint_id"], x["decision"], x["by"]) for x in lines][:1] == [(LAST, "reject", "ana")]
    assert len(lines) == 2
    # the latest applicable decision is the run-wide needs-work: not rejected any more
    doc, _ = write_checkpoint_report(world.config, "reviewed", LAST)
    assert "REVIEW.REJECTED" not in {f["code"] for f in doc["findings"]}
    assert main(["review", "reviewed", "--checkpoint", LAST, "--decision", "reject", "--note", "still drifts",
                 "--config", cfg]) == 0
    world.evaluate("reviewed")  # re-evaluation clears and rewrites the renders, never the reviews
    doc, folder = write_checkpoint_report(world.config, "reviewed", LAST)
    rejected = [f for f in doc["findings"] if f["code"] == "REVIEW.REJECTED"]
    assert len(rejected) == 1 and rejected[0]["severity"] == "info" and "still drifts" in rejected[0]["message"]
    assert doc["verdict"] == "ok"  # info does not change the verdict
    assert [r["note"] for r in doc["metrics"]["reviews"]] == ["colours drift", "retrain later", "still drifts"]
    assert "still drifts" in (folder / "report.html").read_text()
    # A rejected checkpoint reads as rejected wherever its verdict is shown, and is never proposed as best.
    from lora_pipeline.report.run import write_run_report

    assert "REJECTED BY" in (folder / "report.html").read_text()  # the verdict banner
    run_doc, run_folder = write_run_report(world.config, "reviewed")
    row = next(c for c in run_doc["checkpoints"] if c["checkpoint_id"] == LAST)
    assert row["verdict"] == "ok" and row["review"].startswith("rejected by")
    assert LAST not in [c["checkpoint_id"] for c in run_doc["candidates"]] and run_doc["best"] != LAST
    assert "rejected by" in (run_folder / "report.html").read_text()
    capsys.readouterr()
    assert main(["diagnose", "--run", "reviewed", "--config", cfg]) == 0
    assert f"{LAST}: ok, REJECTED by" in capsys.readouterr().out
    assert reviews.read_bytes().startswith(after)
    capsys.readouterr()


def test_diagnose_prints_latest_reports(world, clean_reports, capsys):
    from lora_pipeline.cli import main

    cfg = str(world.config_path)
    assert main(["diagnose", "--run", CLEAN, "--json", "--config", cfg]) == 0
    doc = json.loads(capsys.readouterr().out)
    [run] = doc["runs"]
    assert run["run_id"] == CLEAN and run["verdict"] == "ok"
    assert {c["checkpoint_id"]: c["verdict"] for c in run["checkpoints"]} == {"step-00000003": "ok", LAST: "ok"}
    assert main(["diagnose", "--run", "fault-prefix", "--checkpoint", LAST, "--config", cfg]) == 0
    text = capsys.readouterr().out
    assert "evaluation_invalid" in text and "RUNTIME.LORA_NOT_APPLIED" in text
    assert main(["diagnose", "--run", "no-such-run", "--config", cfg]) == 1
    assert "no report for run no-such-run" in capsys.readouterr().err
