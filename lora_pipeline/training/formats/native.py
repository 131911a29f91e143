"""Our native run format (docs/run-format.md), as lora_pipeline/toy/train.py writes it:
`lora_run.json`, `checkpoints/<name>-step<8 digits>.safetensors`, `loss.jsonl`."""

from __future__ import annotations

import re
from pathlib import Path

from lora_pipeline.training.common import (
    Candidate,
    ParsedRun,
    as_float,
    as_int,
    as_loss,
    dig,
    iso_time,
    read_config,
    read_jsonl,
    resolution,
    safetensors_in,
)

RUN_FILE = "lora_run.json"
FORMAT_TAG = "lora-pipeline-native"
_STEP = re.compile(r"-step(\d{8})$")


def detect(folder: Path) -> bool:
    return (folder / RUN_FILE).is_file()


def parse(folder: Path) -> ParsedRun:
    run = ParsedRun(format="native")
    doc = read_config(folder / RUN_FILE, run, folder)
    src = RUN_FILE
    listed: dict[str, dict] = {}
    if isinstance(doc, dict):
        if doc.get("format") != FORMAT_TAG:
            run.extra["format_tag"] = doc.get("format")
        for fact, path in (("base_model.name", ("base_model", "name")), ("base_model.path", ("base_model", "path")),
                           ("base_model.sha256", ("base_model", "sha256")),
                           ("base_model.architecture", ("base_model", "architecture")),
                           ("trigger", ("trigger",)), ("optimizer", ("optimizer",)), ("name", ("name",)),
                           ("dataset.path", ("dataset", "path")), ("dataset.snapshot_id", ("dataset", "snapshot_id"))):
            run.fact(fact, dig(doc, *path), src)
        run.fact("rank", as_int(dig(doc, "network", "rank")), src)
        run.fact("alpha", as_float(dig(doc, "network", "alpha")), src)
        run.fact("learning_rate", as_float(doc.get("learning_rate")), src)
        run.fact("steps", as_int(doc.get("steps")), src)
        run.fact("resolution", resolution(doc.get("resolution")), src)
        run.fact("started_at", iso_time(doc.get("started_at")), src)
        run.fact("images", as_int(dig(doc, "dataset", "images")), src)
        run.finished = bool(doc.get("finished_at"))
        for c in doc.get("checkpoints") or []:
            if isinstance(c, dict) and isinstance(c.get("file"), str):
                listed[c["file"]] = c
        run.extra.update({k: doc.get(k) for k in ("seed", "batch_size", "save_every", "trainer") if k in doc})
    seen = set()
    for rel, c in listed.items():
        p = folder / rel
        if p.is_file() and p.suffix == ".safetensors":
            seen.add(p)
            run.candidates.append(Candidate(p, as_int(c.get("step")), as_int(c.get("epoch")), complete=True))
    for p in safetensors_in(folder / "checkpoints"):
        if p not in seen:  # on disk but not (yet) listed in lora_run.json
            m = _STEP.search(p.stem)
            run.candidates.append(Candidate(p, int(m[1]) if m else None))
    if isinstance(doc, dict) and run.candidates and run.finished:
        last = max(run.candidates, key=lambda c: c.step or -1)
        last.final = True
    log = folder / (doc.get("loss_log") if isinstance(doc, dict) and doc.get("loss_log") else "loss.jsonl")
    if log.is_file():
        for row in read_jsonl(log, run, folder):
            step, loss = as_int(row.get("step")), as_loss(row.get("loss"))
            if step is not None and loss is not None:
                run.loss.append((step, loss))
    return run
