"""An unchanged re-launch that does not open the Dagster instance.

After a launch that ended with nothing failed and nothing left out, `record()` writes
`<DAGSTER_HOME>/lora_pipeline.launch.stamp.json`: what that launch acted on, taken BEFORE it acted
(`facts()`: the config, the code, the selection, each dataset folder's fingerprint, each run folder's
fingerprint and each checkpoint's sha256), the up-to-date outcomes a
re-launch would report, and the instance's sqlite files as they are after it (size, mtime, inode).
The next launch with the same selection (`unchanged()`, not `--all`) computes the same facts; when
they are equal, every dataset still has a snapshot and every checkpoint its evaluation.json (what the
full path checks besides Dagster), and the instance files are untouched
(no run, materialization, observation, partition or wipe since, from anyone: all of them write these
files), its answer is the stamp's: everything up to date. It then opens no instance, builds no
definitions and asks no stale-status resolver: 0.1-0.2 s instead of ~1.5 s (most of it importing
Dagster's storage layer). Anything else takes the full path, which is the judge; the stamp only
remembers its last verdict.

Written only when the launch saw no foreign activity in the instance while it ran (a run that is not
its own, or an asset event outside its runs), closed no lost run and leaves no run unfinished (the
next launch's run health check must see those), and only for the shipped sqlite instance (dagster.yaml
as lora_pipeline/instance.py writes it). A file that changed during the launch has other facts than
the stamp's (taken before), so the next launch takes the full path for it. Code: the size and mtime of
every .py file of the project's packages and Dagster's version, so an edit to an asset's code version
(or anything else) is never answered from the stamp.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from assets.launch_result import LaunchSummary, Outcome
from lora_pipeline.config import Config

STAMP_FILE = "lora_pipeline.launch.stamp.json"
VERSION = 1
# The shipped sqlite instance's files that any run, event, partition or wipe writes.
INSTANCE_FILES = ("history/runs.db", "history/runs.db-wal", "history/runs/index.db", "history/runs/index.db-wal")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def code_digest() -> str:
    """Size and mtime of every .py file of the project's packages, and the Dagster version."""
    import dagster

    import assets
    import lora_pipeline
    import resources

    rows = []
    for pkg in (assets, resources, lora_pipeline):
        root = Path(pkg.__file__).parent
        for p in sorted(root.rglob("*.py")):
            try:
                st = p.stat()
            except OSError:
                continue
            rows.append((str(p), st.st_size, st.st_mtime_ns))
    return _digest([dagster.__version__, sys.version, rows])


def instance_marker(home: Path) -> dict[str, list[int] | None] | None:
    """The instance's sqlite files as they are; None unless it is the shipped local sqlite instance."""
    from lora_pipeline.instance import DAGSTER_YAML

    try:
        if (Path(home) / "dagster.yaml").read_text() != DAGSTER_YAML:
            return None
    except OSError:
        return None
    out: dict[str, list[int] | None] = {}
    for name in INSTANCE_FILES:
        try:
            st = (Path(home) / name).stat()
            out[name] = [st.st_size, st.st_mtime_ns, st.st_ino]
        except FileNotFoundError:
            out[name] = None
    return out


def facts(config: Config, run_ids: Iterable[str], checkpoint_ids: Iterable[str], scans: list) -> dict[str, Any]:
    """What a launch of this selection acts on (module docstring); `scans` as the launch scanned them."""
    from lora_pipeline.dataset.layout import DatasetError
    from lora_pipeline.dataset.snapshot import source_fingerprint

    datasets = {}
    for name, ds in sorted(config.datasets.items()):
        try:
            datasets[name] = source_fingerprint(config.storage, name, ds.path)
        except DatasetError as e:
            datasets[name] = f"error: {e}"
    runs = {s.run_id: [s.fingerprint, str(Path(s.folder).resolve()),
                       {c.partition_key: c.sha256 for c in s.checkpoints}] for s in scans}
    return {"config": _digest(config.model_dump(mode="json")), "code": code_digest(),
            "selection": [sorted(run_ids), sorted(checkpoint_ids)], "datasets": datasets, "runs": runs}


def _path(home: Path) -> Path:
    return Path(home) / STAMP_FILE


def forget(home: Path) -> None:
    _path(home).unlink(missing_ok=True)


def record(home: Path, before: dict[str, Any], summary: LaunchSummary) -> None:
    """Write the stamp after a launch (call it after the instance is disposed, holding the launch lock)."""
    from lora_pipeline.fsutil import atomic_write_json

    marker = instance_marker(home)
    if marker is None or summary.failed or summary.left:
        forget(home)
        return
    atomic_write_json(_path(home), {
        "version": VERSION, "facts": before, "instance": marker,
        "outcomes": [[o.asset, o.partition] for o in summary.outcomes],
        "checkpoints": summary.checkpoints, "runs": summary.runs, "pickup_seconds": summary.pickup_seconds})


def unchanged(config: Config, home: Path, run_ids: tuple[str, ...], checkpoint_ids: tuple[str, ...],
              scan: Callable[[], list]) -> LaunchSummary | None:
    """The summary of a launch that has nothing to do, when the stamp says so and nothing changed since
    (module docstring); None: take the full path. `scan()` scans the runs as the full path would."""
    try:
        stamp = json.loads(_path(home).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp.get("version") != VERSION:
        return None
    marker = instance_marker(home)
    if marker is None or marker != stamp.get("instance"):
        return None
    scans = scan()
    if any(s.left for s in scans):
        return None
    if facts(config, run_ids, checkpoint_ids, scans) != stamp.get("facts"):
        return None
    # What the launch made, still there (the full path checks these too).
    from lora_pipeline.dataset.snapshot import latest_snapshot
    from lora_pipeline.storage import Storage, split_checkpoint_partition_key

    if any(latest_snapshot(config.storage, name) is None for name in config.datasets):
        return None
    storage = Storage(Path(config.storage))
    for pk in stamp.get("checkpoints") or []:
        if not (storage.renders_dir(*split_checkpoint_partition_key(pk)) / "evaluation.json").is_file():
            return None
    if instance_marker(home) != marker:  # written to while we looked
        return None
    return LaunchSummary(dagster_home=Path(home), checkpoints=list(stamp.get("checkpoints") or []),
                         runs=list(stamp.get("runs") or []),
                         outcomes=[Outcome(a, p, "up_to_date") for a, p in stamp.get("outcomes") or []],
                         pickup_seconds=int(stamp.get("pickup_seconds") or 0))


def foreign_activity(instance, since: float, own_runs: set[str], after_event_id: int | None,
                     own_token: str | None = None) -> bool:
    """True when a run is not finished (anyone's), or when, since `since` (a timestamp), the instance got
    a run that is not one of `own_runs`, or an asset materialization or observation outside them (event
    ids after `after_event_id`) that is not a runless observation tagged with `own_token` (the source
    observations the launch reports itself)."""
    from datetime import UTC, datetime

    import dagster as dg

    try:
        waiting = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
                   dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
        if instance.get_run_records(dg.RunsFilter(statuses=waiting), limit=1):
            return True  # a run not finished (whoever's): the next launch must look at it (run_health)
        recent = instance.get_run_records(dg.RunsFilter(updated_after=datetime.fromtimestamp(since, UTC)))
        if any(r.dagster_run.run_id not in own_runs for r in recent):
            return True
        if after_event_id is None:
            return True
        for kind in (dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.ASSET_OBSERVATION):
            records = instance.event_log_storage.get_event_records(
                dg.EventRecordsFilter(event_type=kind, after_cursor=after_event_id))
            if any(r.run_id not in own_runs and not _own_observation(r, own_token) for r in records):
                return True
    except Exception:  # noqa: BLE001 - any doubt: no stamp (the next launch takes the full path)
        return True
    return False


def _own_observation(record, own_token: str | None) -> bool:
    from assets.launch_guard import OBSERVED_BY_TAG

    obs = record.asset_observation
    return bool(own_token) and not record.run_id and obs is not None and (obs.tags or {}).get(OBSERVED_BY_TAG) == own_token


def max_event_id(instance) -> int | None:
    """The instance's latest event id (0: no event yet); None when it cannot say."""
    try:
        return instance.event_log_storage.get_maximum_record_id() or 0
    except Exception:  # noqa: BLE001 - unknown: foreign_activity then says "yes"
        return None


def enabled() -> bool:
    """On unless LORA_PIPELINE_NO_STAMP is set (to make every launch take the full path)."""
    return not os.environ.get("LORA_PIPELINE_NO_STAMP")
