"""`evaluate` on a workspace whose datasets hold hostile files (a FIFO, a symlink loop, a name that is
not UTF-8, a 2 GiB sparse file) and whose storage lies inside a dataset folder: no traceback, every
dataset is snapshotted with those files refused and reported, the run is evaluated, and the storage's
own files (renders, reports) never become part of the dataset, so a second `evaluate` is up to date."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from lora_pipeline.cli import main
from tests.dataset.test_hostile_files import _FifoWatch

TRIGGER = "sks_chair"
CONFIG = f"""\
storage: data/products/storage
training_runs: runs
datasets:
  products: {{path: data/products, trigger: {TRIGGER}}}
  junk: {{path: data/junk, trigger: {TRIGGER}}}
base_models:
  toy-sd1: models/toy-sd1
eval:
  prompts: ['a photo of {{trigger}}']
  seeds: [5]
  width: 64
  height: 64
  steps: 2
runtime: {{device: cpu, dtype: float32}}
checks: {{min_images: 1, resolution: 64, checkpoint_recheck_seconds: 0.2}}
"""


def _junk(root: Path, good: Path) -> Path:
    root.mkdir(parents=True)
    shutil.copy(good, root / "ok.png")
    (root / "ok.txt").write_text(f"a photo of {TRIGGER}")
    os.mkfifo(root / "fifo.png")
    os.symlink("loop.png", root / "loop.png")
    fd = os.open(os.fsencode(root) + b"/bad\xff.png", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, good.read_bytes())
    os.close(fd)
    with open(root / "huge.png", "wb") as f:
        f.truncate(2 * 1024 ** 3)
    return root


def test_hostile_datasets_and_storage_inside_a_dataset(tmp_path, toy_base, toy_dataset, capsys, monkeypatch):
    from lora_pipeline.dataset import guard
    from lora_pipeline.dataset.snapshot import latest_snapshot
    from lora_pipeline.toy.train import TrainSpec, train

    monkeypatch.setattr(guard, "_PROTECTED", {})
    ws = tmp_path / "ws"
    shutil.copytree(toy_base, ws / "models" / "toy-sd1")
    shutil.copytree(toy_dataset, ws / "data" / "products")
    junk = _junk(ws / "data" / "junk", next((ws / "data" / "products").rglob("*.png")))
    (ws / "lora_pipeline.yaml").write_text(CONFIG)
    train(TrainSpec(base=ws / "models" / "toy-sd1", dataset=ws / "data" / "products", out=ws / "runs" / "run-a",
                    trigger=TRIGGER, steps=2, save_every=2, rank=4, alpha=8.0, lr=5e-2, resolution=64,
                    format="native"))
    watch = _FifoWatch(junk / "fifo.png")
    try:
        code = main(["evaluate", "--config", str(ws / "lora_pipeline.yaml")])
        out, err = capsys.readouterr()
        assert code == 0, err[-3000:]
        assert "Traceback" not in out + err and "FAILED" not in err
        code = main(["evaluate", "--config", str(ws / "lora_pipeline.yaml")])
        out2, err2 = capsys.readouterr()
    finally:
        assert not watch.stop(), "the FIFO was opened"
    storage = ws / "data" / "products" / "storage"
    report = json.loads((storage / "reports" / "run-a" / "step-00000002" / "report.json").read_text())
    assert report["run_id"] == "run-a" and report["renders"]
    snap = latest_snapshot(storage, "junk")
    refused = dict(e.split("\t") for e in snap.refused_symlinks)
    assert refused == {"bad\\xff.png": "file name is not valid UTF-8", "fifo.png": "special file (FIFO)",
                       "huge.png": "file too large (2.0 GiB > 256.0 MiB cap)", "loop.png": "symlink loop"}
    assert snap.manifest()["path"].to_list() == ["ok.png"]
    products = latest_snapshot(storage, "products")
    assert not any(k.startswith("storage/") for k in products.files)
    # renders and reports were written inside the products folder since: it is still up to date
    assert code == 0, err2[-3000:]
    assert "0 materialized" in out2, out2
