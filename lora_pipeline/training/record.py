"""The normalised run record every trainer format is read into (issue 4), and that evaluation,
reports and trace read back from `storage/runs/<run_id>/run.json`.

In memory every path is absolute. In run.json (`to_dict`) they are relative to their roots, so a
workspace can be moved or copied: the run folder relative to training_runs (its name: every run is a
direct subfolder), checkpoint files, aliases and finding subjects relative to the run folder, the
dataset path as the configured dataset's name + the path relative to its folder. `"paths"` says so,
and keeps the roots as they were when written, the fallback of a reader that does not pass `Roots`.
`from_dict(d, roots)` resolves them against the current config's roots (`Roots.of(config)`); a run
folder found under the current training_runs wins over the one recorded. Records written before
(absolute paths) read as before and are re-anchored the same way (`reanchored`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
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
    rel: str | None = None  # `path` relative to that dataset's configured folder (POSIX, "." for it)


@dataclass
class CheckpointRecord:
    checkpoint_id: str
    path: str  # absolute (in run.json: relative to the run folder when inside it)
    sha256: str
    size: int
    step: int | None = None
    epoch: int | None = None
    partition_key: str = ""
    mtime_ns: int = 0
    final: bool = False  # the trainer's final file (e.g. kohya `<name>.safetensors`)
    aliases: list[str] = field(default_factory=list)  # other files with the same bytes (absolute)
    # ||delta W||_F over all modules: not computed at ingestion (None in run.json); filled in memory
    # where it is needed, from the per-checkpoint norms cached by file hash (training/norms.py)
    total_delta_norm: float | None = None
    nonfinite_tensors: int = 0


@dataclass
class RunRecord:
    run_id: str
    folder: str  # absolute (in run.json: relative to training_runs)
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

    def facts_version(self) -> str:
        """A hash of what the run says about every one of its checkpoints (base, trigger, network,
        settings, dataset link, run-level findings), without the checkpoint list, the loss log and the
        step count so far: the `training_run` asset's data version. A new checkpoint changes the run's
        fingerprint (it is ingested again) but not this, so the run's other checkpoints stay fresh."""
        d = asdict(self)
        files = {c.path for c in self.checkpoints} | {a for c in self.checkpoints for a in c.aliases}
        # The paths stay in: reports name the files they judged, so a workspace copied or moved
        # elsewhere has its reports redone once (renders come from the render cache).
        for k in ("checkpoints", "loss", "steps", "epochs", "pending", "ignored", "config_files", "sources",
                  "conflicts"):
            d.pop(k, None)
        d["findings"] = sorted((f.code, f.severity, f.message) for f in self.findings if f.subject not in files)
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    def checkpoint(self, checkpoint_id: str) -> CheckpointRecord | None:
        return next((c for c in self.checkpoints if c.checkpoint_id == checkpoint_id), None)

    def to_dict(self) -> dict[str, Any]:
        """The run.json form: paths relative to their roots (see the module docstring)."""
        d = asdict(self)
        d["findings"] = [f.to_dict() for f in self.findings]
        folder = Path(self.folder)
        if not folder.is_absolute():
            return d
        under: dict[str, Any] = {"training_runs": str(folder.parent)}
        d["folder"] = folder.name
        for c in d["checkpoints"]:
            c["path"] = _relative(c["path"], folder)
            c["aliases"] = [_relative(a, folder) for a in c["aliases"]]
        subjects = []
        for i, f in enumerate(d["findings"]):
            rel = _inside(f["subject"], folder)
            if rel is not None:
                f["subject"] = rel
                subjects.append(i)
        ds = self.dataset
        if ds.name and ds.rel is not None and ds.path and Path(ds.path).is_absolute():
            anchor = _strip(Path(ds.path), ds.rel)
            if anchor is not None:
                d["dataset"]["path"] = None
                under["datasets"] = {ds.name: str(anchor)}
        d["paths"] = {"relative": True, "subjects": subjects, "written_under": under}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], roots: Roots | None = None) -> RunRecord:
        """A record from run.json (either form); with `roots`, re-anchored to them. A relative path
        that leaves its root raises ValueError."""
        d = dict(d)
        d.pop("schema_version", None)
        paths = d.pop("paths", None)
        d["base_model"] = BaseModelRef(**d.get("base_model") or {})
        d["dataset"] = DatasetRef(**d.get("dataset") or {})
        d["checkpoints"] = [CheckpointRecord(**c) for c in d.get("checkpoints") or []]
        d["loss"] = [tuple(x) for x in d.get("loss") or []]
        d["findings"] = [Finding.from_dict(f) for f in d.get("findings") or []]
        known = set(cls.__dataclass_fields__)
        record = cls(**{k: v for k, v in d.items() if k in known})
        if isinstance(paths, dict) and paths.get("relative"):
            record._anchor(paths)
        return record.reanchored(roots) if roots is not None else record

    def _anchor(self, paths: dict[str, Any]) -> None:
        """Relative paths (run.json) -> absolute, under the roots recorded at writing."""
        under = paths.get("written_under") or {}
        name = _safe_rel(self.folder, "folder")
        folder = Path(under["training_runs"]) / name if under.get("training_runs") else Path(name)
        self.folder = str(folder)
        for c in self.checkpoints:
            c.path = _join(folder, c.path, "checkpoint path")
            c.aliases = [_join(folder, a, "checkpoint alias") for a in c.aliases]
        for i in paths.get("subjects") or []:
            if not isinstance(i, int) or not 0 <= i < len(self.findings):
                raise ValueError(f"paths.subjects: no finding {i!r}")
            self.findings[i].subject = _join(folder, self.findings[i].subject, "finding subject")
        ds = self.dataset
        if ds.path is None and ds.rel is not None:
            anchor = (under.get("datasets") or {}).get(ds.name)
            if anchor:
                ds.path = str(Path(anchor) / _safe_rel(ds.rel, "dataset path"))

    def reanchored(self, roots: Roots) -> RunRecord:
        """This record with its paths moved to the current roots: the run folder to
        `training_runs/<name>` when that exists, or when the recorded folder does not (a moved or
        copied workspace); the dataset path under its configured folder. In place; returns self."""
        if roots.training_runs is not None and self.folder:
            old = Path(self.folder)
            new = Path(roots.training_runs) / old.name
            if not _same(old, new) and (new.is_dir() or not old.is_dir()):
                self._move(old, new)
        ds = self.dataset
        root = roots.datasets.get(ds.name) if ds.name else None
        if root is not None and ds.path is not None:
            try:
                cand = Path(root) / _safe_rel(ds.rel, "dataset path") if ds.rel is not None \
                    else _by_name(Path(ds.path), Path(root))
            except ValueError:  # a rel that would leave the dataset folder: left as recorded
                cand = None
            if cand is not None and (cand.exists() or not Path(ds.path).exists()):
                ds.path = str(cand)
        return self

    def _move(self, old: Path, new: Path) -> None:
        def move(p: str) -> str:
            rel = _inside(p, old)
            return p if rel is None else str(new / rel)

        self.folder = str(new)
        for c in self.checkpoints:
            c.path, c.aliases = move(c.path), [move(a) for a in c.aliases]
        for f in self.findings:
            f.subject = move(f.subject)


@dataclass(frozen=True)
class Roots:
    """The folders run-record paths are resolved against: the config's training_runs and datasets."""

    training_runs: Path | None = None
    datasets: Mapping[str, Path] = field(default_factory=dict)

    @classmethod
    def of(cls, config: Any) -> Roots:
        return cls(Path(config.training_runs), {k: Path(v.path) for k, v in config.datasets.items()})


def _inside(path: str, folder: Path) -> str | None:
    """`path` relative to `folder` (POSIX, "." for the folder itself) when it is an absolute path
    inside it, else None."""
    if not isinstance(path, str) or not os.path.isabs(path):
        return None
    try:
        rel = Path(path).relative_to(folder)
    except ValueError:
        return None
    return rel.as_posix() if ".." not in rel.parts else None


def _relative(path: str, folder: Path) -> str:
    rel = _inside(path, folder)
    return path if rel is None else rel


def _safe_rel(rel: str, what: str) -> str:
    if not isinstance(rel, str) or not rel or "\0" in rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ValueError(f"{what} {rel!r} is not a path inside its root")
    return rel


def _join(folder: Path, path: str, what: str) -> str:
    """A path from run.json: relative ones under `folder` (never outside), absolute ones as they are."""
    if isinstance(path, str) and os.path.isabs(path):
        return path
    return str(folder / _safe_rel(path, what))


def _strip(path: Path, rel: str) -> Path | None:
    """The folder `path` is `rel` inside of (None when it does not end with `rel`)."""
    parts = [] if rel == "." else Path(rel).parts
    if parts and path.parts[-len(parts):] != tuple(parts):
        return None
    return Path(*path.parts[:len(path.parts) - len(parts)]) if parts else path


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except (OSError, ValueError):
        return False


def _by_name(old: Path, root: Path) -> Path | None:
    """An old absolute dataset path re-anchored under `root` by the part after the folder that has
    root's name (records written before paths were relative)."""
    parts = old.parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == root.name:
            rest = parts[i + 1:]
            return root.joinpath(*rest) if ".." not in rest else None
    return None
