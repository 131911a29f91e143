"""What the sensor needs, without Dagster: for every run folder, the checkpoints whose files are
complete, with their ids, partition keys and sha256, and a fingerprint of the run's content.

A checkpoint file is complete when its safetensors header parses and the file ends where the header
says (`header_complete`) AND one of: the trainer declares it (listed in its run file, or it is the
trainer's final file / the run is finished), its size and mtime equal the previous observation
(size stable across ticks; observations live in the run's file index), or it has not changed for
`checks.checkpoint_settle_seconds`. A half-written file is never complete.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from lora_pipeline.config import Config
from lora_pipeline.storage import run_id_for
from lora_pipeline.training.checkpoints import FileIndex, header_complete
from lora_pipeline.training.formats import FORMATS, detect_format
from lora_pipeline.training.ingest import _checkpoints, _read_candidates, discover_run_folders, index_path
from lora_pipeline.training.record import RunRecord


@dataclass
class ReadyCheckpoint:
    checkpoint_id: str
    partition_key: str
    sha256: str

    @property
    def run_key(self) -> str:
        return f"{self.partition_key}@{self.sha256}"


@dataclass
class RunScan:
    run_id: str
    folder: Path
    fingerprint: str
    checkpoints: list[ReadyCheckpoint] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # files not (yet) complete

    @property
    def run_key(self) -> str:
        return f"{self.run_id}@{self.fingerprint}"


def run_fingerprint(checkpoint_shas: list[str], config_stats: list[tuple[str, int, int]]) -> str:
    h = hashlib.sha256()
    for sha in sorted(checkpoint_shas):
        h.update(sha.encode() + b"\n")
    for rel, size, mtime in sorted(config_stats):
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()[:24]


def config_stats(folder: Path, files: list[str]) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime) of the run's config files; growing logs are left out."""
    out = []
    for rel in files:
        if rel.endswith((".jsonl", ".db")) or "tfevents" in rel:
            continue
        try:
            st = (folder / rel).stat()
        except OSError:
            continue
        out.append((rel, st.st_size, st.st_mtime_ns))
    return out


def fingerprint_of(record: RunRecord) -> str:
    return run_fingerprint([c.sha256 for c in record.checkpoints], config_stats(Path(record.folder),
                                                                                 record.config_files))


def scan_run(folder: Path, config: Config, now: float | None = None) -> RunScan:
    now = time.time() if now is None else now
    folder = folder.resolve()
    run_id = run_id_for(folder.name)
    parsed = FORMATS[detect_format(folder)].parse(folder)
    index = FileIndex(index_path(config.storage, run_id))
    ready, waiting = [], []
    for cand in parsed.candidates:
        rel = cand.path.relative_to(folder).as_posix()
        try:
            st = cand.path.stat()
        except OSError:
            continue
        stable = index.observe(rel, st)
        settled = now - st.st_mtime >= config.checks.checkpoint_settle_seconds
        declared = cand.complete or cand.final or parsed.finished
        if header_complete(cand.path) and (declared or stable or settled):
            ready.append(cand)
        else:
            waiting.append(rel)
    parsed.candidates = ready
    scratch = RunRecord(run_id=run_id, folder=str(folder), format=parsed.format)
    read = _read_candidates(parsed, folder, scratch, index, config, now)
    index.save()
    _checkpoints(read, scratch)
    scan = RunScan(run_id, folder, run_fingerprint([c.sha256 for c in scratch.checkpoints],
                                                   config_stats(folder, parsed.config_files)), waiting=waiting)
    scan.checkpoints = [ReadyCheckpoint(c.checkpoint_id, c.partition_key, c.sha256) for c in scratch.checkpoints]
    return scan


def scan_runs(config: Config, now: float | None = None) -> list[RunScan]:
    return [scan_run(p, config, now) for p in discover_run_folders(config)]
