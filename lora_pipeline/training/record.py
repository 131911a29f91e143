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
    architecture: str | None = None  # sd1 | sd2 | sdxl | sd3 | flux1 | flux2 | sd-unet | flux | unknown


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
    mtime_ns: int = 0
    final: bool = False  # the trainer's final file (e.g. kohya `<name>.safetensors`)
    aliases: list[str] = field(default_factory=list)  # other files with the same bytes (absolute)
    total_delta_norm: float | None = None  # ||delta W||_F over all modules (from the analysis)
    nonfinite_tensors: int = 0


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
    name: str | None = None  # the trainer's output name
    epochs: int | None = None
    images: int | None = None  # training images (without repeats) when known
    config_files: list[str] = field(default_factory=list)  # config/log files read (relative)
    pending: list[str] = field(default_factory=list)  # checkpoint files still being written
    ignored: list[str] = field(default_factory=list)  # files refused (pickles) or unreadable
    extra: dict[str, Any] = field(default_factory=dict)  # trainer-specific facts kept as read

    def checkpoint(self, checkpoint_id: str) -> CheckpointRecord | None:
        return next((c for c in self.checkpoints if c.checkpoint_id == checkpoint_id), None)

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
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})
