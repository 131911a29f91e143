"""The one-shot settle re-check (lora_pipeline.training.settle via scan_runs_rechecked), on real run
folders, no Dagster: young files that hold still over one re-check count now; the others are left
out with the reason. The re-check's wait is injected, so nothing here depends on the clock."""

from __future__ import annotations

import os
import time

from lora_pipeline.training.scan import scan_runs, scan_runs_rechecked
from lora_pipeline.training.settle import CHANGED, HEADER, TRUNCATED
from tests.training import fixtures as fx


def test_files_written_just_now_count_after_one_recheck(workspace, runs_dir, toy_lora):
    _tmp, config, _cfg = workspace
    fx.generic(runs_dir, toy_lora[0])  # written a moment ago; a trainer that declares nothing
    waits: list[float] = []
    [scan] = scan_runs_rechecked(config, sleep=waits.append)
    assert sorted(c.checkpoint_id for c in scan.checkpoints) == ["step-00000300", "step-00000600"]
    assert scan.left == [] and scan.waiting == []
    assert waits == [config.checks.checkpoint_recheck_seconds]  # one wait for all pending files
    # the re-check's observation is the index's: the sensor's next tick agrees without waiting
    assert [c.checkpoint_id for c in scan_runs(config)[0].checkpoints] == ["step-00000300", "step-00000600"]


def test_changing_half_written_and_truncated_files_are_left_out_with_why(workspace, runs_dir, toy_lora):
    _tmp, config, _cfg = workspace
    run = fx.generic(runs_dir, toy_lora[0])
    moving = run / "chair_lora_step600.safetensors"
    data = moving.read_bytes()
    half = run / "chair_lora_step900.safetensors"
    half.write_bytes(data[: len(data) // 3])
    old = run / "chair_lora_step1200.safetensors"
    old.write_bytes(data[: len(data) // 2])
    long_ago = time.time() - 10 * config.checks.checkpoint_settle_seconds
    os.utime(old, (long_ago, long_ago))
    waits: list[float] = []

    def trainer_writes(seconds: float) -> None:  # the trainer rewrites one file during the re-check
        waits.append(seconds)
        moving.write_bytes(data)
        st = moving.stat()
        os.utime(moving, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    [scan] = scan_runs_rechecked(config, sleep=trainer_writes)
    assert len(waits) == 1
    assert [c.checkpoint_id for c in scan.checkpoints] == ["step-00000300"]
    why = {lf.path.name: lf.why for lf in scan.left}
    assert why == {moving.name: CHANGED, half.name: HEADER, old.name: TRUNCATED}
    detail = {lf.path.name: lf.detail for lf in scan.left}
    assert "size/mtime changed" in detail[moving.name] and "header incomplete" in detail[half.name]
    assert "truncated" in detail[old.name]
    assert sorted(scan.waiting) == sorted(lf.rel for lf in scan.left)


def test_only_old_truncated_files_pending_means_no_wait_and_unselected_runs_are_not_rechecked(
        workspace, runs_dir, toy_lora):
    tmp, config, _cfg = workspace
    run = fx.generic(runs_dir, toy_lora[0])
    long_ago = time.time() - 10 * config.checks.checkpoint_settle_seconds
    for p in run.glob("*.safetensors"):
        os.utime(p, (long_ago, long_ago))  # settled: complete without any re-check
    bad = run / "chair_lora_step900.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    os.utime(bad, (long_ago, long_ago))
    fresh = fx.generic(tmp / "staging", toy_lora[0]).rename(runs_dir / "fresh-run")
    waits: list[float] = []
    scans = {s.run_id: s for s in scan_runs_rechecked(config, run_ids=["loose-files"], sleep=waits.append)}
    assert waits == []  # a truncated old file cannot settle: nothing to wait for
    assert [lf.why for lf in scans["loose-files"].left] == [TRUNCATED]
    assert len(scans["loose-files"].checkpoints) == 2
    assert scans[fresh.name].checkpoints == [] and scans[fresh.name].left == []  # not selected: first look only
    assert len(scans[fresh.name].waiting) == 2
