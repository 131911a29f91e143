"""The Dagster code location: assembles the assets, checks, resources, jobs, sensors and schedules
of the Dagster layer (`assets/`, `resources/`). Importing it must not import torch, diffusers,
transformers or peft (tests/test_definitions.py proves it): those load inside the steps.

Every job without its own executor runs its steps in the run's process (`in_process_executor`): a
checkpoint's steps share one process, so the base model loads once per run and no step pays a
subprocess start (Dagster's default starts one per step). A scale-out deployment sets its own
executor instead (deploy/celery/definitions.py builds from `build_definitions()` directly).
"""

from __future__ import annotations

import dagster as dg

from assets import build_definitions

defs: dg.Definitions = dg.Definitions.merge(build_definitions(), dg.Definitions(executor=dg.in_process_executor))
