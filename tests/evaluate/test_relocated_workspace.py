"""A workspace copied (shutil.copytree) or moved to another folder keeps evaluating: its old runs read
their files in the new place (run records keep paths relative to their roots; records written before,
with absolute paths, are re-anchored), and a run added there is evaluated by a plain `evaluate`."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from lora_pipeline.cli import main

TRIGGER = "sks_chair"
CONFIG = f"""\
storage: storage
training_runs: runs
datasets:
  products: {{path: data/products, trigger: {TRIGGER}}}
base_models:
  toy-sd1: models/toy-sd1
eval:
  prompts: ['a photo of {{trigger}}']
  seeds: [5]
  width: 64
  height: 64
  steps: 2
  guidance_scale: 4.0
runtime: {{device: cpu, dtype: float32}}
checks: {{min_images: 1, resolution: 64, checkpoint_recheck_seconds: 0.2}}
"""


def _train(ws: Path, name: str) -> None:
    from lora_pipeline.toy.train import TrainSpec, train

    train(TrainSpec(base=ws / "models" / "toy-sd1", dataset=ws / "data" / "products", out=ws / "runs" / name,
                    trigger=TRIGGER, steps=2, save_every=2, rank=4, alpha=8.0, lr=5e-2, resolution=64,
                    format="native"))


def _evaluate(ws: Path, capsys) -> None:
    code = main(["evaluate", "--config", str(ws / "lora_pipeline.yaml")])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    assert "FAILED" not in err and "Traceback" not in err and "subpath" not in err, err[-3000:]


def _report(ws: Path, run: str) -> dict:
    return json.loads((ws / "storage" / "reports" / run / "step-00000002" / "report.json").read_text())


def _to_legacy(ws: Path, run: str) -> None:
    """Rewrite a run record as records were written before: every path absolute."""
    from lora_pipeline.training.ingest import load_run_record

    record = load_run_record(ws / "storage", run)
    d = dataclasses.asdict(record)
    d["findings"] = [f.to_dict() for f in record.findings]
    del d["dataset"]["rel"]
    path = ws / "storage" / "runs" / run / "run.json"
    path.write_text(json.dumps({"schema_version": 1, **d}))
    assert json.loads(path.read_text())["checkpoints"][0]["path"].startswith(str(ws))


def test_copied_then_moved_workspace_evaluates_old_and_new_runs(tmp_path, toy_base, toy_dataset, capsys):
    ws = tmp_path / "ws"
    shutil.copytree(toy_base, ws / "models" / "toy-sd1")
    shutil.copytree(toy_dataset, ws / "data" / "products")
    (ws / "lora_pipeline.yaml").write_text(CONFIG)
    _train(ws, "run-a")
    _evaluate(ws, capsys)
    first = _report(ws, "run-a")
    _to_legacy(ws, "run-a")  # a record from before relative paths

    copy = tmp_path / "copies" / "ws-copy"
    shutil.copytree(ws, copy)
    _train(copy, "run-b")
    _evaluate(copy, capsys)
    for run in ("run-a", "run-b"):
        lora = _report(copy, run)["provenance"]["lora"]
        assert Path(lora["path"]).is_relative_to(copy / "runs" / run), lora["path"]
    assert _report(copy, "run-a")["verdict"] == first["verdict"]
    assert json.loads((copy / "storage" / "runs" / "run-b" / "run.json").read_text())["folder"] == "run-b"

    moved = tmp_path / "moved" / "ws-moved"
    moved.parent.mkdir()
    shutil.move(copy, moved)
    _train(moved, "run-c")
    _evaluate(moved, capsys)
    for run in ("run-a", "run-b", "run-c"):
        lora = _report(moved, run)["provenance"]["lora"]
        assert Path(lora["path"]).is_relative_to(moved / "runs" / run), lora["path"]
    run_b = json.loads((moved / "storage" / "reports" / "run-b" / "report.json").read_text())
    assert run_b["run"]["folder"] == str(moved / "runs" / "run-b")
    # the original workspace is untouched by the copies' runs
    assert not (ws / "runs" / "run-b").exists() and not (ws / "storage" / "reports" / "run-b").exists()
