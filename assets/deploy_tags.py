"""Tags that route render steps to GPUs when the pipeline is scaled out (deploy/, docs/scaling.md).

Harmless locally: the in-process and multiprocess executors ignore them. The k8s job executor reads
`dagster-k8s/config` (one nvidia.com/gpu, GPU-node toleration: deploy/k8s/gpu_step.yaml); the celery
executor (deploy/celery/definitions.py) reads `dagster-celery/queue`, proven on a real broker and
workers by tests/deploy/test_celery_engine.py. Put them on the op or asset: celery-k8s ignores job tags.
"""

from __future__ import annotations

from pathlib import Path

import yaml

_GPU_STEP = Path(__file__).resolve().parents[1] / "deploy" / "k8s" / "gpu_step.yaml"
_FALLBACK = {
    "container_config": {"resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}},
    "pod_spec_config": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
}


def _k8s_gpu_config() -> dict:
    # One source of truth: the YAML in deploy/ when the checkout has it, else the same shape inline.
    if _GPU_STEP.is_file():
        return yaml.safe_load(_GPU_STEP.read_text())
    return _FALLBACK


GPU_STEP_TAGS: dict = {"dagster-k8s/config": _k8s_gpu_config(), "dagster-celery/queue": "gpu"}
