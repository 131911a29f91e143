"""`lora-pipeline trace`: a copied render walks back to the exact source files of the snapshot its run
trained on, every hash re-checked; a checkpoint file replaced after the render is reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

LAST = "step-00000006"


def _trace(world, image, capsys) -> dict:
    from lora_pipeline.cli import main

    assert main(["trace", str(image), "--json", "--config", str(world.config_path)]) == 0
    return json.loads(capsys.readouterr().out)


def test_copied_render_traces_to_the_snapshot_source_files(world, tmp_path, capsys):
    from lora_pipeline.dataset.snapshot import load_snapshot
    from lora_pipeline.training.ingest import load_run_record

    storage = Path(world.config.storage)
    copy = tmp_path / "look-at-this.png"
    shutil.copy(storage / "renders" / "nan-loss" / LAST / "lora_trigger" / "0-11.png", copy)
    t = _trace(world, copy, capsys)
    record = load_run_record(storage, "nan-loss")
    snap = load_snapshot(storage, "products", record.dataset.snapshot_id)
    assert t["render"]["arm"] == "lora_trigger" and t["render"]["dagster"]["partition"] == f"{LAST}|nan-loss"
    assert t["render"]["sidecar_matches_chunk"] is True
    assert t["checkpoint"]["step"] == 6 and t["checkpoint"]["check"]["status"] == "ok"
    assert t["checkpoint"]["path"] == record.checkpoint(LAST).path
    assert t["run"]["folder"] == record.folder and t["run"]["format"] == "native"
    assert t["run"]["dagster"] == {"asset": "training_run", "partition": "nan-loss", "run_id": None}
    assert t["dataset_snapshot"]["snapshot_id"] == snap.snapshot_id
    assert Path(t["dataset_snapshot"]["manifest"]).is_file()
    files = {f["relative_path"]: f for f in t["source_files"]}
    assert {k: f["sha256"] for k, f in files.items()} == snap.files  # exactly the snapshot's files
    assert all(Path(f["path"]).parent.is_relative_to(world.root / "data" / "products") for f in files.values())
    assert all(f["status"] == "ok" and f["stored_copy_status"] == "ok" for f in files.values())
    assert t["mismatches"] == [] and t["unverifiable"] == [] and t["findings"] == []
    assert t["summary"] == {"match": len(t["checks"]), "mismatch": 0, "unverifiable": 0}
    # every claim of the chunk was checked, not only the file hashes
    assert {"render recorded for this checkpoint", "render settings (as recorded by its evaluation)",
            "render manifest (chunk vs stored sidecar)", "A1111 parameters chunk (vs the manifest)",
            "checkpoint sha256 (render manifest vs run record)", "checkpoint path (render manifest vs run record)",
            "run record", "dataset snapshot", "base model", "checkpoint file"} <= {c["what"] for c in t["checks"]}


def test_replaced_checkpoint_file_is_reported(world, tmp_path, capsys):
    from lora_pipeline.cli import main
    from lora_pipeline.training.ingest import load_run_record

    record = load_run_record(world.config.storage, "nan-loss")
    ck = Path(record.checkpoint(LAST).path)
    saved = tmp_path / "saved.safetensors"
    shutil.copy2(ck, saved)
    image = Path(world.config.storage) / "renders" / "nan-loss" / LAST / "lora_trigger" / "0-11.png"
    try:
        shutil.copy(record.checkpoint("step-00000003").path, ck)  # someone overwrote the checkpoint
        t = _trace(world, image, capsys)
        bad = {c["what"]: c for c in t["mismatches"]}
        assert set(bad) == {"checkpoint file"}
        assert bad["checkpoint file"]["status"] == "mismatch"
        assert bad["checkpoint file"]["expected"] == t["checkpoint"]["sha256_at_render"] != bad["checkpoint file"]["now"]
        assert t["summary"] == {"match": len(t["checks"]) - 1, "mismatch": 1, "unverifiable": 0}
        assert main(["trace", str(image), "--config", str(world.config_path)]) == 0
        text = capsys.readouterr().out
        assert f"checks: {len(t['checks']) - 1} match, 1 mismatch, 0 unverifiable" in text
        assert "MISMATCH     checkpoint file: the bytes on disk now hash differently" in text
    finally:
        shutil.copy2(saved, ck)


def test_not_a_render_is_one_line_usage_error(world, tmp_path, capsys):
    from PIL import Image

    from lora_pipeline.cli import main

    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert main(["trace", str(plain), "--config", str(world.config_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no lora_pipeline chunk" in err
