"""The normalised run record every trainer format is read into (issue 4), and that evaluation,
reports and trace read back from `storage/runs/<run_id>/run.json`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lora_pipeline.findings import Finding


@dataclass
class BaseModelRef:
    name: str | None = None
    path: str | None = None
    sha256: str | None = None
    architecture: str | None = None  # sd1 | sd2 | sdxl | flux | sd-unet | unknown


@dataclass
class DatasetRef:
    path: str | None = None
    snapshot_id: str | None = None
    name: str | None = None  # the configured dataset it matched, if any


@dataclass
class CheckpointRecord:
    checkpoint_id: str
    path: str  # absolute
    sha256: str
    size: int
    step: int | None = None
    epoch: int | None = None
    partition_key: str = ""


@dataclass
class RunRecord:
    run_id: str
    folder: str  # absolute
    format: str  # native | kohya | ai-toolkit | simpletuner | onetrainer | diffusers | generic
    base_model: BaseModelRef = field(default_factory=BaseModelRef)
    trigger: str | None = None
    rank: int | None = None
    alpha: float | None = None
    learning_rate: float | None = None
    optimizer: str | None = None
    steps: int | None = None
    resolution: int | None = None
    dataset: DatasetRef = field(default_factory=DatasetRef)
    started_at: str | None = None  # ISO 8601, UTC
    checkpoints: list[CheckpointRecord] = field(default_factory=list)
    loss: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    sources: dict[str, str] = field(default_factory=dict)  # fact -> where it was read from
    conflicts: dict[str, dict[str, Any]] = field(default_factory=dict)  # fact -> {source: value}
    findings: list[Finding] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["findings"] = [f.to_dict() for f in self.findings]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        d = dict(d)
        d["base_model"] = BaseModelRef(**d.get("base_model") or {})
        d["dataset"] = DatasetRef(**d.get("dataset") or {})
        d["checkpoints"] = [CheckpointRecord(**c) for c in d.get("checkpoints") or []]
        d["loss"] = [tuple(x) for x in d.get("loss") or []]
        d["findings"] = [Finding.from_dict(f) for f in d.get("findings") or []]
        return cls(**d)
