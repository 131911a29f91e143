"""What the sensor needs, without Dagster: for every run folder, the checkpoints whose files are
complete, with their ids, partition keys and sha256, and a fingerprint of the run's content.

A checkpoint file is complete when its safetensors header parses and the file ends where the header
says (`header_complete`) AND one of: the trainer declares it (listed in its run file, or it is the
trainer's final file / the run is finished), its size and mtime equal the previous observation
(size stable across ticks; observations live in the run's file index), or it has not changed for
`checks.checkpoint_settle_seconds`. A half-written file is never complete; a file whose header never
becomes valid counts once it is both stable and settled (then it is a RUNTIME.LORA_INVALID finding,
not a partition). A one-shot command
(`scan_runs_rechecked`) replaces "across ticks" with one short re-check inside the command.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from lora_pipeline.config import Config
from lora_pipeline.storage import run_id_for
from lora_pipeline.training.checkpoints import FileIndex, header_complete
from lora_pipeline.training.common import Candidate, ParsedRun
from lora_pipeline.training.formats import FORMATS, detect_format
from lora_pipeline.training.ingest import (
    _checkpoints,
    _read_candidates,
    discover_run_folders,
    index_path,
    norm_lookup,
)
from lora_pipeline.training.record import RunRecord
from lora_pipeline.training.settle import Left, Pending, pending_of, recheck


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
    left: list[Left] = field(default_factory=list)  # after a re-check: the waiting files, with why

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


@dataclass
class _Look:
    """One run folder after the first look: what is ready, what is pending, and the open file index."""

    folder: Path
    run_id: str
    parsed: ParsedRun
    index: FileIndex
    ready: list[Candidate]
    pending: list[tuple[Candidate, Pending]]


def _look(folder: Path, config: Config, now: float) -> _Look:
    folder = folder.resolve()
    run_id = run_id_for(folder.name)
    fmt = detect_format(folder)
    try:
        parsed = FORMATS[fmt].parse(folder)
    except OSError:  # a folder that vanished or cannot be listed mid-scan: no checkpoints, other runs go on
        parsed = ParsedRun(format=fmt)
    index = FileIndex(index_path(config.storage, run_id))
    ready, pending = [], []
    for cand in parsed.candidates:
        rel = cand.path.relative_to(folder).as_posix()
        try:
            st = cand.path.stat()
        except OSError:
            continue
        stable = index.observe(rel, st)
        settled = now - st.st_mtime >= config.checks.checkpoint_settle_seconds
        declared = cand.complete or cand.final or parsed.finished
        # A file unchanged for the settle time and across ticks is final even when its header is
        # bad: it is read once and becomes RUNTIME.LORA_INVALID instead of waiting for ever.
        if (header_complete(cand.path) and (declared or stable or settled)) or (settled and stable):
            ready.append(cand)
        else:
            pending.append((cand, pending_of(run_id, cand.path, rel, st)))
    return _Look(folder, run_id, parsed, index, ready, pending)


def _finish(look: _Look, config: Config, now: float) -> RunScan:
    parsed, folder = look.parsed, look.folder
    parsed.candidates = look.ready
    scratch = RunRecord(run_id=look.run_id, folder=str(folder), format=parsed.format)
    read = _read_candidates(parsed, folder, scratch, look.index, config, now)
    _checkpoints(read, scratch, norm_lookup(config, look.run_id, folder, look.index))  # as ingestion names them
    look.index.save()
    scan = RunScan(look.run_id, folder, run_fingerprint([c.sha256 for c in scratch.checkpoints],
                                                        config_stats(folder, parsed.config_files)),
                   waiting=[p.rel for _c, p in look.pending])
    scan.checkpoints = [ReadyCheckpoint(c.checkpoint_id, c.partition_key, c.sha256) for c in scratch.checkpoints]
    return scan


def scan_run(folder: Path, config: Config, now: float | None = None) -> RunScan:
    now = time.time() if now is None else now
    return _finish(_look(folder, config, now), config, now)


def scan_runs(config: Config, now: float | None = None) -> list[RunScan]:
    return [scan_run(p, config, now) for p in discover_run_folders(config)]


def scan_runs_rechecked(config: Config, run_ids: Collection[str] = (),
                        sleep: Callable[[float], None] = time.sleep) -> list[RunScan]:
    """`scan_runs` for a one-shot command, which has no next tick: pending files of the runs in
    `run_ids` (all when empty) get one short re-check together (lora_pipeline.training.settle);
    those that held count as complete, the others are in `RunScan.left` with the reason."""
    now = time.time()
    looks = [_look(p, config, now) for p in discover_run_folders(config)]
    chosen = [lk for lk in looks if not run_ids or lk.run_id in run_ids]
    pending = [p for lk in chosen for _c, p in lk.pending]
    done, left = recheck(pending, config.checks.checkpoint_recheck_seconds,
                         config.checks.checkpoint_settle_seconds, sleep) if pending else ([], [])
    held = {id(p) for p in done}
    for lk in chosen:
        for cand, p in lk.pending:
            if id(p) in held:  # the index already holds this size+mtime: the sensor agrees next tick
                lk.ready.append(cand)
        lk.pending = [(c, p) for c, p in lk.pending if id(p) not in held]
    scans = [_finish(lk, config, time.time()) for lk in looks]
    for s in scans:
        s.left = [lf for lf in left if lf.run_id == s.run_id]
    return scans
