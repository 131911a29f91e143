"""`lora-pipeline evaluate` right after a run folder was copied in: one call evaluates every complete
checkpoint (one short settle re-check instead of the sensor's next tick), and a file still being
written is left out, listed with the reason, while the rest is evaluated and the command exits 0."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

from lora_pipeline.storage import checkpoint_partition_key
from tests.evaluate.conftest import write_config


def _fresh_copy(run: Path, runs: Path) -> Path:
    """The run copied just now (fresh mtimes), its run file declaring no checkpoint and no finish:
    only the files themselves can say they are complete."""
    dest = Path(shutil.copytree(run, runs / run.name, copy_function=shutil.copyfile))
    doc = json.loads((dest / "lora_run.json").read_text())
    doc["checkpoints"], doc["finished_at"] = [], None
    (dest / "lora_run.json").write_text(json.dumps(doc))
    return dest


def _evaluated(config) -> set[str]:
    import dagster as dg

    from lora_pipeline.instance import prepare_dagster_home

    with dg.DagsterInstance.from_config(str(prepare_dagster_home(config))) as inst:
        return inst.get_materialized_partitions(dg.AssetKey("eval_renders"))


def test_run_copied_just_now_is_evaluated_by_one_evaluate(tmp_path, toy_base, toy_dataset, three_checkpoint_run):
    from assets.launch import materialize
    from lora_pipeline.config import load_config

    _fresh_copy(three_checkpoint_run, tmp_path / "runs")
    config = load_config(write_config(tmp_path, toy_base, toy_dataset))
    waits: list[float] = []
    summary = materialize(config, sleep=waits.append)  # nothing writes: the wait itself is not needed
    run = three_checkpoint_run.name
    keys = {checkpoint_partition_key(run, f"step-0000000{s}") for s in (2, 4, 6)}
    assert waits == [config.checks.checkpoint_recheck_seconds]  # one re-check for all the young files
    assert set(summary.checkpoints) == keys and not summary.left and not summary.failed
    assert _evaluated(config) == keys
    assert summary.lines()[0].startswith("1 run(s), 3 checkpoint(s): ")


def test_file_still_written_is_listed_not_evaluated_and_the_rest_is(tmp_path, toy_base, toy_dataset,
                                                                    three_checkpoint_run, capsys):
    from lora_pipeline.cli import main
    from lora_pipeline.config import load_config

    run = _fresh_copy(three_checkpoint_run, tmp_path / "runs")
    ckpts = run / "checkpoints"
    moving = ckpts / f"{run.name}-step00000006.safetensors"
    half = ckpts / f"{run.name}-step00000008.safetensors"
    half.write_bytes(moving.read_bytes()[:1000])  # header incomplete: the trainer is mid-write
    cfg = write_config(tmp_path, toy_base, toy_dataset, extra="  checkpoint_recheck_seconds: 0.5\n")
    stop = threading.Event()

    def trainer() -> None:  # rewrites step 6 in place, over and over, until the command is done
        mtime = time.time_ns()
        while not stop.is_set():
            mtime += 1_000_000
            os.utime(moving, ns=(mtime, mtime))
            stop.wait(0.005)

    writer = threading.Thread(target=trainer, daemon=True)
    writer.start()
    try:
        code = main(["evaluate", "--config", str(cfg)])
    finally:
        stop.set()
        writer.join()
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    assert "1 run(s), 2 checkpoint(s), 2 left as possibly still being written: " in out
    left = [line for line in err.splitlines() if line.startswith("LEFT ")]
    assert len(left) == 2, err[-2000:]
    by_file = {Path(line[5:].split(": ", 1)[0]).name: line for line in left}
    assert "size/mtime changed" in by_file[moving.name] and "header incomplete" in by_file[half.name]
    assert all("re-run `lora-pipeline evaluate` once it stops changing; the sensor picks it up within 60 s"
               in line for line in left)
    assert _evaluated(load_config(cfg)) == {checkpoint_partition_key(run.name, "step-00000002"),
                                          checkpoint_partition_key(run.name, "step-00000004")}


def test_summary_counts_files_being_written_and_truncated_files_apart(tmp_path):
    from assets.launch import LaunchSummary
    from lora_pipeline.training.settle import CHANGED, TRUNCATED, Left

    left = [Left("r", tmp_path / "a.safetensors", "a.safetensors", CHANGED, "still being written (...)"),
            Left("r", tmp_path / "b.safetensors", "b.safetensors", TRUNCATED, "truncated (...)")]
    lines = LaunchSummary(tmp_path, runs=["r"], left=left, pickup_seconds=60).lines()
    assert lines[0].startswith("1 run(s), 0 checkpoint(s), 1 left as possibly still being written, 1 truncated: ")
    assert lines[1].startswith(f"LEFT {tmp_path / 'a.safetensors'}: still being written") and "60 s" in lines[1]
    assert "RUNTIME.LORA_INVALID" in lines[2] and "re-run" not in lines[2]
