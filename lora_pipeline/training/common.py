"""What every format parser shares: the parsed-run shape, safe config readers (a parse error is a
TRAINING.CONFIG_UNKNOWN finding, never a traceback), and value normalisers.

A parser returns a `ParsedRun`: facts as (fact, value, source) in priority order, the candidate
checkpoint files with what their names say (step, epoch, final), the loss series and findings.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from lora_pipeline import bounded_yaml
from lora_pipeline.findings import Finding

# Facts a run record carries, by dotted name (base_model.* and dataset.* are nested).
FACTS = ("base_model.name", "base_model.path", "base_model.sha256", "base_model.architecture", "trigger",
         "rank", "alpha", "learning_rate", "optimizer", "steps", "resolution", "dataset.path",
         "dataset.snapshot_id", "started_at", "name", "epochs", "images")
KEY_FACTS = ("base_model.name", "rank", "learning_rate", "steps", "resolution")  # missing -> CONFIG_UNKNOWN
# Base-model and schedule facts with no RunRecord field, kept in `extra["training_facts"]` (their sources
# in `extra["training_fact_sources"]`); docs/training.md lists where each trainer records them.
TRAINING_FACTS = ("model_variant", "guidance_scale", "guidance_mode", "guidance_min", "guidance_max",
                  "t5_max_tokens", "t5_attn_mask", "timestep_sampling", "flow_shift", "prediction_type",
                  "network_module", "sample_guidance_scale", "sample_steps", "validation_prompt",
                  "config_alpha_ignored")


@dataclass
class Candidate:
    path: Path
    step: int | None = None
    epoch: int | None = None
    final: bool = False  # the trainer's final file of the run
    complete: bool = False  # the trainer declares it fully written (e.g. listed in its run file)


@dataclass
class ParsedRun:
    format: str
    facts: list[tuple[str, Any, str]] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    loss: list[tuple[int, float]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    config_files: list[str] = field(default_factory=list)
    finished: bool = False  # the trainer's end marker exists: every complete file is final
    extra: dict[str, Any] = field(default_factory=dict)

    def fact(self, name: str, value: Any, source: str) -> None:
        if value is not None and value != "" and value != []:
            self.facts.append((name, value, source))

    def training_fact(self, name: str, value: Any, source: str) -> None:
        """One of TRAINING_FACTS; the first source to give a value keeps it (as `fact` ranks sources)."""
        if name in TRAINING_FACTS and name not in self.extra.get("training_facts", {}) \
                and value is not None and value != "":
            self.extra.setdefault("training_facts", {})[name] = value
            self.extra.setdefault("training_fact_sources", {})[name] = source


def config_unknown(subject: Path | str, message: str, **evidence: Any) -> Finding:
    return Finding("TRAINING.CONFIG_UNKNOWN", str(subject), message, evidence=evidence)


def read_config(path: Path, run: ParsedRun, root: Path) -> Any:
    """Parse a json/yaml/toml file; on any error add CONFIG_UNKNOWN with the error and return None."""
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    run.config_files.append(rel)
    try:
        text = path.read_text("utf-8")
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml"):
            return bounded_yaml.load(text)
        if suffix == ".toml":
            return tomllib.loads(text)
        return json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, yaml.YAMLError) as e:  # deep nesting too
        err = " ".join(str(e).split())[:300]
        run.findings.append(config_unknown(path, f"{rel}: cannot parse ({e.__class__.__name__}: {err})",
                                           file=rel, error=f"{e.__class__.__name__}: {err}"))
        return None


def read_jsonl(path: Path, run: ParsedRun, root: Path) -> list[dict]:
    """Lines of a JSON-lines log; a bad line is skipped and reported once (the rest still counts)."""
    rel = path.relative_to(root).as_posix()
    run.config_files.append(rel)
    rows, bad = [], []
    try:
        lines = path.read_text("utf-8", errors="replace").splitlines()
    except OSError as e:
        run.findings.append(config_unknown(path, f"{rel}: cannot read ({e})", file=rel, error=str(e)))
        return rows
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append(f"line {i}: {e.msg}")
            continue
        if isinstance(row, dict):
            rows.append(row)
    if bad and not (len(bad) == 1 and bad[0].startswith(f"line {len(lines)}:")):  # a torn last line is normal
        run.findings.append(config_unknown(path, f"{rel}: {len(bad)} unparseable line(s), first {bad[0]}",
                                           file=rel, error=bad[0], bad_lines=len(bad)))
    return rows


def as_float(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:  # an int too large for a float, or a 5000-digit string, is no number we can use
        return float(v) if isinstance(v, int | float) else float(str(v).strip()[:64])
    except (ValueError, OverflowError):
        return None


def as_bool(v: Any) -> bool | None:
    """True/False, or the strings trainers write for them ("True", "false", "1"); else None."""
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower() if isinstance(v, str | int) else ""
    return True if s in ("true", "1", "yes") else False if s in ("false", "0", "no") else None


def as_int(v: Any) -> int | None:
    f = as_float(v)
    return int(f) if f is not None and math.isfinite(f) and f == int(f) else None


def as_loss(v: Any) -> float | None:
    """A loss value; 'nan'/'inf' strings (how JSON logs carry them) become float nan/inf."""
    if isinstance(v, str) and v.strip().lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(v.strip().lower().replace("infinity", "inf"))
    return as_float(v)


def resolution(v: Any) -> int | None:
    """512, "512", "512,768", "(512, 512)", "512x768", [512, 768] -> the largest side."""
    if isinstance(v, list | tuple):
        nums = [as_int(x) for x in v]
    else:
        # at most 6 digits: a longer number is no resolution (and a 5000-digit one no int to parse)
        nums = [int(x) for x in re.findall(r"(?<!\d)\d{1,6}(?!\d)", str(v)[:200])] if v is not None else []
    nums = [n for n in nums if n]
    return max(nums) if nums else None


_ARCH = [(re.compile(p, re.I), a) for p, a in (
    (r"flux[-_.]?2|klein", "flux2"), (r"flux", "flux1"),  # "flux" alone: FLUX.1, the older one
    # kohya's modelspec `stable-diffusion-3-5-large`, HF ids `stable-diffusion-3.5-large`, ai-toolkit `sd_3`
    (r"sd_?v?3|stable[-_ ]?diffusion[-_ ]?v?3", "sd3"),
    (r"sdxl|stable-diffusion-xl|xl_|_xl|sd_xl", "sdxl"),
    (r"sd_?v?2|stable-diffusion-v2|sd2|stable_diffusion_20|stable_diffusion_21", "sd2"),
    (r"sd_?v?1|sd_1|stable-diffusion-v1|sd1|stable_diffusion_15|stable_diffusion_14|sd15", "sd1"))]


# kohya sd-scripts' per-family network modules; `lora_flux` also trains Chroma (model_type "chroma").
KOHYA_NETWORK_ARCH = {"networks.lora_flux": "flux1", "networks.lora_sd3": "sd3"}


def architecture(v: Any) -> str | None:
    """Normalise ss_base_model_version / modelspec.architecture / model_type strings."""
    if not v:
        return None
    for pat, arch in _ARCH:
        if pat.search(str(v)):
            return arch
    return None


def iso_time(v: Any) -> str | None:
    """Unix seconds (number or string) or an ISO string -> ISO 8601 UTC."""
    f = as_float(v)
    if f is not None and f > 1e8:
        try:
            return datetime.fromtimestamp(f / 1000 if f > 1e12 else f, UTC).isoformat()
        except (OverflowError, OSError, ValueError):  # beyond the year 9999: not a time
            return None
    if isinstance(v, str) and v:
        try:
            d = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return None
        return (d if d.tzinfo else d.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    return None


def dig(d: Any, *path: str | int) -> Any:
    for p in path:
        if isinstance(d, dict):
            d = d.get(p)
        elif isinstance(d, list) and isinstance(p, int) and -len(d) <= p < len(d):
            d = d[p]
        else:
            return None
    return d


def safetensors_in(folder: Path, recursive: bool = False) -> list[Path]:
    it = folder.rglob("*.safetensors") if recursive else folder.glob("*.safetensors")
    return sorted(p for p in it if p.is_file() and not p.name.startswith("."))
