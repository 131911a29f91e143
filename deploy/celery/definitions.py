"""The code location for a Celery deployment: the project's definitions with the celery executor as the
default executor, so the jobs that do not name an executor run each step as a Celery task: the
sensor's `checkpoint_job` (lora_checkpoint -> eval_renders -> checkpoint_report), `training_run_job`,
`dataset_snapshot_job`, `run_assets_job`. Steps go to the `dagster` queue; `eval_renders` carries
`dagster-celery/queue: gpu` (assets/deploy_tags.py), so only GPU workers take it. The `evaluation`
job keeps its in-process executor (one process renders a range of checkpoints).

    dagster-webserver -m deploy.celery.definitions        # from the repository root
    # run config for every run: deploy/celery/executor.yaml (DAGSTER_CELERY_BROKER_URL)

Workers load this module by name: start them with the repository root on PYTHONPATH, the same
LORA_PIPELINE_CONFIG, DAGSTER_HOME and paths (docs/scaling.md).
"""

from __future__ import annotations

import dagster as dg
from dagster_celery import celery_executor

from assets import build_definitions

defs: dg.Definitions = dg.Definitions.merge(build_definitions(), dg.Definitions(executor=celery_executor))
