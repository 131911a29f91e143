"""A real distributed engine, run for real: a Redis broker (redis-server) and two Celery workers started
with the documented command (`dagster-celery worker start -y deploy/celery/executor.yaml`), one on the
`dagster` queue and one on the `gpu` queue. The celery code location (deploy/celery/definitions.py) runs
the dataset snapshot, the run ingestion and `checkpoint_job` for three checkpoints with the shipped run
config; every step is a Celery task, `eval_renders` goes to the gpu worker and nothing else does, and the
renders and verdicts equal those of an in-process launch of an identical workspace (same render cache
keys, same pixels, same verdicts and findings)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXECUTOR_YAML = REPO / "deploy" / "celery" / "executor.yaml"
CELERY_MODULE = "deploy.celery.definitions"
TRIGGER = "sks_chair"
RUN_ID = "run-celery"
HOST = socket.gethostname()
RUNS_TIMEOUT_S = 240  # every Celery run together; a step no worker takes would wait forever otherwise

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory, toy_base, toy_dataset) -> Path:
    from lora_pipeline.toy.train import TrainSpec, train

    out = tmp_path_factory.mktemp("celery-runs") / RUN_ID
    train(TrainSpec(base=toy_base, dataset=toy_dataset, out=out, trigger=TRIGGER, steps=6, save_every=2, rank=4,
                    alpha=8.0, lr=5e-2, resolution=64, format="native"))
    return out


def _workspace(root: Path, toy_base: Path, toy_dataset: Path, run: Path):
    from lora_pipeline.config import load_config

    (root / "runs").mkdir(parents=True)
    shutil.copytree(run, root / "runs" / RUN_ID)
    cfg = root / "lora_pipeline.yaml"
    cfg.write_text(
        "storage: storage\ntraining_runs: runs\n"
        f"datasets:\n  products:\n    path: {toy_dataset}\n    trigger: {TRIGGER}\n"
        f"base_models:\n  toy-sd1: {toy_base}\n"
        "eval:\n  prompts: ['a photo of {trigger}']\n  negative_prompt: 'blurry'\n  seeds: [5]\n"
        "  width: 64\n  height: 64\n  steps: 2\n  guidance_scale: 4.0\n"
        "runtime:\n  device: cpu\n  dtype: float32\n"
        "checks:\n  min_images: 1\n  resolution: 64\n")
    return load_config(cfg)


class Workers:
    """The two workers, each in its own process group (dagster-celery starts `celery worker`, which forks
    its pool): stopped by group, SIGTERM then SIGKILL."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs, self.procs = env, logs, {}

    def start(self, name: str, queue: str) -> None:
        cli = Path(sys.executable).with_name("dagster-celery")
        with (self.logs / f"{name}.log").open("w") as log:
            self.procs[name] = subprocess.Popen(
                [str(cli), "worker", "start", "-A", "dagster_celery.app", "-y", str(EXECUTOR_YAML), "-q", queue,
                 "-n", name, "-l", "INFO", "--", "--concurrency", "1"],
                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, app, timeout: float) -> dict[str, list[str]]:
        """{worker hostname: queues it consumes}, once every worker answers the broker."""
        want = {f"{n}@{HOST}" for n in self.procs}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    pytest.fail(f"celery worker {name} exited ({p.returncode}):\n{self.tail(name)}")
            answered = {k for r in app.control.ping(timeout=1.0) for k in r}
            if want <= answered:
                queues = app.control.inspect(destination=sorted(want), timeout=2.0).active_queues() or {}
                return {w: sorted(q["name"] for q in qs) for w, qs in queues.items()}
            time.sleep(0.5)
        pytest.fail(f"celery workers not ready within {timeout}s:\n" + "\n".join(self.tail(n) for n in self.procs))

    def tail(self, name: str, chars: int = 3000) -> str:
        return f"--- {name}.log\n" + (self.logs / f"{name}.log").read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=15)
        # The pool children share the group: make sure none outlives its worker.
        for p in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)


def _execute(jobs: list[tuple[str, str]], env: dict[str, str], timeout: float, workers: Workers, logs: Path):
    """Each (job, partition) as one Dagster run, orchestrated by `dagster job execute` with the shipped run
    config, all at once (one process each: Dagster's orchestration is not thread-safe); bounded."""
    procs = {}
    for job, partition in jobs:
        with (logs / f"{job}-{partition}.log").open("w") as out:
            procs[(job, partition)] = subprocess.Popen(
                [str(Path(sys.executable).with_name("dagster")), "job", "execute", "-m", CELERY_MODULE, "-j", job,
                 "-c", str(EXECUTOR_YAML), "--tags", json.dumps({"dagster/partition": partition})],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        for p in procs.values():
            p.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pending = [k for k, p in procs.items() if p.poll() is None]
        pytest.fail(f"celery runs {pending} not done within {timeout}s (a step on a queue no worker consumes?):\n"
                    + "\n".join(workers.tail(n) for n in workers.procs))
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
    failed = {k: (logs / f"{k[0]}-{k[1]}.log").read_text()[-3000:] for k, p in procs.items() if p.returncode}
    assert not failed, failed


def _step_workers(instance, run_id: str) -> dict[str, str]:
    """step key -> the Celery worker that ran it, from the executor's engine events."""
    out = {}
    for rec in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        ev = rec.dagster_event
        meta = ev.engine_event_data.metadata if ev.engine_event_data else {}
        if "Celery worker" in meta:
            out[ev.step_key] = meta["Celery worker"].value
    return out


def _results(config) -> dict[str, dict]:
    """Per checkpoint: its verdicts, findings and renders (arm, prompt, seed -> cache key, pixels)."""
    from lora_pipeline.storage import Storage

    store, out = Storage(Path(config.storage)), {}
    for d in sorted(p.parent for p in store.renders_dir(RUN_ID, "x").parent.glob("*/evaluation.json")):
        ev = json.loads((d / "evaluation.json").read_text())
        report = json.loads((store.checkpoint_report_dir(RUN_ID, d.name) / "report.json").read_text())
        out[d.name] = {
            "verdict": ev["verdict"], "report_verdict": report["verdict"],
            "findings": sorted((f["code"], f["severity"]) for f in report["findings"]),
            "renders": {(r["arm"], r["prompt_index"], r["seed"]): (r["render_key"], r["pixels_sha256"])
                        for r in ev["renders"]}}
    return out


def test_celery_workers_render_on_the_gpu_queue_and_match_in_process(
        redis_url, tmp_path, monkeypatch, toy_base, toy_dataset, three_checkpoints):
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app

    from assets.launch import materialize
    from assets.partitions import TRAINING_RUNS, add_checkpoint_partitions
    from lora_pipeline.instance import prepare_dagster_home
    from lora_pipeline.storage import split_checkpoint_partition_key
    from lora_pipeline.training.scan import scan_runs

    t0 = time.monotonic()
    local = _workspace(tmp_path / "in-process", toy_base, toy_dataset, three_checkpoints)
    fleet = _workspace(tmp_path / "celery", toy_base, toy_dataset, three_checkpoints)
    home = prepare_dagster_home(fleet)
    with dg.DagsterInstance.from_config(str(home)):  # its sqlite schema, before two workers race to create it
        pass
    env = {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_CELERY_BROKER_URL": redis_url,
           "LORA_PIPELINE_CONFIG": str(fleet.source), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    logs = tmp_path / "logs"
    logs.mkdir()
    workers = Workers(env, logs)
    try:
        workers.start("cpu", "dagster")
        workers.start("gpu", "gpu")
        # The reference: the same workspace launched in this process (in-process executor), while they boot.
        summary = materialize(local)
        assert not summary.failed, summary.lines()
        t_local = time.monotonic() - t0

        app = make_app(CeleryExecutor.for_cli(broker=redis_url, backend="rpc://").app_args())
        queues = workers.wait_ready(app, timeout=120)
        assert queues == {f"cpu@{HOST}": ["dagster"], f"gpu@{HOST}": ["gpu"]}, queues
        t_ready = time.monotonic() - t0

        for var in ("DAGSTER_HOME", "DAGSTER_CELERY_BROKER_URL", "LORA_PIPELINE_CONFIG"):
            monkeypatch.setenv(var, env[var])
        keys = [c.partition_key for s in scan_runs(fleet) for c in s.checkpoints]
        assert len(keys) == 3
        with dg.DagsterInstance.get() as instance:
            instance.add_dynamic_partitions(TRAINING_RUNS.name, [RUN_ID])  # what the sensor does
            add_checkpoint_partitions(instance, keys)
        _execute([("dataset_snapshot_job", "products")], env, RUNS_TIMEOUT_S, workers, logs)
        _execute([("training_run_job", RUN_ID)], env, RUNS_TIMEOUT_S, workers, logs)
        t_upstream = time.monotonic() - t0
        _execute([("checkpoint_job", k) for k in keys], env, RUNS_TIMEOUT_S, workers, logs)
        t_done = time.monotonic() - t0
        base_loads = []  # in the gpu worker's process, cumulated
        with dg.DagsterInstance.get() as instance:
            runs = instance.get_runs()
            assert len(runs) == 5 and {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
            for run in runs:
                assert run.run_config == yaml.safe_load(EXECUTOR_YAML.read_text())  # the shipped one, as is
                placed = _step_workers(instance, run.run_id)
                started = {e.dagster_event.step_key for e in instance.all_logs(
                    run.run_id, of_type=dg.DagsterEventType.STEP_START)}
                assert started and set(placed) == started, (run.job_name, placed, started)  # every step a task
                on_gpu = {k for k, w in placed.items() if w == f"gpu@{HOST}"}
                assert on_gpu == ({"eval_renders"} if run.job_name == "checkpoint_job" else set()), placed
                assert set(placed.values()) - {f"gpu@{HOST}"} == {f"cpu@{HOST}"}, placed
            for key in keys:
                (run,) = [r for r in runs if r.job_name == "checkpoint_job" and r.tags["dagster/partition"] == key]
                (mat,) = [e.asset_materialization for e in instance.all_logs(
                    run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
                    if e.asset_materialization.asset_key == dg.AssetKey("eval_renders")]
                assert mat.partition == key
                base_loads.append(mat.metadata["base_loads_in_process"].value)
        # One GPU worker process served the three render steps and loaded the base once for all of them.
        assert base_loads == [1, 1, 1], base_loads
    finally:
        workers.stop()

    got, want = _results(fleet), _results(local)
    assert sorted(got) == sorted(split_checkpoint_partition_key(k)[1] for k in keys)
    assert got == want
    assert all(len(c["renders"]) == 3 for c in got.values())  # base, LoRA without and with the trigger
    print(f"\ncelery engine: in-process reference {t_local:.1f}s, workers ready at {t_ready:.1f}s, dataset + run "
          f"ingest via celery at {t_upstream:.1f}s, 3 checkpoint runs via celery at {t_done:.1f}s; gpu worker base "
          f"loads after each run {base_loads}")
