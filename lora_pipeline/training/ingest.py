"""Ingesting a training run folder into one normalised `RunRecord` (issue 4).

    folder -> detect format -> parser (config files, logs, candidate checkpoint files)
           -> each checkpoint read once: hash + header + light analysis (NaN/Inf and all-zero scan,
              no delta norms), cached by size+mtime
           -> facts merged: config first, then headers and weights fill the gaps; disagreements kept
              in `record.conflicts` with a TRAINING.CONFIG_UNKNOWN finding
           -> dataset link, training findings of the loss and settings, loss curve

The checkpoints' delta norms, and the findings and curve made of them (TRAINING.WEIGHTS_EXPLODING,
the training half of TRAINING.OVERTRAINING_SUSPECTED, delta_norm.png), come later, per checkpoint and
cached by file hash (training/norms.py): `CheckpointRecord.total_delta_norm` is None in the record
ingestion writes. The one exception: two files with the same step and size but different bytes have
their norms computed here, since equal norms make the second an alias of the first (same weights).

Bad input never raises out of `ingest_run`: pickles are ignored and reported (RUNTIME.LORA_INVALID),
unreadable or truncated files become RUNTIME.LORA_INVALID, files still being written are listed in
`record.pending`, config parse errors are TRAINING.CONFIG_UNKNOWN.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_pipeline.config import Config
from lora_pipeline.findings import Finding
from lora_pipeline.fsutil import atomic_write_bytes, atomic_write_json
from lora_pipeline.lora.safetensors_file import PICKLE_EXTENSIONS, LoraFileError
from lora_pipeline.storage import Storage, checkpoint_id_for, checkpoint_partition_key, run_id_for
from lora_pipeline.training import curves
from lora_pipeline.training.checkpoints import FileIndex, compact, header_complete
from lora_pipeline.training.checks import loss_and_settings_findings, smooth
from lora_pipeline.training.common import FACTS, KEY_FACTS, Candidate, ParsedRun, config_unknown
from lora_pipeline.training.dataset_link import link_dataset
from lora_pipeline.training.formats import FORMATS, detect_format
from lora_pipeline.training.header_facts import dataset_dirs, header_facts, step_epoch, weight_facts
from lora_pipeline.training.norms import checkpoint_norm
from lora_pipeline.training.record import CheckpointRecord, RunRecord

# Trainer state beside the weights (optimizer, scheduler, RNG): pickles, but not LoRA checkpoints.
_STATE_PICKLE = re.compile(r"^(optimizer|scheduler|scaler|random_states|training_state|sampler|ema)[^/]*$", re.I)


class IngestError(Exception):
    """The run folder cannot be ingested at all (missing); one line naming the path."""


@dataclass
class Ingested:
    record: RunRecord
    analyses: dict[str, dict[str, Any]] = field(default_factory=dict)  # checkpoint_id -> full analysis


def index_path(storage_root: Path, run_id: str) -> Path:
    return Storage(Path(storage_root)).run_record(run_id).parent / "files.json"


def _set(record: RunRecord, fact: str, value: Any) -> None:
    obj: Any = record
    *head, last = fact.split(".")
    for h in head:
        obj = getattr(obj, h)
    setattr(obj, last, value)


def _get(record: RunRecord, fact: str) -> Any:
    obj: Any = record
    for part in fact.split("."):
        obj = getattr(obj, part)
    return obj


def _norm(fact: str, v: Any) -> Any:
    if isinstance(v, float | int) and not isinstance(v, bool):
        return round(float(v), 9)
    s = str(v).strip()
    if fact == "base_model.name":
        return re.sub(r"\.(safetensors|ckpt)$", "", s.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]).lower()
    if fact == "optimizer":
        return s.rsplit(".", 1)[-1].lower()
    if fact == "started_at":
        return s[:16]  # to the minute: trainers stamp the start at slightly different moments
    return s


def merge_facts(record: RunRecord, facts: list[tuple[str, Any, str]]) -> None:
    """First source wins; a later source with a different value is kept in record.conflicts."""
    for fact, value, source in facts:
        if fact not in FACTS:
            continue
        if fact not in record.sources:
            _set(record, fact, value)
            record.sources[fact] = source
        elif _norm(fact, _get(record, fact)) != _norm(fact, value):
            c = record.conflicts.setdefault(fact, {record.sources[fact]: _get(record, fact)})
            c.setdefault(source, value)


def _pickles(folder: Path, record: RunRecord) -> None:
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in PICKLE_EXTENSIONS or not p.is_file():
            continue
        rel = p.relative_to(folder).as_posix()
        if _STATE_PICKLE.match(p.name) or any(part.endswith("-state") for part in p.relative_to(folder).parts[:-1]):
            record.extra.setdefault("trainer_state_files", []).append(rel)
            continue
        record.ignored.append(rel)
        record.findings.append(Finding(
            "RUNTIME.LORA_INVALID", str(p),
            f"{rel}: pickled checkpoint ({p.suffix}) ignored: pickles are never loaded; export .safetensors.",
            {"file": rel, "reason": "pickle", "size": p.stat().st_size}))


# What a bug in the analysis of a malformed file would raise: the parser lets no such file through
# (tests/test_safetensors_fuzz.py), but should one slip by, it costs its checkpoint, never the run.
_ANALYSIS_BUGS = (ValueError, TypeError, IndexError, KeyError, ArithmeticError, RecursionError)


def _read_candidates(parsed: ParsedRun, folder: Path, record: RunRecord, index: FileIndex, config: Config,
                     now: float) -> list[tuple[Candidate, dict[str, Any]]]:
    out = []
    rels = [cand.path.relative_to(folder).as_posix() for cand in parsed.candidates]
    analyses = index.light_analyses([(rel, cand.path) for rel, cand in zip(rels, parsed.candidates, strict=True)],
                                    config.checks.full_verify)
    for cand, rel in zip(parsed.candidates, rels, strict=True):
        try:
            analysis = analyses[rel]
            if isinstance(analysis, Exception):
                raise analysis
        except (LoraFileError, OSError, *_ANALYSIS_BUGS) as e:
            if isinstance(e, (LoraFileError, OSError)):
                msg = str(e).replace(str(cand.path), rel)
                try:
                    age = now - cand.path.stat().st_mtime
                except OSError:
                    age = math.inf
                if age < config.checks.checkpoint_settle_seconds and not header_complete(cand.path):
                    record.pending.append(rel)  # still being written: neither a checkpoint nor an error yet
                    continue
            else:
                msg = f"{rel}: cannot be analysed ({e.__class__.__name__}: {str(e)[:200]})".replace("\n", " ")
            record.ignored.append(rel)
            record.findings.append(Finding("RUNTIME.LORA_INVALID", str(cand.path), msg, {"file": rel, "error": msg}))
            continue
        step, epoch = step_epoch(analysis.get("metadata") or {})
        cand.step = cand.step if cand.step is not None else step
        cand.epoch = cand.epoch if cand.epoch is not None else epoch
        out.append((cand, analysis))
    return out


NormOf = Callable[[str, str], "float | None"]  # (path, sha256) -> total delta norm, computed when needed


def norm_lookup(config: Config, run_id: str, folder: Path, index: FileIndex) -> NormOf:
    """The norms the same-weights alias check asks for: cached by hash, else computed (training/norms.py)."""
    def norm_of(path: str, sha256: str) -> float | None:
        return checkpoint_norm(config.storage, run_id, path, sha256, index=index, folder=folder,
                               full_verify=config.checks.full_verify)
    return norm_of


def _checkpoints(read: list[tuple[Candidate, dict]], record: RunRecord, norm_of: NormOf | None = None
                 ) -> dict[str, dict]:
    """The checkpoint records, in step order. A file whose step is taken is an alias of that
    checkpoint when it has the same bytes, or the same size and the same total delta norm (e.g.
    kohya's final copy of the last step with other metadata; the norms computed for this case only,
    by `norm_of`); otherwise it is a checkpoint of its own, named by its stem."""
    analyses: dict[str, dict] = {}
    order = sorted(read, key=lambda x: (x[0].step if x[0].step is not None else math.inf,
                                        x[0].epoch if x[0].epoch is not None else math.inf, x[0].final,
                                        x[0].path.as_posix()))
    for cand, a in order:
        cid = checkpoint_id_for(cand.step, cand.epoch, cand.path.stem)
        prev = record.checkpoint(cid)
        if prev is not None:
            same_weights = prev.sha256 == a["sha256"]
            if not same_weights and prev.size == a["size"] and norm_of is not None:
                before = norm_of(prev.path, prev.sha256)
                same_weights = before is not None and before == norm_of(str(cand.path), a["sha256"])
            if same_weights:  # e.g. kohya's final copy of the last step
                prev.aliases.append(str(cand.path))
                prev.final = prev.final or cand.final
                continue
            cid = checkpoint_id_for(None, None, cand.path.stem)  # same step, other bytes: the file's stem
            if record.checkpoint(cid) is not None:
                cid = checkpoint_id_for(None, None, cand.path.parent.name + "_" + cand.path.stem)
        record.checkpoints.append(CheckpointRecord(
            checkpoint_id=cid, path=str(cand.path), sha256=a["sha256"], size=a["size"], step=cand.step,
            epoch=cand.epoch, partition_key=checkpoint_partition_key(record.run_id, cid),
            mtime_ns=a.get("mtime_ns", 0), final=cand.final, total_delta_norm=None,  # training/norms.py
            nonfinite_tensors=len(a.get("nonfinite_tensors") or [])))
        analyses[cid] = a
        if a.get("malformed"):
            bad = a["malformed"]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            record.findings.append(Finding(
                "RUNTIME.LORA_INVALID", str(cand.path), f"{cand.path.name}: {bad[0]}{more}.",
                {"file": cand.path.name, "checkpoint_id": cid, "malformed": bad[:20]}))
        if a.get("nonfinite_tensors"):
            record.findings.append(Finding(
                "RUNTIME.LORA_INVALID", str(cand.path),
                f"{cand.path.name}: {len(a['nonfinite_tensors'])} tensor(s) hold NaN/Inf.",
                {"file": cand.path.name, "checkpoint_id": cid, "nonfinite_tensors": a["nonfinite_tensors"][:20]}))
    return analyses


def ingest_run(folder: str | Path, config: Config, *, now: float | None = None) -> Ingested:
    """The run record of one run folder (nothing written but the checkpoint cache)."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise IngestError(f"{folder}: training run folder not found")
    now = time.time() if now is None else now
    run_id = run_id_for(folder.name)
    fmt = detect_format(folder)
    try:
        parsed = FORMATS[fmt].parse(folder)
    except OSError as e:  # a folder that vanished or cannot be listed mid-parse
        parsed = ParsedRun(format=fmt, findings=[config_unknown(folder, f"{folder.name}: cannot read ({e})")])
    record = RunRecord(run_id=run_id, folder=str(folder), format=parsed.format)
    record.config_files = parsed.config_files
    record.extra.update(parsed.extra)
    record.findings.extend(parsed.findings)
    _pickles(folder, record)
    index = FileIndex(index_path(config.storage, run_id))
    read = _read_candidates(parsed, folder, record, index, config, now)
    analyses = _checkpoints(read, record, norm_lookup(config, run_id, folder, index))
    index.save()
    merge_facts(record, parsed.facts)
    if record.checkpoints:
        last = record.checkpoints[-1]
        a = analyses[last.checkpoint_id]
        src = f"header:{Path(last.path).relative_to(folder).as_posix()}"
        merge_facts(record, header_facts(a, src))
        merge_facts(record, weight_facts(a, src.replace("header:", "weights:")))
    record.loss = sorted({s: v for s, v in parsed.loss}.items())
    dirs = dataset_dirs(analyses[record.checkpoints[-1].checkpoint_id]) if record.checkpoints else []
    link = link_dataset(record, config, dirs)
    record.extra["dataset_link"] = link
    if link.get("dataset"):
        merge_facts(record, [("trigger", config.datasets[link["dataset"]].trigger,
                              f"config:datasets.{link['dataset']}.trigger")])
        if link.get("images"):
            merge_facts(record, [("images", link["images"], f"dataset:{link['dataset']}")])
    if record.conflicts:
        record.findings.append(config_unknown(
            folder, f"Sources disagree on {', '.join(sorted(record.conflicts))}; the record keeps every value.",
            conflicts=record.conflicts))
    missing = [f for f in KEY_FACTS if _get(record, f) in (None, "")]
    if missing:
        record.findings.append(config_unknown(
            folder, f"Key training facts are missing from config and headers: {', '.join(missing)}.",
            missing=missing, config_files=record.config_files))
    record.findings.extend(loss_and_settings_findings(record, config.checks))
    return Ingested(record, analyses)


def discover_run_folders(config: Config) -> list[Path]:
    """Every direct, non-hidden subfolder of `training_runs` is one run."""
    root = Path(config.training_runs)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def discover_runs(config: Config) -> list[RunRecord]:
    return [ingest_run(p, config).record for p in discover_run_folders(config)]


def run_folder(config: Config, run_id: str) -> Path | None:
    return next((p for p in discover_run_folders(config) if run_id_for(p.name) == run_id), None)


def curves_of(record: RunRecord, checks) -> dict[str, bytes]:
    """loss.png (delta_norm.png is drawn where the norms are computed: training/norms.py)."""
    sm = smooth([v for _, v in record.loss], checks.loss_ema_alpha)
    steps = [c.step for c in record.checkpoints if c.step is not None]
    return {"loss.png": curves.loss_curve(record.loss, sm, steps)}


def write_run_record(config: Config, ingested: Ingested) -> dict[str, Path]:
    """storage/runs/<run_id>/run.json (+ loss.png), each written atomically."""
    record = ingested.record
    dest = Storage(Path(config.storage)).run_record(record.run_id)
    out = {}
    for name, data in curves_of(record, config.checks).items():
        out[name] = atomic_write_bytes(dest.parent / name, data)
    out["run.json"] = atomic_write_json(dest, {"schema_version": 1, **record.to_dict()})
    return out


def load_run_record(storage_root: str | Path, run_id: str) -> RunRecord | None:
    """The stored record of `run_id`, or None when it has not been ingested. IngestError if corrupt."""
    path = Storage(Path(storage_root)).run_record(run_id)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text("utf-8"))
        doc.pop("schema_version", None)
        return RunRecord.from_dict(doc)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise IngestError(f"{path}: unreadable run record ({e.__class__.__name__}: {e})") from None


def checkpoint_analysis(ingested: Ingested, checkpoint_id: str) -> dict[str, Any]:
    return compact(ingested.analyses[checkpoint_id])
