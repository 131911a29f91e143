"""The Dagster code location: assembles the assets, checks, resources, jobs, sensors and schedules
of the Dagster layer (`assets/`, `resources/`). Importing it must not import torch, diffusers,
transformers or peft (tests/test_definitions.py proves it): those load inside the steps.
"""

from __future__ import annotations

import dagster as dg

from assets import build_definitions

defs: dg.Definitions = build_definitions()
