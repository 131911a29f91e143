"""An unchanged re-launch answered without opening the instance (assets/launch_stamp.py), and the
launcher's cheaper sqlite event writes (assets/sqlite_events.py)."""

from __future__ import annotations

import os
import time

import dagster as dg
import pytest

from lora_pipeline.storage import Storage, split_checkpoint_partition_key


def _keys(summary):
    return {(o.asset, o.partition, o.status) for o in summary.outcomes}


def test_unchanged_relaunch_opens_no_instance_and_answers_as_the_full_path(workspace, monkeypatch):
    import assets.launch as launch
    from assets import launch_stamp
    from lora_pipeline.instance import prepare_dagster_home

    config, run_id = workspace
    first = launch.materialize(config)
    assert not first.failed and first.materialized
    home = prepare_dagster_home(config)
    assert (home / launch_stamp.STAMP_FILE).is_file()

    opened = []
    real_open = launch.open_instance
    monkeypatch.setattr(launch, "open_instance", lambda h: opened.append(h) or real_open(h))
    fast = launch.materialize(config)
    assert opened == [] and not fast.failed and not fast.materialized and fast.renders == 0
    up = {(o.asset, o.partition) for o in first.outcomes}
    assert _keys(fast) == {(a, p, "up_to_date") for a, p in up}

    # Something written to the instance since (a partition added by a sensor, a run, a wipe): the full
    # path judges, and its answer is the same as the stamp's was.
    with dg.DagsterInstance.from_config(str(home)) as inst:
        inst.add_dynamic_partitions("checkpoint_ids", ["step-99999999"])
    full = launch.materialize(config)
    assert len(opened) == 1 and _keys(full) == _keys(fast)

    # An evaluation.json gone: the full path evaluates that checkpoint again.
    pk = first.checkpoints[0]
    (Storage(config.storage).renders_dir(*split_checkpoint_partition_key(pk)) / "evaluation.json").unlink()
    again = launch.materialize(config)
    assert len(opened) == 2
    assert ("eval_renders", pk) in {(o.asset, o.partition) for o in again.materialized}
    assert again.renders == 0  # from the render cache

    # --all never takes the stamp; a run folder that changed is not answered from it either.
    launch.materialize(config, include_all=True)
    assert len(opened) == 3
    run_config = config.training_runs / run_id / "lora_run.json"
    st = run_config.stat()
    os.utime(run_config, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the run's config file touched
    launch.materialize(config)
    assert len(opened) == 4


def test_foreign_activity_during_a_launch_is_seen():
    from assets.launch_stamp import foreign_activity, max_event_id

    @dg.asset
    def thing() -> None:
        return None

    with dg.instance_for_test() as inst:
        since, first = time.time() - 1, max_event_id(inst)
        assert first == 0
        run_id = dg.materialize([thing], instance=inst).run_id
        assert not foreign_activity(inst, since, {run_id}, first)
        assert foreign_activity(inst, since, set(), first)  # a run that is not ours
        later, after = time.time(), max_event_id(inst)
        inst.report_runless_asset_event(dg.AssetMaterialization("thing"))  # e.g. reported in the UI
        assert foreign_activity(inst, later, {run_id}, after)
        assert foreign_activity(inst, later, {run_id}, None)  # unknown start: never "quiet"
        # The source observations a launch reports itself (tagged with its token) are its own.
        from assets.launch_guard import OBSERVED_BY_TAG

        later, after = time.time(), max_event_id(inst)
        inst.report_runless_asset_event(dg.AssetObservation("src", partition="p", tags={OBSERVED_BY_TAG: "ours"}))
        assert not foreign_activity(inst, later, {run_id}, after, own_token="ours")
        assert foreign_activity(inst, later, {run_id}, after, own_token="another launch")
        assert foreign_activity(inst, later, {run_id}, after)


def test_sqlite_event_writes_keep_engines_and_read_back(tmp_path):
    from assets.sqlite_events import speed_up

    @dg.asset(check_specs=[dg.AssetCheckSpec("ok", asset="thing")])
    def thing(context):
        context.log.info("line one\nline two")
        return dg.MaterializeResult(metadata={"n": 1}, check_results=[dg.AssetCheckResult(passed=True)])

    (tmp_path / "dagster.yaml").write_text("")
    with dg.DagsterInstance.from_config(str(tmp_path)) as inst:
        assert speed_up(inst) and speed_up(inst)  # idempotent
        results = [dg.materialize([thing], instance=inst) for _ in range(3)]
        assert all(r.success for r in results)
        for r in results:
            logs = inst.all_logs(r.run_id)
            assert any("line one\nline two" in (e.user_message or "") for e in logs)
        assert inst.get_latest_materialization_event(dg.AssetKey("thing")).run_id == results[-1].run_id
        check = inst.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("thing"), "ok")])
        assert check[dg.AssetCheckKey(dg.AssetKey("thing"), "ok")].run_id == results[-1].run_id
        with inst.event_log_storage.index_connection() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL (WAL mode)
    # Disposed: the kept connections closed, so sqlite removed its WAL files.
    assert not list((tmp_path / "history").rglob("*.db-wal"))


def _schema(db) -> tuple:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return (con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall(),
                con.execute("SELECT version_num FROM alembic_version").fetchall(),
                con.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        con.close()


def test_new_run_shards_are_copies_of_dagsters_own_empty_shard(tmp_path):
    """A shard from the template has the schema, alembic stamp and WAL mode of one Dagster sets up
    itself, holds the run's events, and never replaces a shard that is already there."""
    from assets import sqlite_events
    from assets.sqlite_events import _shard_from_template, speed_up

    @dg.asset
    def thing():
        return dg.MaterializeResult(metadata={"n": 1})

    shards = {}
    for name, fast in (("stock", False), ("fast", True)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "dagster.yaml").write_text("")
        with dg.DagsterInstance.from_config(str(tmp_path / name)) as inst:
            assert not fast or speed_up(inst)
            run = dg.materialize([thing], instance=inst)
            assert run.success
            shards[name] = inst.event_log_storage.path_for_shard(run.run_id)
            assert inst.get_latest_materialization_event(dg.AssetKey("thing")).run_id == run.run_id
            assert any(e.dagster_event.is_step_success for e in inst.all_logs(run.run_id) if e.is_dagster_event)
    assert sqlite_events._TEMPLATE.get("shard")  # the fast instance's shard was a copy
    stock, fast = _schema(shards["stock"]), _schema(shards["fast"])
    assert stock == fast and fast[2] == "wal" and fast[1]

    with dg.DagsterInstance.from_config(str(tmp_path / "fast")) as inst:
        storage = inst.event_log_storage
        existing = os.path.getsize(shards["fast"])
        run_id = os.path.splitext(os.path.basename(shards["fast"]))[0]
        assert not _shard_from_template(storage, run_id, storage._initdb)  # there already: left alone
        assert os.path.getsize(shards["fast"]) == existing
        assert _shard_from_template(storage, "new-run", storage._initdb)
        assert _schema(storage.path_for_shard("new-run")) == stock
    assert not [p for p in os.listdir(os.path.dirname(shards["fast"])) if p.endswith(".tmp")]


def test_another_event_log_storage_is_left_alone():
    from assets.sqlite_events import speed_up

    class Fake:
        event_log_storage = object()

    assert speed_up(Fake()) is False


@pytest.mark.parametrize("every", [5.0])
def test_batched_log_sends_lines_together_and_never_holds_one_long(every):
    from lora_pipeline.render.log_batch import BatchedLog

    now, sent = [0.0], []
    log = BatchedLog(sent.append, every_s=every, prefix="[k] ", clock=lambda: now[0])
    log("a")
    log("b")
    assert sent == []
    now[0] = every  # the oldest waiting line is every_s old: the next line sends the batch
    log("c")
    assert sent == ["[k] a\n[k] b\n[k] c"]
    log("d")
    log.flush()
    log.flush()
    assert sent == ["[k] a\n[k] b\n[k] c", "[k] d"]


def test_step_output_is_captured_for_the_ui_without_tail_processes(tmp_path, monkeypatch):
    from dagster._core.execution import compute_logs

    from assets.step_logs import capture_to_files

    @dg.asset
    def noisy():
        print("to stdout from the step", flush=True)
        return 1

    tails = []
    original = compute_logs.execute_posix_tail

    def counted(*a, **k):  # a spy: Dagster's own function still runs
        tails.append(a)
        return original(*a, **k)

    (tmp_path / "dagster.yaml").write_text("")
    monkeypatch.setattr(compute_logs, "execute_posix_tail", counted)
    with dg.DagsterInstance.from_config(str(tmp_path)) as inst:
        assert capture_to_files(inst)
        result = dg.materialize([noisy], instance=inst)
        assert result.success
        manager = inst.compute_log_manager
        captured = [e.dagster_event.logs_captured_data for e in inst.all_logs(result.run_id)
                    if e.dagster_event and e.dagster_event.event_type_value == "LOGS_CAPTURED"]
        assert captured
        log_key = manager.build_log_key_for_run(result.run_id, captured[0].file_key)
        data = manager.get_log_data(log_key)
        assert b"to stdout from the step" in (data.stdout or b"")  # what the UI's stdout tab reads
        assert manager.is_capture_complete(log_key)
    assert tails == []
