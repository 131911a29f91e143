"""Bad input gives a finding or a one-line error; every training finding is planted and detected."""

from __future__ import annotations

import json
import os
import struct
import time

import numpy as np
import pytest

from lora_pipeline.training.ingest import IngestError, ingest_run
from lora_pipeline.training.norms import with_norms
from tests.training import fixtures as fx


def _by_code(record, code):
    return [f for f in record.findings if f.code == code]


def _old(path, age=3600):
    t = time.time() - age
    os.utime(path, (t, t))


def test_truncated_absurd_and_pickle_files(runs_dir, workspace, toy_lora):
    run = fx.generic(runs_dir, toy_lora[0])
    good = (run / "chair_lora_step600.safetensors").read_bytes()
    (run / "cut_step700.safetensors").write_bytes(good[: len(good) // 2])
    (run / "absurd_step800.safetensors").write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    (run / "old.ckpt").write_bytes(b"\x80\x04K\x01.")
    (run / "lora.pt").write_bytes(b"PK\x03\x04")
    for name in ("cut_step700.safetensors", "absurd_step800.safetensors"):
        _old(run / name)
    r = ingest_run(run, workspace[1]).record
    invalid = {f.evidence["file"]: f.message for f in _by_code(r, "RUNTIME.LORA_INVALID")}
    assert set(invalid) == {"cut_step700.safetensors", "absurd_step800.safetensors", "old.ckpt", "lora.pt"}
    assert all("\n" not in m for m in invalid.values())
    assert "truncated" in invalid["cut_step700.safetensors"] and "absurd" in invalid["absurd_step800.safetensors"]
    assert "never loaded" in invalid["old.ckpt"]
    assert [c.step for c in r.checkpoints] == [300, 600] and sorted(r.ignored) == sorted(invalid)


def test_checkpoint_still_being_written_is_pending_not_invalid(runs_dir, workspace, toy_lora):
    run = fx.generic(runs_dir, toy_lora[0])
    good = (run / "chair_lora_step600.safetensors").read_bytes()
    (run / "chair_lora_step900.safetensors").write_bytes(good[:1000])  # fresh, header-incomplete
    r = ingest_run(run, workspace[1]).record
    assert r.pending == ["chair_lora_step900.safetensors"] and not _by_code(r, "RUNTIME.LORA_INVALID")
    assert [c.step for c in r.checkpoints] == [300, 600]


def test_run_without_checkpoints_is_recorded(runs_dir, workspace):
    (runs_dir / "nothing-yet").mkdir()
    (runs_dir / "nothing-yet" / "config.yaml").write_text("job: extension\nconfig:\n  name: x\n  process: []\n")
    r = ingest_run(runs_dir / "nothing-yet", workspace[1]).record
    assert r.format == "ai-toolkit" and r.checkpoints == [] and r.run_id == "nothing-yet"


@pytest.mark.parametrize("fmt", ["json", "yaml", "toml"])
def test_malformed_config_is_config_unknown_with_the_error(runs_dir, workspace, toy_lora, native_run, kohya_run, fmt):
    if fmt == "json":
        run = fx.native(runs_dir, native_run)
        (run / "lora_run.json").write_text('{"format": "lora-pipeline-native", "rank": ')
    elif fmt == "yaml":
        run = runs_dir / "aitk"
        run.mkdir()
        (run / "config.yaml").write_text("config:\n  name: [unclosed\n  process:\n")
        (run / "loss_log.db").write_bytes(b"not sqlite at all")
    else:
        run = fx.kohya(runs_dir, kohya_run)
        (run / "config.toml").write_text("network_dim = = 4\n")
    r = ingest_run(run, workspace[1]).record
    errs = [f for f in _by_code(r, "TRAINING.CONFIG_UNKNOWN") if "error" in f.evidence]
    assert errs, r.findings
    assert {"json": "JSONDecodeError", "yaml": "Error", "toml": "TOMLDecodeError"}[fmt] in errs[0].evidence["error"]
    assert "\n" not in errs[0].message
    if fmt == "json":  # the checkpoints still count, facts come from their headers
        assert len(r.checkpoints) == 2 and r.rank == 4


def test_missing_folder_is_one_line_error(workspace):
    with pytest.raises(IngestError, match="training run folder not found"):
        ingest_run(workspace[0] / "runs" / "nope", workspace[1])


# ---- training findings, each planted ----

def _native_with(runs_dir, native_run, loss=None, edit=None, name="native run"):
    run = fx.native(runs_dir, native_run, name)
    if loss is not None:
        (run / "loss.jsonl").write_text("".join(json.dumps({"step": s, "loss": v if np.isfinite(v) else str(v)}) + "\n"
                                                for s, v in loss))
    if edit:
        doc = json.loads((run / "lora_run.json").read_text())
        edit(doc)
        (run / "lora_run.json").write_text(json.dumps(doc))
    return run


def test_clean_run_has_no_loss_or_weight_findings(runs_dir, workspace, native_run):
    r = with_norms(workspace[1], ingest_run(fx.native(runs_dir, native_run), workspace[1]).record)
    codes = {f.code for f in r.findings}
    assert not codes & {"TRAINING.LOSS_NOT_FINITE", "TRAINING.LOSS_DIVERGED", "TRAINING.WEIGHTS_EXPLODING",
                        "TRAINING.OVERTRAINING_SUSPECTED", "TRAINING.CONFIG_UNKNOWN"}


def test_loss_not_finite(runs_dir, workspace, native_run):
    loss = [(s, 0.3) for s in range(1, 21)]
    loss[11] = (12, float("nan"))
    r = ingest_run(_native_with(runs_dir, native_run, loss), workspace[1]).record
    (f,) = _by_code(r, "TRAINING.LOSS_NOT_FINITE")
    assert f.evidence["first_step"] == 12 and f.evidence["count"] == 1


def test_loss_diverged_with_smoothed_evidence(runs_dir, workspace, native_run):
    loss = [(s, 0.3 - 0.01 * s) for s in range(1, 21)] + [(s, 0.9) for s in range(21, 41)]
    r = ingest_run(_native_with(runs_dir, native_run, loss), workspace[1]).record
    (f,) = _by_code(r, "TRAINING.LOSS_DIVERGED")
    assert f.evidence["min_step"] <= 21 and f.evidence["ratio"] > 2.0 and f.evidence["tail_points"] >= 3
    noisy = [(s, 0.2 + 0.05 * ((s * 7919) % 5) / 5) for s in range(1, 60)]  # noisy but flat: not diverged
    r2 = ingest_run(_native_with(runs_dir, native_run, noisy, name="flat"), workspace[1]).record
    assert not _by_code(r2, "TRAINING.LOSS_DIVERGED")


def test_aggressive_settings(runs_dir, workspace, native_run):
    def edit(doc):
        doc["network"]["rank"] = 128
        doc["learning_rate"] = 1e-2
        doc["steps"] = 4000
    r = ingest_run(_native_with(runs_dir, native_run, edit=edit), workspace[1]).record
    (f,) = _by_code(r, "TRAINING.AGGRESSIVE_SETTINGS")
    assert {x["rule"] for x in f.evidence["rules"]} == {"rank_per_image", "learning_rate", "steps_per_image"}
    assert r.conflicts["rank"]  # lora_run.json says 128, the weights say 4: both kept


def test_weights_exploding(runs_dir, workspace, toy_lora):
    run = runs_dir / "boom"
    fx._save(run / "boom_step100.safetensors", toy_lora[0], {})
    fx._save(run / "boom_step200.safetensors", fx.at_step(toy_lora[0], 50.0), {})
    r = ingest_run(run, workspace[1]).record
    assert not _by_code(r, "TRAINING.WEIGHTS_EXPLODING")  # no norms at ingestion: training/norms.py
    (f,) = _by_code(with_norms(workspace[1], r), "TRAINING.WEIGHTS_EXPLODING")
    assert f.evidence["jumps"][0]["norm_ratio"] > 40 and f.evidence["jumps"][0]["step_ratio"] == 2.0
    (again,) = _by_code(with_norms(workspace[1], r), "TRAINING.WEIGHTS_EXPLODING")  # replaced, not added
    assert again.evidence == f.evidence


def test_overtraining_suspected_training_half(runs_dir, workspace, toy_lora):
    run = runs_dir / "long"
    for step, scale in ((800, 1.0), (1600, 1.6), (2400, 2.2)):
        fx._save(run / f"long_step{step}.safetensors", fx.at_step(toy_lora[0], scale),
                 {"ss_dataset_dirs": json.dumps({"1_products": {"n_repeats": 1, "img_count": 8}})})
    r = with_norms(workspace[1], ingest_run(run, workspace[1]).record)
    (f,) = _by_code(r, "TRAINING.OVERTRAINING_SUSPECTED")
    assert f.evidence["suspect_checkpoints"] == ["step-00001600", "step-00002400"]
    assert f.evidence["half"] == "training" and f.evidence["norm_growth"] > 1.25


def test_config_unknown_for_missing_facts_and_conflicts(runs_dir, workspace, kohya_run):
    run = fx.kohya(runs_dir, kohya_run)
    (run / "config.toml").write_text('network_dim = 16\npretrained_model_name_or_path = "other-model"\n')
    r = ingest_run(run, workspace[1]).record
    conflict = [f for f in r.findings if f.code == "TRAINING.CONFIG_UNKNOWN" and "conflicts" in f.evidence]
    assert set(conflict[0].evidence["conflicts"]) == {"rank", "base_model.name"}
    assert r.conflicts["rank"]["config.toml"] == 16
    assert r.conflicts["rank"]["header:run-kohya-step00000006.safetensors"] == 4


def test_dataset_not_snapshotted_then_linked_then_source_changed(runs_dir, workspace, native_run, toy_dataset, tmp_path):
    import shutil

    from lora_pipeline.dataset.snapshot_write import take_snapshot

    ds = tmp_path / "ds"
    shutil.copytree(toy_dataset, ds)
    for p in ds.rglob("*"):
        _old(p, 7200)
    cfg = workspace[1].model_copy(update={"datasets": {"products": workspace[1].datasets["products"].model_copy(
        update={"path": ds})}})
    run = _native_with(runs_dir, native_run, edit=lambda d: d["dataset"].update(path=str(ds)))
    r = ingest_run(run, cfg).record
    assert _by_code(r, "DATASET.NOT_SNAPSHOTTED") and r.dataset.snapshot_id is None
    snap = take_snapshot(cfg.storage, "products", ds)
    r = ingest_run(run, cfg).record
    assert r.dataset.snapshot_id == snap.snapshot_id and not _by_code(r, "DATASET.NOT_SNAPSHOTTED")
    caption = sorted(ds.rglob("*.txt"))[0]
    caption.write_text(caption.read_text() + ", edited")  # modified after training started
    r = ingest_run(run, cfg).record
    (f,) = _by_code(r, "DATASET.SOURCE_CHANGED")
    assert f.evidence["changed"] == [caption.relative_to(ds).as_posix()]
