"""The fallback: any LoRA safetensors in the run folder (and one level below). Steps come from the
header (`ss_steps`, `training_info`, `global_step`) or digits at the end of the file name."""

from __future__ import annotations

import re
from pathlib import Path

from lora_pipeline.training.common import Candidate, ParsedRun, config_unknown, safetensors_in

_DIGITS = re.compile(r"(?:[-_]|step)(\d{3,})$")  # `lora-000500`, `lora_step1200`: not `lora_v2`


def detect(folder: Path) -> bool:
    return True


def parse(folder: Path) -> ParsedRun:
    run = ParsedRun(format="generic")
    files = safetensors_in(folder) + [p for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")
                                      for p in safetensors_in(d)]
    for p in files:
        m = _DIGITS.search(p.stem)
        run.candidates.append(Candidate(p, step=int(m[1]) if m else None))
    run.findings.append(config_unknown(folder, f"{folder.name}: no known trainer layout; facts come from the "
                                               "checkpoint headers only", format="generic"))
    return run
