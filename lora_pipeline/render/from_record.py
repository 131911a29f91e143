"""Build the explicit evaluation inputs from the project config and a stored run record.

`storage/runs/<run_id>/run.json` (written by the training layer) -> RunFacts, the checkpoint file,
the configured base model it matches (CONTRACT section 1), the captions' trigger (the configured
dataset's `trigger`), the eval spec and the renders dir. The record's paths are resolved against the
config's roots (a moved or copied workspace reads its own run folders). A missing or unreadable
record is an `EvaluationSetupError` whose message is one line naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from lora_pipeline.config import Config
from lora_pipeline.render.cache import CACHE_DIR
from lora_pipeline.render.contract import resolve_base
from lora_pipeline.render.evaluate import EvaluationInputs
from lora_pipeline.render.spec import CheckpointInput, EvalSpec, RunFacts
from lora_pipeline.storage import Storage


class EvaluationSetupError(Exception):
    """The evaluation cannot start (no run record, unknown checkpoint); one line."""


def inputs_for(config: Config, run_id: str, checkpoint_id: str, device: str, dtype: str,
               dagster_run_id: str | None = None) -> EvaluationInputs:
    from lora_pipeline.training.record import Roots, RunRecord

    storage = Storage(Path(config.storage))
    path = storage.run_record(run_id)
    try:
        doc = json.loads(path.read_text("utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        record = RunRecord.from_dict(doc, Roots.of(config))
    except FileNotFoundError:
        raise EvaluationSetupError(f"{path}: no run record for run {run_id!r} (ingest the run first)") from None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise EvaluationSetupError(f"{path}: unreadable run record ({type(e).__name__}: {e})") from None
    ck = next((c for c in record.checkpoints if c.checkpoint_id == checkpoint_id), None)
    if ck is None:
        raise EvaluationSetupError(f"{path}: run {run_id!r} has no checkpoint {checkpoint_id!r}")
    ds_name = record.dataset.name
    caption_trigger = config.datasets[ds_name].trigger if ds_name and ds_name in config.datasets else None
    facts = RunFacts.from_run_record(record, checkpoint_id, caption_trigger=caption_trigger)
    base = resolve_base(facts.base, dict(config.base_models), Path(config.storage) / CACHE_DIR)
    return EvaluationInputs(facts=facts, spec=EvalSpec.from_config(config.eval), base=base,
                            checkpoint=CheckpointInput(Path(ck.path), ck.sha256),
                            out_dir=storage.renders_dir(run_id, checkpoint_id), device=device, dtype=dtype,
                            dagster_run_id=dagster_run_id, storage_root=Path(config.storage),
                            clip_model=config.eval.clip_model, quality_thresholds=config.checks.quality_thresholds())
