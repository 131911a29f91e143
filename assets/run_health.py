"""Runs whose worker is gone are closed; pool slots are claimed before a run starts, in our own loop.

`RunHealth.reap()` (at the start of every launch, and while waiting for a slot) looks at every run
of the instance that is not finished (NOT_STARTED, STARTING, STARTED, CANCELING) and calls it lost when
- the launcher's tags (assets/launch_guard.py) name this host and that process is gone (pid and its
  start time checked, so a reused pid does not keep a dead run alive), or
- its checkpoint partition has render heartbeats started during the run whose worker is gone
  (lora_pipeline.render.ops.lost_heartbeats: at once on this host, after `STALE_AFTER_S` elsewhere):
  this covers runs launched by a daemon or another host, which carry no launcher tags, or
- it was run in-process by an earlier launcher that recorded no pid (it has the launcher tag but no
  pid tag) while this launch holds the instance's launch lock: no launcher of this version can be
  running it, and earlier ones left such runs STARTED for ever when killed.
A lost run is marked failed in the instance with the reason (`DagsterInstance.report_run_failed`) and
its pool slots and pending claims are freed (`event_log_storage.free_concurrency_slots_for_run`). Its
heartbeats stay: the next evaluation of that checkpoint reports them as OPERATIONAL.WORKER_LOST
(recovered, severity info, once the render is redone) and the launcher evaluates it again, as no
evaluation.json was written. Slots still held by finished runs, and the pending claim a killed launch
left while waiting for a slot (named in the launch lock), are freed too.

`RunHealth.claim(run_id, pools)`: Dagster's own wait for a pool slot inside `execute_in_process`
polls without sleeping and only acts on Ctrl-C inside a step's compute. So the launcher claims the
slots of a run's pooled steps itself, under the run id it then executes with (Dagster then finds its
claim granted at once): the wait sleeps between polls, says once who holds the slot (run id, pid,
host), reaps lost holders as it goes, and ends at once on Ctrl-C or SIGTERM.

Dagster's daemon does the same for daemon deployments (deploy/dagster.yaml `run_monitoring`); this
covers the CLI's instance, which runs no daemon. The storage methods used are those of
`DagsterInstance.event_log_storage` (the instance's public property; Dagster 1.13 has no higher-level
public API for pool slots).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from assets.launch_guard import ASSETS_TAG, HOST_TAG, LAUNCH_TAG, PID_START_TAG, PID_TAG
from lora_pipeline.config import Config
from lora_pipeline.render import ops

IN_FLIGHT = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
             dg.DagsterRunStatus.CANCELING]
PARTITION_TAG = "dagster/partition"
POLL_S = 1.0
Say = Callable[[str], None]


def _label(run: dg.DagsterRun) -> str:
    keys = sorted(k.to_user_string() for k in (run.asset_selection or ()))
    part = run.tags.get(PARTITION_TAG)
    what = run.tags.get(ASSETS_TAG) or ",".join(keys) or run.job_name
    return f"{what}[{part}]" if part else what


def holder(run: dg.DagsterRun | None, run_id: str) -> str:
    """`run <id> (<what>, pid P on host H)` for messages."""
    if run is None:
        return f"run {run_id} (no run record yet: a launch waiting for its slot)"
    who = (f"pid {run.tags[PID_TAG]} on host {run.tags.get(HOST_TAG, '?')}" if PID_TAG in run.tags
           else "started outside lora-pipeline, no pid recorded")
    return f"run {run_id} ({_label(run)}, {run.status.value}, {who})"


class RunHealth:
    def __init__(self, instance: dg.DagsterInstance, config: Config, say: Say,
                 check_signals: Callable[[], None] = lambda: None, dead_claim: str | None = None,
                 holds_lock: bool = False) -> None:
        self.instance, self.config, self.say, self.check_signals = instance, config, say, check_signals
        self.holds_lock = holds_lock  # this process holds the instance's launch lock (assets/launch_guard.py)
        self.storage = instance.event_log_storage
        self.dead_claim = dead_claim  # run id a dead launch was claiming slots for (from the launch lock)
        self.reaped: list[str] = []

    # -- lost runs ----------------------------------------------------------------------------
    def _renders_dir(self, run: dg.DagsterRun) -> Path | None:
        from lora_pipeline.storage import Storage, split_checkpoint_partition_key

        part = run.tags.get(PARTITION_TAG, "")
        try:  # a run partition (no checkpoint in it) raises ValueError: no heartbeats to read
            run_id, ck = split_checkpoint_partition_key(part)
            return Storage(Path(self.config.storage)).renders_dir(run_id, ck)
        except Exception:  # noqa: BLE001 - a partition of another layout: no heartbeats to read
            return None

    def lost_reason(self, record) -> tuple[str, list[dict]] | None:
        """(why, lost heartbeats) when the run's worker is gone; None while it may still be working."""
        run = record.dagster_run
        here = socket.gethostname()
        pid = int(run.tags.get(PID_TAG, "0") or 0)
        since = record.start_time or record.create_timestamp.timestamp()
        folder = self._renders_dir(run)
        beats = ops.lost_heartbeats(folder, since=since - 1.0) if folder is not None else []
        if pid and run.tags.get(HOST_TAG) == here:
            if ops.process_alive(pid, run.tags.get(PID_START_TAG) or None):
                return None
            return f"the process that ran it (pid {pid} on host {here}) is gone", beats
        if beats:
            b = beats[0]
            return (f"its render worker (pid {b['pid']} on host {b['host'] or '?'}) is gone: heartbeat "
                    f"stopped {b['age_s']:.0f}s ago in phase {b.get('phase', '?')}"), beats
        if self.holds_lock and LAUNCH_TAG in run.tags and PID_TAG not in run.tags:
            return "an earlier lora-pipeline launcher ran it in-process and no launch holds the instance now", beats
        return None

    def reap(self) -> list[str]:
        """Close every lost run (module docstring); one line per run closed, also passed to `say`."""
        lines = []
        for record in self.instance.get_run_records(filters=dg.RunsFilter(statuses=IN_FLIGHT)):
            found = self.lost_reason(record)
            if found is None:
                continue
            why, beats = found
            run = record.dagster_run
            flight = ", ".join(f"{Path(b['file']).stem} ({b.get('phase', '?')})" for b in beats)
            inflight = f"; renders in flight: {flight}" if flight else ""
            redo = ("; the next evaluation of this partition reports OPERATIONAL.WORKER_LOST and redoes them"
                    if beats else "")
            self.instance.report_run_failed(
                run, message=f"Worker lost: {why}{inflight}. Marked failed and its pool slots freed by "
                             f"lora-pipeline (pid {os.getpid()} on {socket.gethostname()}){redo}.")
            self._free(run.run_id)
            line = (f"lost run {run.run_id} ({_label(run)}) closed: {why}; marked failed, its pool slots freed"
                    f"{inflight}")
            lines.append(line)
            self.say(line)
        self._free_finished()
        self.reaped += lines
        return lines

    def _free(self, run_id: str) -> None:
        if self.storage.supports_global_concurrency_limits:
            self.storage.free_concurrency_slots_for_run(run_id)

    def _free_finished(self) -> None:
        """Slots (or pending claims) of runs that ended, and of a dead launch's claim with no run."""
        if not self.storage.supports_global_concurrency_limits:
            return
        for run_id in self.storage.get_concurrency_run_ids():
            record = self.instance.get_run_record_by_id(run_id)
            if (record is None and run_id == self.dead_claim) or (record and record.dagster_run.is_finished):
                self.storage.free_concurrency_slots_for_run(run_id)

    # -- pool slots ---------------------------------------------------------------------------
    def _limited(self, pool: str) -> bool:
        """True when `pool` has a limit on this instance; sets it up from the instance's default the
        way Dagster's own claim does (the slots of a default-limited pool exist once first claimed)."""
        cfg = self.storage.get_pool_config()
        if str(getattr(cfg.pool_granularity, "value", cfg.pool_granularity)) == "run":
            return False  # run granularity: the run queue enforces pools, not the steps
        default = cfg.default_pool_limit
        limit = next((p for p in self.storage.get_pool_limits() if p.name == pool), None)
        if (limit is None and default is not None) or (limit is not None and limit.from_default
                                                       and limit.limit != default):
            self.storage.initialize_concurrency_limit_to_default(pool)
            limit = next((p for p in self.storage.get_pool_limits() if p.name == pool), None)
        return limit is not None

    def _holders(self, pool: str) -> str:
        info = self.storage.get_concurrency_info(pool)
        ids = [s.run_id for s in info.claimed_slots] + [p.run_id for p in info.pending_steps
                                                         if p.assigned_timestamp is not None]
        runs = {r: self.instance.get_run_by_id(r) for r in dict.fromkeys(ids)}
        held = "; ".join(holder(run, r) for r, run in runs.items()) or "nobody yet (slots being reassigned)"
        return f"limit {info.limit}, held by {held}"

    def claim(self, run_id: str, pools: dict[str, str], what: str = "",
              sleep: Callable[[float], None] = time.sleep) -> None:
        """Claim a slot for each (step key -> pool) of the run about to start under `run_id`; waits
        (saying so once) while the pool is full. The caller frees the claims when the run is over."""
        if not pools or not self.storage.supports_global_concurrency_limits:
            return
        for step, pool in pools.items():
            if not self._limited(pool):
                continue
            told = False
            while not self.storage.claim_concurrency_slot(pool, run_id, step, 0).is_claimed:
                if not told:
                    self.say(f"waiting for a '{pool}' pool slot{' for ' + what if what else ''} ({self._holders(pool)}); "
                             "it continues when one is free (a holder whose process is gone is closed as found; "
                             "Ctrl-C stops)")
                    told = True
                sleep(POLL_S)
                self.check_signals()
                self.reap()

    def release(self, run_id: str) -> None:
        self._free(run_id)
