"""Dead workers, concurrent launches and root causes, on real instances and real processes:

- an `evaluate` killed (SIGKILL) mid-render leaves its run STARTED holding the `gpu` pool slot; the
  next `evaluate` closes that run (failed, slot freed), redoes the checkpoint (OPERATIONAL.WORKER_LOST,
  recovered) and ends with the same verdicts and pixels as a clean evaluation;
- a launch that must wait for a pool slot says who holds it, and SIGTERM ends it at once (143);
- two `evaluate` started at once on a fresh workspace both succeed, with one evaluation per checkpoint;
- a step failing on a real OSError prints that error and its file in its FAILED line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from lora_pipeline.storage import checkpoint_partition_key
from tests.evaluate.conftest import write_config

REPO = Path(__file__).resolve().parents[2]
KEYS = ("step-00000002", "step-00000004", "step-00000006")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop("DAGSTER_HOME", None)


def _workspace(root: Path, toy_base, toy_dataset, run: Path, steps: int = 2) -> Path:
    import shutil

    (root / "runs").mkdir(parents=True)
    shutil.copytree(run, root / "runs" / run.name)
    cfg = write_config(root, toy_base, toy_dataset)
    cfg.write_text(cfg.read_text().replace("  steps: 2\n", f"  steps: {steps}\n"))
    return cfg


def _evaluate(cfg: Path, stderr=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lora_pipeline.cli", "evaluate", "--config", str(cfg)],
                            cwd=REPO, env=ENV, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=stderr, text=True)


def _instance(cfg: Path) -> dg.DagsterInstance:
    from lora_pipeline.config import load_config
    from lora_pipeline.instance import prepare_dagster_home

    return dg.DagsterInstance.from_config(str(prepare_dagster_home(load_config(cfg))))


def _evaluation(cfg: Path, run: str, key: str) -> dict:
    return json.loads((cfg.parent / "storage" / "renders" / run / key / "evaluation.json").read_text())


def _pixels(doc: dict) -> dict:
    return {(r["arm"], r["prompt_index"], r["seed"]): r["pixels_sha256"] for r in doc["renders"]}


def _unfinished(inst: dg.DagsterInstance) -> list:
    from assets.run_health import IN_FLIGHT

    return inst.get_runs(dg.RunsFilter(statuses=IN_FLIGHT))


def test_killed_evaluate_is_closed_and_the_next_one_redoes_its_checkpoint(tmp_path, toy_base, toy_dataset,
                                                                         three_checkpoint_run):
    from assets.launch import materialize
    from lora_pipeline.config import load_config
    from lora_pipeline.render import ops

    run = three_checkpoint_run.name
    cfg = _workspace(tmp_path / "ws", toy_base, toy_dataset, three_checkpoint_run, steps=20)
    inflight = cfg.parent / "storage" / "renders" / run / KEYS[1] / ops.HEARTBEAT_DIR
    log = tmp_path / "first.stderr"
    with log.open("w") as err:
        first = _evaluate(cfg, stderr=err)
    beat, deadline = None, time.monotonic() + 600  # a bound, not a speed requirement
    while beat is None and first.poll() is None and time.monotonic() < deadline:
        beat = next(iter(inflight.glob("*.json")), None) if inflight.is_dir() else None  # step 4's first render
        time.sleep(0.005)
    assert beat is not None, f"no render seen in flight: {log.read_text()[-2000:]}"
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate(timeout=60)
    assert beat.exists()  # killed mid-render: the heartbeat stays, with no output
    with _instance(cfg) as inst:
        stuck = _unfinished(inst)
        assert [r.tags.get("dagster/partition") for r in stuck] == [checkpoint_partition_key(run, KEYS[1])]
        assert [s.run_id for s in inst.event_log_storage.get_concurrency_info("gpu").claimed_slots] \
            == [stuck[0].run_id]  # the only gpu slot is held by the dead run

    second = subprocess.run([sys.executable, "-m", "lora_pipeline.cli", "evaluate", "--config", str(cfg)],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    closed = [ln for ln in second.stderr.splitlines() if ln.startswith("lost run ")]
    assert len(closed) == 1 and stuck[0].run_id in closed[0] and f"pid {first.pid} on host" in closed[0], \
        second.stderr[-3000:]
    assert "renders in flight: " + beat.stem in closed[0] and "eval_renders" in closed[0]
    with _instance(cfg) as inst:
        assert _unfinished(inst) == []
        dead = inst.get_run_by_id(stuck[0].run_id)
        assert dead.status == dg.DagsterRunStatus.FAILURE
        assert inst.event_log_storage.get_concurrency_info("gpu").claimed_slots == []
        assert inst.get_materialized_partitions(dg.AssetKey("eval_renders")) == {checkpoint_partition_key(run, k) for k in KEYS}
    redone = _evaluation(cfg, run, KEYS[1])
    lost = [f for f in redone["findings"] if f["code"] == "OPERATIONAL.WORKER_LOST"]
    assert len(lost) == 1 and lost[0]["severity"] == "info" and lost[0]["evidence"]["recovered"] is True
    assert lost[0]["evidence"]["heartbeat"] == beat.name and lost[0]["evidence"]["pid"] == first.pid
    assert not beat.exists()

    clean_cfg = _workspace(tmp_path / "clean", toy_base, toy_dataset, three_checkpoint_run, steps=20)
    clean = materialize(load_config(clean_cfg))  # the same evaluation, never interrupted
    assert not clean.failed
    for key in KEYS:
        got, want = _evaluation(cfg, run, key), _evaluation(clean_cfg, run, key)
        assert got["verdict"] == want["verdict"], key
        assert _pixels(got) == _pixels(want) and _pixels(got), key


def _holder_run(inst: dg.DagsterInstance, config, pid: int, partition: str) -> str:
    """A run STARTED by process `pid`, holding the `gpu` slot, as a launcher elsewhere left it."""
    from assets.launch_guard import HOST_TAG, PID_TAG
    from assets.run_health import RunHealth

    run_id = str(uuid.uuid4())
    inst.add_run(dg.DagsterRun(job_name="__ASSET_JOB", run_id=run_id, status=dg.DagsterRunStatus.STARTED,
                               tags={HOST_TAG: socket.gethostname(), PID_TAG: str(pid),
                                     "dagster/partition": partition}))
    assert RunHealth(inst, config, print)._limited("gpu")  # the pool's slots, as Dagster sets them up
    assert inst.event_log_storage.claim_concurrency_slot("gpu", run_id, "eval_renders", 0).is_claimed
    return run_id


def test_wait_for_a_pool_slot_names_its_holder_and_signals_end_a_launch_at_once(workspace):
    from assets.run_health import RunHealth
    from lora_pipeline.render import ops

    config, run = workspace
    cfg = config.source
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        with _instance(cfg) as inst:
            holder = _holder_run(inst, config, sleeper.pid, checkpoint_partition_key(run, KEYS[0]))
        proc = _evaluate(cfg)
        lines = []
        for line in proc.stderr:  # the launch goes as far as the first render step, then waits
            lines.append(line.rstrip("\n"))
            if line.startswith("waiting for a 'gpu' pool slot for "):
                break
        assert lines and lines[-1].startswith("waiting for a 'gpu' pool slot"), "\n".join(lines[-20:])
        assert f"held by run {holder}" in lines[-1] and f"pid {sleeper.pid} on host {socket.gethostname()}" \
            in lines[-1]
        os.kill(proc.pid, signal.SIGTERM)
        rest = proc.communicate(timeout=60)[1].splitlines()
        assert proc.returncode == 143, rest[-10:]
        assert rest[-1].startswith("error: interrupted (SIGTERM)") and not [ln for ln in rest if "Traceback" in ln]
        with _instance(cfg) as inst:
            info = inst.event_log_storage.get_concurrency_info("gpu")
            assert {p.run_id for p in info.pending_steps} == {holder}  # the waiting claim was withdrawn
            assert RunHealth(inst, config, print).reap() == []  # the holder's process still runs
            sleeper.kill()
            sleeper.wait()
            closed = RunHealth(inst, config, print).reap()
            assert len(closed) == 1 and holder in closed[0] and "is gone" in closed[0]
            assert inst.get_run_by_id(holder).status == dg.DagsterRunStatus.FAILURE
            assert inst.event_log_storage.get_concurrency_info("gpu").claimed_slots == []
    finally:
        sleeper.kill()
    # Ctrl-C in the middle of a render (Dagster's own signal handling is in place then) ends it too.
    cfg.write_text(cfg.read_text().replace("  steps: 2\n", "  steps: 20\n"))  # renders long enough to catch
    inflight = Path(config.storage) / "renders" / run / KEYS[0] / ops.HEARTBEAT_DIR
    proc = _evaluate(cfg)  # (its stderr stays far below a pipe's buffer until it ends)
    deadline = time.monotonic() + 600  # a bound, not a speed requirement
    while proc.poll() is None and not (inflight.is_dir() and any(inflight.glob("*.json"))) \
            and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=60)[1].splitlines()
    assert proc.returncode == 130, err[-10:]
    assert err[-1].startswith("error: interrupted (SIGINT)") and not [ln for ln in err if "Traceback" in ln]
    with _instance(cfg) as inst:
        assert _unfinished(inst) == []
        assert inst.event_log_storage.get_concurrency_info("gpu").claimed_slots == []
        assert inst.get_materialized_partitions(dg.AssetKey("eval_renders")) == set()


def test_two_evaluates_at_once_both_succeed_with_one_evaluation_each(tmp_path, toy_base, toy_dataset,
                                                                   three_checkpoint_run):
    run = three_checkpoint_run.name
    cfg = _workspace(tmp_path / "ws", toy_base, toy_dataset, three_checkpoint_run)
    procs = [_evaluate(cfg), _evaluate(cfg)]  # a fresh workspace: not even the instance exists yet
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err and "IntegrityError" not in err, err[-3000:]
    waited = [(i, err) for i, (_o, err) in enumerate(outs) if "waiting: another launch holds the instance" in err]
    for i, err in waited:  # whoever waited names the other
        assert f"pid {procs[1 - i].pid} on host" in err
    with _instance(cfg) as inst:
        assert _unfinished(inst) == []
        keys = {checkpoint_partition_key(run, k) for k in KEYS}
        assert inst.get_materialized_partitions(dg.AssetKey("eval_renders")) == keys
        evals = inst.fetch_materializations(dg.AssetKey("eval_renders"), limit=100).records
        assert sorted(r.partition_key for r in evals) == sorted(keys)  # each evaluated once, not twice
        assert inst.get_dynamic_partitions("checkpoint_ids") == sorted(KEYS)
    assert {_evaluation(cfg, run, k)["verdict"] for k in KEYS} <= {"ok", "quality_problem", "training_problem"}


def test_failed_step_line_carries_the_os_error_and_its_file(workspace):
    from assets.launch import materialize

    config, _run = workspace
    blocker = Path(config.storage) / "snapshots"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the snapshots folder goes\n")
    summary = materialize(config)
    failed = [ln for ln in summary.lines() if ln.startswith("FAILED dataset_snapshot[products]")]
    assert len(failed) == 1, summary.lines()
    assert "Error occurred while executing" not in failed[0]
    assert "[Errno " in failed[0] and str(blocker) in failed[0], failed[0]


@pytest.mark.parametrize("chain", ["explicit", "implicit", "failure"])
def test_root_cause_line_from_a_real_step_failure(chain):
    import errno

    from assets.root_cause import step_failure_line

    @dg.op
    def write_manifest():
        err = OSError(errno.ENOSPC, "No space left on device", "/data/storage/x.parquet")
        try:
            raise err
        except OSError as e:
            if chain == "explicit":
                raise RuntimeError("snapshot of products failed") from e
            if chain == "failure":
                raise dg.Failure(description="snapshot of products failed") from e
            raise ValueError("while writing the manifest")  # noqa: B904 - the implicit context is the case

    @dg.job
    def job():
        write_manifest()

    result = job.execute_in_process(raise_on_error=False)
    (ev,) = [e for e in result.all_events if e.is_step_failure]
    line = step_failure_line(ev.step_failure_data)
    assert line.startswith("OSError: [Errno 28] No space left on device: '/data/storage/x.parquet'"), line
    assert "\n" not in line and "Dagster" not in line


def test_runs_lost_by_their_heartbeats_and_a_dead_launchs_pending_claim_are_freed(workspace):
    """No launch: a run with no launcher tags (a daemon's, another host's) is lost when its own render
    heartbeats are; an older heartbeat of an earlier run does not condemn a newer run; the claim a
    launch killed while waiting left (no run record) is withdrawn by the next holder of the lock, which
    also closes a run an earlier launcher version left STARTED with no pid recorded."""
    from assets.launch_guard import LAUNCH_TAG, LOCK_FILE, LaunchLock
    from assets.run_health import RunHealth
    from lora_pipeline.fsutil import atomic_write_json
    from lora_pipeline.instance import prepare_dagster_home
    from lora_pipeline.render import ops

    config, run = workspace
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    home = prepare_dagster_home(config)
    with dg.DagsterInstance.from_config(str(home)) as inst:
        runs = {}
        for key in KEYS[:2]:
            runs[key] = str(uuid.uuid4())
            inst.add_run(dg.DagsterRun(job_name="checkpoint_job", run_id=runs[key],
                                       status=dg.DagsterRunStatus.STARTED,
                                       tags={"dagster/partition": checkpoint_partition_key(run, key)}))
        legacy = str(uuid.uuid4())
        inst.add_run(dg.DagsterRun(job_name="__ASSET_JOB", run_id=legacy, status=dg.DagsterRunStatus.STARTED,
                                   tags={LAUNCH_TAG: "materialize", "dagster/partition": checkpoint_partition_key(run, KEYS[2])}))
        started = inst.get_run_record_by_id(runs[KEYS[0]]).create_timestamp.timestamp()
        for key, when in ((KEYS[0], started + 5), (KEYS[1], started - 3600)):  # its own / an earlier run's
            atomic_write_json(Path(config.storage) / "renders" / run / key / ops.HEARTBEAT_DIR / "base__0-5.json",
                              {"pid": dead.pid, "host": socket.gethostname(), "started": when, "updated": when,
                               "phase": "denoise", "step": 1, "output": "/nonexistent.png"})
        ghost = str(uuid.uuid4())  # a launch's claim on a full pool, left when it was killed waiting
        health = RunHealth(inst, config, print)
        assert health._limited("gpu")
        assert inst.event_log_storage.claim_concurrency_slot("gpu", runs[KEYS[1]], "eval_renders", 0).is_claimed
        assert not inst.event_log_storage.claim_concurrency_slot("gpu", ghost, "eval_renders", 0).is_claimed
        (home / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "claiming": ghost}))

        closed = health.reap()
        assert len(closed) == 1 and runs[KEYS[0]] in closed[0] and "render worker" in closed[0], closed
        assert inst.get_run_by_id(runs[KEYS[1]]).status == dg.DagsterRunStatus.STARTED  # may still be working
        assert inst.get_run_by_id(legacy).status == dg.DagsterRunStatus.STARTED  # its launcher may be running
        with LaunchLock(home, print) as lock:
            assert lock.previous["claiming"] == ghost
            closed = RunHealth(inst, config, print, dead_claim=lock.previous["claiming"], holds_lock=True).reap()
        assert len(closed) == 1 and legacy in closed[0] and "earlier lora-pipeline launcher" in closed[0]
        pending = {p.run_id for p in inst.event_log_storage.get_concurrency_info("gpu").pending_steps}
        assert ghost not in pending and runs[KEYS[1]] in pending


def test_a_second_launch_says_who_holds_the_instance_and_waits_for_it(tmp_path):
    import threading

    from assets.launch_guard import LaunchLock

    said: list[str] = []
    got = threading.Event()

    def second() -> None:
        with LaunchLock(tmp_path, said.append):
            got.set()

    with LaunchLock(tmp_path, print):
        waiter = threading.Thread(target=second)
        waiter.start()
        while not said and waiter.is_alive():  # it says so before it blocks
            time.sleep(0.01)
        assert not got.is_set()  # still waiting: the first holds the lock
    waiter.join(timeout=60)
    assert got.is_set() and len(said) == 1
    assert said[0].startswith("waiting: another launch holds the instance") and f"pid {os.getpid()} on host" in said[0]
