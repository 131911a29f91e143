"""The scale-out configs in deploy/ validate against Dagster's own schemas (real dagster-postgres,
dagster-k8s and dagster-celery), and render steps carry the GPU routing tags."""

import json
from pathlib import Path

import dagster as dg
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def test_postgres_instance_yaml_matches_dagster_instance_schema(tmp_path):
    from dagster._core.instance.config import dagster_instance_config

    (tmp_path / "dagster.yaml").write_text((DEPLOY / "dagster.yaml").read_text())
    config, custom_class = dagster_instance_config(str(tmp_path))
    assert custom_class is None
    assert set(config["storage"]["postgres"]["postgres_db"]) >= {"username", "password", "hostname", "db_name"}
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"


def test_postgres_instance_yaml_rejects_a_typo(tmp_path):
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster._core.instance.config import dagster_instance_config

    (tmp_path / "dagster.yaml").write_text((DEPLOY / "dagster.yaml").read_text().replace("db_name", "db_nam"))
    with pytest.raises(DagsterInvalidConfigError):
        dagster_instance_config(str(tmp_path))


@dg.op
def _step():
    return 1


def _validate(executor, run_config):
    @dg.job(executor_def=executor)
    def probe():
        _step()

    return dg.validate_run_config(probe, run_config)


def test_k8s_executor_run_config_is_valid():
    from dagster_k8s import k8s_job_executor

    cfg = yaml.safe_load((DEPLOY / "k8s" / "executor.yaml").read_text())
    validated = _validate(k8s_job_executor, cfg)
    assert validated["execution"]["k8s"]["job_namespace"] == "lora-pipeline"
    with pytest.raises(dg.DagsterInvalidConfigError):
        _validate(k8s_job_executor, {"execution": {"config": {"max_concurent": 4}}})


def test_celery_executor_run_config_is_valid(monkeypatch):
    from dagster_celery import celery_executor

    monkeypatch.setenv("DAGSTER_CELERY_BROKER_URL", "pyamqp://guest@localhost//")
    cfg = yaml.safe_load((DEPLOY / "celery" / "executor.yaml").read_text())
    validated = _validate(celery_executor, cfg)
    (executor_cfg,) = validated["execution"].values()
    assert executor_cfg["broker"] == "pyamqp://guest@localhost//"


def test_gpu_step_tags_parse_as_k8s_config_requesting_a_gpu():
    from dagster_k8s.job import get_user_defined_k8s_config

    from assets.deploy_tags import GPU_STEP_TAGS

    # Dagster serialises dict tag values to JSON strings when it attaches them to a step.
    k8s = get_user_defined_k8s_config({k: v if isinstance(v, str) else json.dumps(v) for k, v in GPU_STEP_TAGS.items()})
    assert k8s.container_config["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert k8s.container_config["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert k8s.pod_spec_config["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert GPU_STEP_TAGS["dagster-celery/queue"] == "gpu"
