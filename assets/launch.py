"""The launcher: discover, add partitions, and materialize what is missing or stale, in ONE process, in
the instance the UI reads (CONTRACT section 6: `lora-pipeline evaluate`, and `demo` after it).

    materialize(config, run_ids=(), checkpoint_ids=(), include_all=False, progress=None) -> LaunchSummary

In order, each stage in its own in-process Dagster run(s) against `<workspace>/.dagster`:
1. `dataset_source` observed (a folder whose fingerprint moved gets a runless observation), then
   `dataset_snapshot[<dataset>]` where missing or stale;
2. runs and checkpoints discovered (complete files only: young files get one short re-check, as
   there is no next tick; those still changing are left out and listed), dynamic partitions added;
3. `training_run[<run>]` per selected run;
4. per checkpoint partition, every asset partitioned by checkpoints (lora_checkpoint, eval_renders, and
   whatever else joins that partitions definition, e.g. checkpoint reports), in graph order;
5. per run, every other asset partitioned by TRAINING_RUNS (e.g. run reports).
One run per partition, so a failed partition stops nothing else; all in this process, so a base
pipeline loads once for all checkpoints (module-level cache). "Missing or stale": Dagster's own
stale-status resolver (MISSING/STALE: never materialized, code version changed, an upstream data
version changed) plus content checks Dagster cannot see (training_run: the run folder's fingerprint;
lora_checkpoint: the file's sha256; eval_renders: evaluation.json present). `include_all` redoes
everything (renders still come from the render cache when their keys are unchanged).

Cost: a launch whose facts (config, code, selection, dataset and run folders, checkpoint files) and
instance files are unchanged since the last launch that ended clean is answered from that launch's
stamp without opening the instance (assets/launch_stamp.py); the launcher's own sqlite instance
keeps its SQLAlchemy engines and connections across event writes (assets/sqlite_events.py) and
captures step output into the UI's files without mirroring it to the console (assets/step_logs.py).

Safety (assets/launch_guard.py, assets/run_health.py): one launch at a time per instance (a second
one says who holds it and waits); runs whose process is gone are closed first (marked failed, pool
slots freed) so their checkpoints are evaluated again; pool slots are claimed in our own loop, which
says who holds them; Ctrl-C / SIGTERM end the launch at once (`Interrupted`); a failed step's line
names its root cause (assets/root_cause.py).
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import dagster as dg

from assets.launch_guard import (
    ASSETS_TAG,
    LAUNCH_TAG,
    OBSERVED_BY_TAG,
    LaunchLock,
    Signals,
    add_partitions,
    launcher_tags,
    open_instance,
)
from assets.launch_result import LaunchSummary, Outcome
from assets.partitions import CHECKPOINT_IDS, CHECKPOINTS_NAME, TRAINING_RUNS, dimension_keys
from assets.root_cause import error_line, step_failure_line
from assets.run_health import RunHealth
from assets.staleness import partitioned_by, stale_cause, stale_resolver
from lora_pipeline.config import Config

Progress = Callable[[int, int, str], None]  # (done, total, label of what just finished)
Say = Callable[[str], None]  # one line for the user, printed at once (waits, lost runs closed)


class LaunchError(Exception):
    """The launch cannot start (unknown run or checkpoint); one line."""


class _Launch:
    def __init__(self, config: Config, instance: dg.DagsterInstance, include_all: bool,
                 progress: Progress | None, guard: tuple[RunHealth, LaunchLock, Signals] | None = None) -> None:
        from assets import build_definitions

        self.config, self.instance, self.include_all = config, instance, include_all
        self.health, self.lock, self.signals = guard or (RunHealth(instance, config, lambda _m: None), None, None)
        self.progress = progress or (lambda _d, _t, _l: None)
        self.defs = build_definitions(config=config)  # one Definitions for the whole launch
        self.token = uuid.uuid4().hex  # tags what this launch records outside its runs
        self.graph = self.defs.resolve_asset_graph()
        self.job = self.defs.resolve_implicit_global_asset_job_def()
        self.ckpt_keys = partitioned_by(self.graph, CHECKPOINTS_NAME)
        self.run_key = dg.AssetKey("training_run")
        self.run_keys = [k for k in partitioned_by(self.graph, TRAINING_RUNS.name) if k != self.run_key]
        self.outcomes: list[Outcome] = []
        self.why: dict[tuple[dg.AssetKey, str | None], str] = {}  # (key, partition) -> why it is redone
        self.done, self.total = 0, 0
        self.run_ids: set[str] = set()  # the Dagster runs this launch started
        # The event log (and so the UI) gets everything; the console only warnings and worse.
        # The launch reports outcomes itself (progress bar + summary); Dagster's console logger would
        # print stack traces for expected events such as a failed blocking check. Everything is still
        # recorded in the instance, where the UI shows it.
        self.run_config = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}

    # -- staleness ------------------------------------------------------------------------------
    def _resolver(self):
        return stale_resolver(self.instance, self.graph)

    def _recorded_version(self, key: dg.AssetKey, partition: str) -> str | None:
        from assets.training import recorded_content

        return recorded_content(self.instance, key, partition)

    def _needs(self, keys: list[dg.AssetKey], partition: str, content: dict[dg.AssetKey, str | None],
               resolver=None) -> list:
        """The keys to materialize for this partition: missing/stale ones and everything after them.
        Why each is needed goes to `self.why` ("new", "stale: <cause>"), for the outcome's reason."""
        from dagster._core.definitions.data_version import StaleStatus

        if self.include_all:
            self.why.update({(k, partition): "redone: --all" for k in keys})
            return list(keys)
        resolver = resolver or self._resolver()
        need: list[dg.AssetKey] = []
        for k in keys:
            status = resolver.get_status(k, partition)
            expected = content.get(k)
            upstream = next((u for u in self.graph.get(k).parent_keys if u in need), None)
            changed = expected is not None and self._recorded_version(k, partition) != expected
            lost = k.path[-1] == "eval_renders" and not self._evaluation_exists(partition)
            why = ("new" if status == StaleStatus.MISSING else
                   stale_cause(resolver, k, partition) if status == StaleStatus.STALE else
                   "stale: file content changed" if changed else
                   "stale: its evaluation.json is missing" if lost else
                   f"stale: after {upstream.to_user_string()}" if upstream else None)
            if why:
                need.append(k)
                self.why[(k, partition)] = why
        for k in keys:  # anything downstream of a needed key within this partition group
            up = next((u for u in self.graph.get(k).parent_keys if u in need), None)
            if k not in need and up is not None:
                need.append(k)
                self.why[(k, partition)] = f"stale: after {up.to_user_string()}"
        return [k for k in keys if k in need]

    def _evaluation_exists(self, partition: str) -> bool:
        from lora_pipeline.storage import Storage, split_checkpoint_partition_key

        run_id, ck = split_checkpoint_partition_key(partition)
        return (Storage(Path(self.config.storage)).renders_dir(run_id, ck) / "evaluation.json").is_file()

    # -- execution ------------------------------------------------------------------------------
    def run_job(self, job, partition: str | None, kind: str, what: str = ""):
        """One in-process run: its pool slots claimed first (in our loop), launcher tags recorded,
        claims freed after; a signal Dagster swallowed during the run ends the launch."""
        run_id = str(uuid.uuid4())
        self.run_ids.add(run_id)
        pools = {n.name: n.definition.pool for n in job.graph.nodes if getattr(n.definition, "pool", None)}
        if self.lock is not None:
            self.lock.note(claiming=run_id)
        try:
            self.health.claim(run_id, pools, f"{what or kind}[{partition}]" if partition else what or kind)
            return job.execute_in_process(instance=self.instance, partition_key=partition, raise_on_error=False,
                                          run_id=run_id, tags={LAUNCH_TAG: kind, ASSETS_TAG: what or kind,
                                                               **launcher_tags()},
                                          run_config=self.run_config)
        finally:
            self.health.release(run_id)
            if self.lock is not None:
                self.lock.note(claiming=None)
            if self.signals is not None:
                self.signals.check()

    def execute(self, keys: list[dg.AssetKey], partition: str | None, label: str) -> bool:
        """One in-process run for these keys (one partition); outcomes recorded; True when all done."""
        job = self.job.get_subset(asset_selection=set(keys))
        try:
            result = self.run_job(job, partition, "materialize", ",".join(k.to_user_string() for k in keys))
        except Exception as e:  # noqa: BLE001 - one partition's setup error must not stop the others
            reason = error_line(e)
            self.outcomes += [Outcome(k.to_user_string(), partition, "failed", reason) for k in keys]
            self._tick(label)
            return False
        done = {e.asset_key for e in result.get_asset_materialization_events()}
        reasons = {ev.step_key: step_failure_line(ev.step_failure_data)
                   for ev in result.all_events if ev.is_step_failure}
        first_reason = next(iter(reasons.values()), "the run failed")
        for k in keys:
            if k in done:
                self.outcomes.append(Outcome(k.to_user_string(), partition, "materialized",
                                             self.why.get((k, partition), ""), result.run_id))
            else:
                own = next((r for s, r in reasons.items() if s.split(".")[-1] == k.path[-1]), None)
                why = own or f"not run: {first_reason}"
                self.outcomes.append(Outcome(k.to_user_string(), partition, "failed", why, result.run_id))
        self._tick(label)
        return all(k in done for k in keys)

    def _tick(self, label: str) -> None:
        self.done += 1
        self.progress(self.done, max(self.total, self.done), label)

    def skip(self, keys: Iterable[dg.AssetKey], partition: str | None) -> None:
        self.outcomes += [Outcome(k.to_user_string(), partition, "up_to_date") for k in keys]


def _select(scans: list, run_ids: tuple[str, ...], checkpoint_ids: tuple[str, ...]) -> tuple[list, list[str]]:
    from lora_pipeline.storage import split_checkpoint_partition_key

    known = {s.run_id for s in scans}
    missing = [r for r in run_ids if r not in known]
    if missing:
        raise LaunchError(f"--run {missing[0]}: no such run (runs found: {', '.join(sorted(known)) or 'none'})")
    chosen = [s for s in scans if not run_ids or s.run_id in run_ids]
    ckpts = [c for s in chosen for c in s.checkpoints]
    if checkpoint_ids:
        by = [c for c in ckpts if c.checkpoint_id in checkpoint_ids or c.partition_key in checkpoint_ids]
        found = {c.checkpoint_id for c in by} | {c.partition_key for c in by}
        lost = [c for c in checkpoint_ids if c not in found]
        if lost:
            raise LaunchError(f"--checkpoint {lost[0]}: no such complete checkpoint in the selected run(s)")
        ckpts = by
        chosen = [s for s in chosen if any(split_checkpoint_partition_key(c.partition_key)[0] == s.run_id
                                           for c in ckpts)]
    return chosen, [c.partition_key for c in ckpts]


def _observe_sources(launch: _Launch) -> None:
    """Record an observation of each dataset folder whose content fingerprint differs from its last
    recorded one (none when nothing moved). Reported straight to the instance, as Dagster's own
    observation run would log it (`dagster/data_version` on the partition), without the run: a first
    launch or a changed folder saved ~0.27 s of run bookkeeping. Tagged with this launch's token, so the
    launch stamp knows them as its own (assets/launch_stamp.py)."""
    from dagster._core.definitions.data_version import DATA_VERSION_TAG

    from assets.dataset import SOURCE_KEY, source_versions

    for name in sorted(launch.config.datasets):
        said: list[str] = []  # why a folder is unreadable: shown on its observation in the UI
        version = source_versions(launch.config, [name], said.append)[name]
        rec = launch.instance.get_latest_data_version_record(SOURCE_KEY, is_source=True, partition_key=name)
        if rec is None or rec.asset_observation is None or rec.asset_observation.data_version != version:
            launch.instance.report_runless_asset_event(dg.AssetObservation(
                SOURCE_KEY, partition=name, metadata={"warning": said[0]} if said else None,
                tags={DATA_VERSION_TAG: version, OBSERVED_BY_TAG: launch.token}))


def _datasets(launch: _Launch) -> None:
    from assets.dataset import SNAPSHOT_KEY
    from lora_pipeline.dataset.snapshot import latest_snapshot

    if not launch.config.datasets or not launch.graph.has(SNAPSHOT_KEY):
        return
    _observe_sources(launch)
    for name in sorted(launch.config.datasets):
        on_disk = latest_snapshot(launch.config.storage, name) is not None
        if on_disk and not launch._needs([SNAPSHOT_KEY], name, {}):  # stale when the observed source moved
            launch.skip([SNAPSHOT_KEY], name)
            launch._tick(f"dataset {name} up to date")
        else:
            launch.why.setdefault((SNAPSHOT_KEY, name), "new" if not on_disk else "stale: the dataset folder changed")
            launch.execute([SNAPSHOT_KEY], name, f"dataset {name}")


def pickup_seconds(config: Config) -> int:
    """The longest a file that stopped changing waits for the sensor: stable over two ticks, or
    settled and seen on the next tick, whichever comes first."""
    from assets.training import SENSOR_INTERVAL_S

    return int(min(2 * SENSOR_INTERVAL_S, config.checks.checkpoint_settle_seconds + SENSOR_INTERVAL_S))


def materialize(config: Config, run_ids: Iterable[str] = (), checkpoint_ids: Iterable[str] = (),
                include_all: bool = False, progress: Progress | None = None,
                instance: dg.DagsterInstance | None = None,
                sleep: Callable[[float], None] = time.sleep, say: Say | None = None) -> LaunchSummary:
    """Discover, add partitions and materialize what is missing or stale (module docstring).
    `sleep` waits out the settle re-check (`checks.checkpoint_recheck_seconds`); `say` prints a line
    at once (a wait for the launch lock or a pool slot, a lost run closed). Raises `Interrupted` on
    SIGINT / SIGTERM (main thread)."""
    from assets import launch_stamp
    from lora_pipeline.instance import prepare_dagster_home
    from lora_pipeline.training.scan import scan_runs_rechecked

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    say = say or (lambda _m: None)
    home = prepare_dagster_home(config)
    # The lock first: two launches on a fresh instance must not create its databases at once either.
    run_ids, checkpoint_ids = tuple(run_ids), tuple(checkpoint_ids)
    with Signals() as signals, LaunchLock(home, say) as lock:
        owned = instance is None
        stamped = owned and launch_stamp.enabled() and not lock.previous.get("claiming")
        if stamped and not include_all:  # nothing changed since the last launch: no instance opened
            t0 = time.perf_counter()
            summary = launch_stamp.unchanged(config, home, run_ids, checkpoint_ids,
                                             lambda: scan_runs_rechecked(config, run_ids, sleep))
            if summary is not None:
                summary.seconds = time.perf_counter() - t0
                if progress:
                    progress(1, 1, "nothing changed since the last launch")
                return summary
        launch_stamp.forget(home)
        instance = open_instance(home) if owned else instance
        if owned:  # our own instance: engines kept across event writes, step logs captured without `tail`
            from assets.sqlite_events import speed_up
            from assets.step_logs import capture_to_files

            speed_up(instance)
            capture_to_files(instance)
        since, first_event = time.time(), launch_stamp.max_event_id(instance) if stamped else None
        try:
            health = RunHealth(instance, config, say, signals.check, dead_claim=lock.previous.get("claiming"),
                               holds_lock=True)
            health.reap()
            summary = _materialize(config, instance, run_ids, checkpoint_ids, include_all, progress,
                                   sleep, (health, lock, signals), stamp=stamped)
            quiet = stamped and not health.reaped and not launch_stamp.foreign_activity(
                instance, since, summary.own_runs, first_event, summary.own_token)
        finally:
            if owned:
                instance.dispose()
        if quiet:  # after dispose: the instance files as the next launch will find them
            launch_stamp.record(home, summary.facts, summary)
    summary.dagster_home, summary.reaped = home, health.reaped
    return summary


def _materialize(config: Config, instance: dg.DagsterInstance, run_ids: tuple[str, ...],
                 checkpoint_ids: tuple[str, ...], include_all: bool, progress: Progress | None,
                 sleep: Callable[[float], None], guard, stamp: bool = False) -> LaunchSummary:
    from assets import launch_stamp
    from assets.training import run_content
    from lora_pipeline.render import cache
    from lora_pipeline.render.pipeline import BASE_LOADS
    from lora_pipeline.storage import split_checkpoint_partition_key
    from lora_pipeline.training.scan import scan_runs_rechecked

    t0 = time.perf_counter()
    loads0, renders0 = BASE_LOADS["count"], cache.renders_done()
    launch = _Launch(config, instance, include_all, progress, guard)
    scanned = scan_runs_rechecked(config, run_ids, sleep)
    scans, ckpts = _select(scanned, run_ids, checkpoint_ids)
    # What this launch acts on, taken before it acts, for the next launch's stamp (assets/launch_stamp.py).
    facts = launch_stamp.facts(config, run_ids, checkpoint_ids, scanned) if stamp else {}
    runs = [s.run_id for s in scans]
    left = [lf for s in scans for lf in s.left]
    launch.total = len(config.datasets) + len(runs) * (1 + bool(launch.run_keys)) + len(ckpts)
    _datasets(launch)
    run_dims, checkpoint_dims = dimension_keys(ckpts)
    add_partitions(instance, TRAINING_RUNS.name, list(dict.fromkeys(runs + run_dims)))
    add_partitions(instance, CHECKPOINT_IDS.name, checkpoint_dims)
    shas = {c.partition_key: c.sha256 for s in scans for c in s.checkpoints}
    for s in scans:
        if launch._needs([launch.run_key], s.run_id, {launch.run_key: run_content(s.fingerprint, s.folder)}):
            launch.execute([launch.run_key], s.run_id, f"run {s.run_id}")
        else:
            launch.skip([launch.run_key], s.run_id)
            launch._tick(f"run {s.run_id} up to date")
    touched: dict[str, list[str]] = {}  # run -> its checkpoint partitions redone in this launch
    # One stale-status resolver for the whole stage: checkpoint partitions do not depend on each other.
    resolver = launch._resolver() if ckpts and not include_all else None
    for pk in ckpts:
        content = {k: shas.get(pk) for k in launch.ckpt_keys if k.path[-1] == "lora_checkpoint"}
        need = launch._needs(launch.ckpt_keys, pk, content, resolver)
        launch.skip([k for k in launch.ckpt_keys if k not in need], pk)
        if need:
            touched.setdefault(split_checkpoint_partition_key(pk)[0], []).append(pk)
            launch.execute(need, pk, f"checkpoint {pk}")
        else:
            launch._tick(f"checkpoint {pk} up to date")
    report_resolver = launch._resolver() if runs and launch.run_keys and not include_all else None
    for r in runs if launch.run_keys else []:
        if r in touched:
            need = launch.run_keys
            redone = ", ".join(touched[r][:3]) + (f" and {len(touched[r]) - 3} more" if len(touched[r]) > 3 else "")
            launch.why.update({(k, r): f"stale: checkpoint_report[{redone}] redone" for k in need})
        else:
            need = launch._needs(launch.run_keys, r, {}, report_resolver)
        launch.skip([k for k in launch.run_keys if k not in need], r)
        if need:
            launch.execute(need, r, f"run report {r}")
        else:
            launch._tick(f"run {r} reports up to date")
    summary = LaunchSummary(dagster_home=Path(), outcomes=launch.outcomes, checkpoints=ckpts, runs=runs,
                            seconds=time.perf_counter() - t0, base_loads=BASE_LOADS["count"] - loads0,
                            renders=cache.renders_done() - renders0, left=left, pickup_seconds=pickup_seconds(config))
    summary.facts, summary.own_runs, summary.own_token = facts, launch.run_ids, launch.token
    return summary
