"""The whole pipeline against a real PostgreSQL as the Dagster instance storage (runs, event log,
schedules), configured by the shipped deploy/dagster.yaml: the launcher materializes dataset ->
training -> evaluation -> reports into it."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg

from assets.partitions import has_checkpoint_partition

REPO = Path(__file__).resolve().parents[2]


def test_pipeline_runs_with_postgres_instance_storage(postgres_url, tmp_path, monkeypatch, toy_base, toy_dataset,
                                                     native_run):
    import psycopg2
    import torch

    from assets.launch import materialize
    from lora_pipeline.config import load_config

    torch.set_num_threads(1)
    (tmp_path / "runs").mkdir()
    shutil.copytree(native_run, tmp_path / "runs" / "pg-run")
    cfg = tmp_path / "lora_pipeline.yaml"
    cfg.write_text(
        "storage: storage\ntraining_runs: runs\n"
        f"datasets:\n  products:\n    path: {toy_dataset}\n    trigger: sks_chair\n"
        f"base_models:\n  toy-sd1: {toy_base}\n"
        "eval:\n  prompts: ['a photo of {trigger}']\n  seeds: [3]\n  width: 64\n  height: 64\n  steps: 2\n"
        "runtime:\n  device: cpu\n  dtype: float32\n"
        "checks:\n  min_images: 1\n  resolution: 64\n")
    config = load_config(cfg)
    # The shipped deploy/dagster.yaml itself, pointed at the throwaway server (its port is not 5432).
    url = urlparse(postgres_url)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "deploy" / "dagster.yaml").read_text().replace(
        "port: 5432", f"port: {url.port}"))
    for var, value in (("DAGSTER_PG_USER", url.username), ("DAGSTER_PG_PASSWORD", "unused-with-trust-auth"),
                       ("DAGSTER_PG_HOST", url.hostname), ("DAGSTER_PG_DB", url.path.lstrip("/"))):
        monkeypatch.setenv(var, value)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        summary = materialize(config, instance=instance)
        assert not summary.failed, summary.lines()
        done = {o.asset for o in summary.materialized}
        assert {"dataset_snapshot", "training_run", "lora_checkpoint", "eval_renders", "checkpoint_report",
                "run_report"} <= done
        run_ids = {r.run_id for r in instance.get_runs()}
        assert len(run_ids) >= 4
        ck = summary.checkpoints[0]
        assert instance.get_latest_materialization_event(dg.AssetKey("eval_renders")) is not None
        assert has_checkpoint_partition(instance, ck)
    # The rows are in PostgreSQL itself, not in a local sqlite file.
    with psycopg2.connect(postgres_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_id FROM runs")
        assert {r[0] for r in cur.fetchall()} >= run_ids
        cur.execute("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
                    "AND asset_key LIKE %s", ('%eval_renders%',))
        assert cur.fetchone()[0] >= 1
    assert not list(home.rglob("*.db"))
