"""The explicit inputs of a checkpoint evaluation, independent of Dagster and of the training layer.

`EvalSpec` is the controlled setting every arm shares (CONTRACT section 2); `RunFacts` the facts the
run declares (trigger, rank, alpha, resolution, base model); `BaseChoice` the base model the worker
evaluates on; `CheckpointInput` the LoRA file. `from_config`/`from_run_record` build them from the
project's config and run record; tests build them directly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ARMS = ("base", "lora_no_trigger", "lora_trigger")
LORA_ARMS = ("lora_no_trigger", "lora_trigger")


@dataclass(frozen=True)
class EvalSpec:
    prompts: tuple[str, ...]
    negative_prompt: str = ""
    seeds: tuple[int, ...] = (11,)
    width: int = 512
    height: int = 512
    steps: int = 30
    guidance_scale: float = 7.0
    scheduler: str | None = None  # None = the base model's own scheduler
    lora_scale: float = 1.0

    @classmethod
    def from_config(cls, ev: Any) -> EvalSpec:
        return cls(prompts=tuple(ev.prompts), negative_prompt=ev.negative_prompt, seeds=tuple(ev.seeds),
                   width=ev.width, height=ev.height, steps=ev.steps, guidance_scale=float(ev.guidance_scale),
                   scheduler=ev.scheduler, lora_scale=float(ev.lora_scale))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["prompts"], d["seeds"] = list(self.prompts), list(self.seeds)
        return d

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DeclaredBase:
    """The base model the run says it was trained on (any field may be unknown)."""

    name: str | None = None
    path: str | None = None
    sha256: str | None = None
    architecture: str | None = None


@dataclass(frozen=True)
class RunFacts:
    run_id: str
    checkpoint_id: str
    trigger: str | None = None
    rank: int | None = None
    alpha: float | None = None
    resolution: int | None = None
    base: DeclaredBase = field(default_factory=DeclaredBase)
    caption_trigger: str | None = None  # the trigger the dataset's captions carry (config or snapshot)
    step: int | None = None
    dataset_snapshot: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_run_record(cls, record: Any, checkpoint_id: str, caption_trigger: str | None = None) -> RunFacts:
        b = record.base_model
        ck = next((c for c in record.checkpoints if c.checkpoint_id == checkpoint_id), None)
        ds = record.dataset
        return cls(run_id=record.run_id, checkpoint_id=checkpoint_id, trigger=record.trigger, rank=record.rank,
                   alpha=record.alpha, resolution=record.resolution,
                   base=DeclaredBase(b.name, b.path, b.sha256, b.architecture), caption_trigger=caption_trigger,
                   step=ck.step if ck else None,
                   dataset_snapshot={"path": ds.path, "snapshot_id": ds.snapshot_id, "name": ds.name})


@dataclass(frozen=True)
class BaseChoice:
    """The base model the worker evaluates on: a configured entry (name + path), and how it matched."""

    name: str
    path: Path
    matched_by: str = "explicit"  # name | path | hash | explicit


@dataclass(frozen=True)
class CheckpointInput:
    path: Path
    sha256: str | None = None  # as recorded by training; re-hashed by the worker
