"""A real Dagster daemon for the tests in this package: `dagster dev` (webserver + daemon) or
`dagster-daemon run` alone, on a temporary DAGSTER_HOME, always bounded and killed (whole process
group) in a finally; read-only look-ups on the same instance; deadlines that print the daemon's log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TRIGGER = "sks_chair"
SENSOR = "training_runs_sensor"
AUTOMATION = "run_reports_automation"


def dagster_yaml(max_concurrent_runs: int) -> str:
    """A local sqlite instance (the default storage under DAGSTER_HOME) with the run queue and the
    `gpu` pool limited like the shipped one (lora_pipeline/instance.py)."""
    return (
        "run_coordinator:\n  module: dagster.core.run_coordinator\n  class: QueuedRunCoordinator\n"
        f"concurrency:\n  runs:\n    max_concurrent_runs: {max_concurrent_runs}\n"
        "  pools:\n    default_limit: 1\n"
        "run_monitoring:\n  enabled: true\n  start_timeout_seconds: 180\n  poll_interval_seconds: 30\n"
        "telemetry:\n  enabled: false\n")


def write_config(root: Path, toy_base: Path, toy_dataset: Path, steps: int = 2) -> Path:
    """The workspace config: tiny eval spec (64 px, `steps` steps, one prompt, one seed) on CPU."""
    cfg = root / "lora_pipeline.yaml"
    text = ("storage: storage\ntraining_runs: runs\n"
            f"datasets:\n  products:\n    path: {toy_dataset}\n    trigger: {TRIGGER}\n"
            f"base_models:\n  toy-sd1: {toy_base}\n"
            "eval:\n  prompts: ['a photo of {trigger}']\n  negative_prompt: 'blurry'\n  seeds: [5]\n"
            f"  width: 64\n  height: 64\n  steps: {steps}\n  guidance_scale: 4.0\n"
            "runtime:\n  device: cpu\n  dtype: float32\n"
            "checks:\n  min_images: 1\n  resolution: 64\n")
    tmp = cfg.with_name(cfg.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(cfg)
    return cfg


def make_home(root: Path, max_concurrent_runs: int) -> Path:
    """DAGSTER_HOME with its dagster.yaml; the instance's schema is created here, before any daemon
    starts, so the test process and the daemon never race to create it."""
    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(dagster_yaml(max_concurrent_runs))
    with dg.DagsterInstance.from_config(str(home)):
        pass
    return home


def env_for(home: Path, config: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "DAGSTER_HOME": str(home), "LORA_PIPELINE_CONFIG": str(config), "HF_HUB_OFFLINE": "1",
           # one thread per run worker and step: the box has 2 cores shared with other work
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}
    env.pop("LORA_PIPELINE_DEMO_DIR", None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Daemon:
    proc: subprocess.Popen
    log: Path
    url: str | None

    def tail(self, n: int = 6000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError as e:
            return f"(no log: {e})"


def _kill_group(proc: subprocess.Popen, grace_s: float = 20) -> None:
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; its children (code server, run workers) may linger in the group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


@contextlib.contextmanager
def running(env: dict[str, str], log: Path, webserver: bool = True, start_timeout_s: float = 180) -> Iterator[Daemon]:
    """`dagster dev` (webserver=True) or `dagster-daemon run` on the repository's workspace.yaml, in its
    own session; killed with its whole process group on exit, whatever happens."""
    port = free_port() if webserver else None
    cmd = ([str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)] if webserver
           else [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"])
    out = log.open("ab")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    daemon = Daemon(proc, log, f"http://127.0.0.1:{port}" if port else None)
    try:
        if daemon.url:
            deadline = time.monotonic() + start_timeout_s
            while True:
                try:
                    urllib.request.urlopen(daemon.url + "/server_info", timeout=5).read()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"dagster dev did not start in {start_timeout_s:.0f} s:\n{daemon.tail()}")
                    time.sleep(1)
        yield daemon
    finally:
        _kill_group(proc)
        out.close()


def wait_for(what: str, check: Callable[[], object], timeout_s: float, daemon: Daemon, every_s: float = 2.0):
    """Poll `check` until it returns something truthy; on the deadline fail with the daemon's log tail."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if daemon.proc.poll() is not None:
            pytest.fail(f"the daemon exited ({daemon.proc.returncode}) while waiting for {what}:\n{daemon.tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}:\n{daemon.tail()}")
        time.sleep(every_s)


# --- read-only look-ups on the instance ---------------------------------------------------------


@dataclass(frozen=True)
class Req:
    """What one launched run asked for: who requested it, the job, the partition, the asset keys."""

    source: str
    job: str
    partition: str | None
    assets: tuple[str, ...]
    status: str
    created: float
    run_key: str | None
    ended: float | None


def requests(instance: dg.DagsterInstance, after: float = 0.0) -> list[Req]:
    out = []
    for rec in instance.get_run_records(dg.RunsFilter(), limit=5000):
        if rec.create_timestamp.timestamp() < after:
            continue
        run, tags = rec.dagster_run, rec.dagster_run.tags
        source = tags.get("dagster/sensor_name") or tags.get("dagster/schedule_name") or "manual"
        assets = tuple(sorted(k.to_user_string() for k in (run.asset_selection or ())))
        out.append(Req(source, run.job_name, tags.get("dagster/partition"), assets, run.status.value,
                       rec.create_timestamp.timestamp(), tags.get("dagster/run_key"), rec.end_time))
    return sorted(out, key=lambda r: r.created)


def unfinished(reqs: list[Req]) -> list[Req]:
    return [r for r in reqs if r.status not in ("SUCCESS", "FAILURE", "CANCELED")]


def describe(reqs: list[Req]) -> str:
    return "\n".join(f"  {time.strftime('%H:%M:%S', time.localtime(r.created))} {r.source:28} {r.job:18} "
                     f"{str(r.partition):22} {','.join(r.assets) or '(job)':30} {r.status:8} {r.run_key or ''}"
                     for r in reqs) or "  (none)"


def quiesce(inst: dg.DagsterInstance, since: float, daemon: Daemon, names: tuple[str, ...], timeout_s: float,
            progress: Callable[[], bool] = lambda: True) -> None:
    """Wait until `progress()` holds, every run created since `since` has finished, and each sensor or
    schedule in `names` has finished a tick that started after the last of those runs ended (so each
    has looked at the settled state; whatever it requested would show as an unfinished run, once the
    runs its ticks name exist)."""
    def check() -> bool:
        reqs = requests(inst, since)
        if unfinished(reqs) or not progress():
            return False
        last = max([since, *(r.ended or 0 for r in reqs)])
        latest = [ticks(inst, n, after=last) for n in names]
        # A tick names the runs (or a backfill) it requested; one not in the run storage yet, or a
        # backfill still being launched, is work still to come (seen in CI: a tick that requested two
        # run reports at once had finished before its backfill's runs existed).
        named = {rid for got in latest for t in got
                 for rid in (*(t.tick_data.reserved_run_ids or ()), *(t.run_ids or ()))}
        return (all(latest) and all(_launched(inst, rid) for rid in named)
                and not unfinished(requests(inst, since)))

    wait_for(f"the daemon to settle ({', '.join(names)} ticked on the final state)", check, timeout_s, daemon)


def _launched(instance: dg.DagsterInstance, run_or_backfill_id: str) -> bool:
    if instance.get_run_by_id(run_or_backfill_id) is not None:
        return True
    backfill = instance.get_backfill(run_or_backfill_id)
    return backfill is not None and backfill.status.value != "REQUESTED"


def instigator_state(instance: dg.DagsterInstance, name: str):
    return next((s for s in instance.all_instigator_state() if s.instigator_name == name), None)


def ticks(instance: dg.DagsterInstance, name: str, after: float = 0.0) -> list:
    """The finished ticks of the sensor or schedule `name` that started after `after`, oldest first."""
    state = instigator_state(instance, name)
    if state is None:
        return []
    got = instance.get_ticks(state.instigator_origin_id, state.selector_id, after=float(after), limit=200)
    return sorted((t for t in got if t.end_timestamp is not None), key=lambda t: t.timestamp)


def materialized(instance: dg.DagsterInstance, asset: str) -> set[str]:
    return set(instance.get_materialized_partitions(dg.AssetKey(asset)))


def latest_storage_id(instance: dg.DagsterInstance, asset: str, partition: str) -> int | None:
    rec = instance.get_latest_data_version_record(dg.AssetKey(asset), partition_key=partition)
    return rec.storage_id if rec else None
