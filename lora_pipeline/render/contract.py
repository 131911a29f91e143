"""The runtime contract checks that need no loaded pipeline, run in the worker that renders.

A path the worker cannot see fails here (RUNTIME.BASE_MODEL_MISSING / RUNTIME.LORA_MISSING), before
anything is loaded. The LoRA file is read with our own safetensors parser (pickles refused, never
loaded) and analysed in numpy: a file that is no LoRA (a full model, alphas only) or NaN/Inf ->
RUNTIME.LORA_INVALID, LoRA pairs under a key prefix no loader knows -> RUNTIME.LORA_INCOMPATIBLE,
all-zero deltas -> QUALITY.NO_LORA_EFFECT, no alpha in the file while the run says alpha != rank ->
RUNTIME.LORA_ALPHA_UNKNOWN. A LoRA of one model family on a base of another (an SD3 file on SD1) ->
RUNTIME.BASE_MODEL_MISMATCH (`check_lora_family`), before anything is loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lora_pipeline.findings import Finding
from lora_pipeline.lora.architecture import describe_file_shape, family_name
from lora_pipeline.lora.inspect import LoraFileReport, analyse
from lora_pipeline.lora.safetensors_file import LoraFileError, read_safetensors
from lora_pipeline.render.base_identity import base_identity
from lora_pipeline.render.families import pipeline_family
from lora_pipeline.render.spec import BaseChoice, DeclaredBase, EvalSpec, RunFacts

# Findings of the LoRA contract: any of these (severity error) skips the LoRA arms.
LORA_CONTRACT = {"RUNTIME.BASE_MODEL_MISMATCH", "RUNTIME.LORA_MISSING", "RUNTIME.LORA_INVALID",
                 "RUNTIME.LORA_INCOMPATIBLE", "RUNTIME.LORA_PARTIAL", "RUNTIME.LORA_NOT_APPLIED"}
_SD_FAMILY = {"sd1", "sd2", "sd-unet"}


def lora_contract_errors(findings: list[Finding]) -> set[str]:
    """The LORA_CONTRACT codes among `findings` with severity error (any of them skips the LoRA arms)."""
    return {f.code for f in findings if f.code in LORA_CONTRACT and f.severity == "error"}

# Model families by network kind; `sd-unet` and `flux` are the generic members of theirs (the version
# is not decidable from the file), compatible with every member: the load itself decides there.
_KIND = {"sd1": "unet", "sd2": "unet", "sdxl": "unet", "sd-unet": "unet", "sd3": "mmdit",
         "flux1": "flux", "flux2": "flux", "flux": "flux"}
_GENERIC = {"sd-unet", "flux"}


def base_architecture(path: Path) -> str:
    """sd1 | sd2 | sdxl | sd3 | flux1 | flux2 | unknown, from a diffusers folder's model_index.json
    (pipeline class) and UNet config (SD1 vs SD2 by cross-attention width)."""
    p = Path(path)
    if p.is_file():
        return "unknown"
    try:
        cls = json.loads((p / "model_index.json").read_text()).get("_class_name", "")
    except (OSError, ValueError):
        return "unknown"
    fam = pipeline_family(cls)
    if fam == "sd":
        try:
            width = json.loads((p / "unet" / "config.json").read_text()).get("cross_attention_dim")
        except (OSError, ValueError):
            width = None
        return "sd2" if width == 1024 else "sd1"
    return fam or "unknown"


def resolve_base(declared: DeclaredBase, base_models: dict[str, Path], cache_root: Path | None = None
                 ) -> BaseChoice | None:
    """CONTRACT section 1: match the run's base to a configured entry by name, path, then hash
    (`cache_root`: where base identities are kept, see base_identity)."""
    if declared.name and declared.name in base_models:
        return BaseChoice(declared.name, Path(base_models[declared.name]), "name")
    if declared.path:
        want = os.path.realpath(declared.path)
        for name, p in base_models.items():
            if os.path.realpath(p) == want:
                return BaseChoice(name, Path(p), "path")
    if declared.sha256:
        for name, p in base_models.items():
            if Path(p).exists() and base_identity(Path(p), cache_root) == declared.sha256:
                return BaseChoice(name, Path(p), "hash")
    return None


def check_base(declared: DeclaredBase, choice: BaseChoice | None, subject: str, cache_root: Path | None = None
               ) -> tuple[list[Finding], dict[str, Any]]:
    """RUNTIME.BASE_MODEL_MISSING / _MISMATCH; returns the evaluated base's identity on success."""
    if choice is None:
        return [Finding("RUNTIME.BASE_MODEL_MISSING", subject,
                        "The run's base model matches no configured base model (by name, path or hash).",
                        {"declared": vars(declared)})], {}
    if not (choice.path / "model_index.json").is_file() and not (choice.path.is_file()
                                                                   and choice.path.suffix == ".safetensors"):
        return [Finding("RUNTIME.BASE_MODEL_MISSING", subject,
                        f"The base model {choice.name} is not visible to this worker at {choice.path}.",
                        {"name": choice.name, "path": str(choice.path), "host": os.uname().nodename})], {}
    identity = {"name": choice.name, "path": str(choice.path), "sha256": base_identity(choice.path, cache_root),
                "architecture": base_architecture(choice.path), "matched_by": choice.matched_by}
    differs = {}
    if declared.sha256 and declared.sha256 != identity["sha256"]:
        differs["sha256"] = {"declared": declared.sha256, "evaluated": identity["sha256"]}
    if declared.architecture and not _same_family(declared.architecture, identity["architecture"]):
        differs["architecture"] = {"declared": declared.architecture, "evaluated": identity["architecture"]}
    if not declared.sha256 and declared.name and declared.name != choice.name:
        differs["name"] = {"declared": declared.name, "evaluated": choice.name}
    findings = []
    if differs:
        findings.append(Finding("RUNTIME.BASE_MODEL_MISMATCH", subject,
                                f"The evaluated base {choice.name} differs from the run's declared base in "
                                f"{', '.join(differs)}.", {"differs": differs, "evaluated": identity}))
    return findings, identity


def _same_family(a: str, b: str) -> bool:
    if a == b or "unknown" in (a, b):
        return True
    if "flux" in (a, b):  # a run record's generic "flux" (from a trainer config) is either version
        return {a, b} <= {"flux", "flux1", "flux2"}
    return "sd-unet" in (a, b) and {a, b} <= _SD_FAMILY


def _fits_base(lora: str, base: str) -> bool:
    """False only when the families are known and differ (a generic family fits its own kind)."""
    if lora == base or lora not in _KIND or base not in _KIND:
        return True
    return _KIND[lora] == _KIND[base] and bool({lora, base} & _GENERIC)


def check_lora_family(report: LoraFileReport | None, base: dict[str, Any], subject: str) -> list[Finding]:
    """RUNTIME.BASE_MODEL_MISMATCH when the file's family (key names, widths) is not the evaluated
    base's: loading it would fail or silently load nothing, so the LoRA arms are not rendered."""
    if report is None or not base:
        return []
    arch = report.architecture or {}
    lora_family, base_family = arch.get("family") or "unknown", base.get("architecture") or "unknown"
    if _fits_base(lora_family, base_family):
        return []
    return [Finding("RUNTIME.BASE_MODEL_MISMATCH", subject,
                    f"The LoRA file is for {family_name(lora_family)} ({lora_family}: {arch.get('evidence', '-')}) "
                    f"but the evaluated base {base.get('name')} is {family_name(base_family)} ({base_family}): "
                    f"evaluate it on a {family_name(lora_family)} base, or point the run at its own LoRA file.",
                    {"lora_family": lora_family, "base_family": base_family, "base": base.get("name"),
                     "lora_architecture": {k: v for k, v in arch.items() if k != "file_shape"}})]


def _not_a_lora(shape: dict[str, Any], p: Path, subject: str) -> Finding | None:
    """One finding that says what the file is instead of a LoRA, or None when it holds LoRA modules."""
    kind = shape.get("kind")
    evidence = {"path": str(p), **{k: v for k, v in shape.items() if k != "description"}}
    if kind == "full_model":
        return Finding("RUNTIME.LORA_INVALID", subject,
                       f"The file is {shape['description']}: give it under base_models, or point the run at "
                       f"the LoRA file.", evidence)
    if kind in ("alphas_only", "empty"):
        return Finding("RUNTIME.LORA_INVALID", subject,
                       f"The file {shape['description']}: re-export the LoRA.", evidence)
    if kind == "pairs_under_unknown_prefix":
        then = "" if shape.get("stripped_known") else \
            "; then check the keys follow a known style (kohya `lora_unet_...`, diffusers `unet.`/`transformer.`)"
        return Finding("RUNTIME.LORA_INCOMPATIBLE", subject,
                       f"The file {shape['description']}: strip the prefix (e.g. {shape['example']}){then}.",
                       evidence)
    return None


def check_lora_file(path: Path, facts: RunFacts, subject: str
                    ) -> tuple[list[Finding], LoraFileReport | None]:
    """Missing / invalid / zero / alpha checks on the file alone. A report is returned when loadable."""
    p = Path(path)
    if not p.exists():
        return [Finding("RUNTIME.LORA_MISSING", subject, f"The LoRA file is not visible to this worker at {p}.",
                        {"path": str(p), "host": os.uname().nodename})], None
    if p.suffix.lower() != ".safetensors":
        return [Finding("RUNTIME.LORA_INVALID", subject,
                        f"Only .safetensors files are loaded; {p.name} is refused (pickles are never loaded).",
                        {"path": str(p), "suffix": p.suffix})], None
    try:
        sf = read_safetensors(p)
        # what the file is comes first: a full model or an alphas-only file is one finding, not
        # the several (zero effect, alpha unknown, not applied) a LoRA analysis of it would give
        shape = describe_file_shape(sf.header)
        wrong = _not_a_lora(shape, p, subject)
        if wrong is not None:
            return [wrong], None
        # The light pass: the same NaN/Inf, malformed and all-zero answers as the full one without the
        # delta norms, which the evaluation does not use (lora_checkpoint computes and caches them).
        report = analyse(sf, norms=False)
    except LoraFileError as e:
        return [Finding("RUNTIME.LORA_INVALID", subject, str(e), {"path": str(p), "error": type(e).__name__})], None
    findings: list[Finding] = []
    if report.nonfinite_tensors:
        findings.append(Finding("RUNTIME.LORA_INVALID", subject,
                                f"{len(report.nonfinite_tensors)} tensor(s) hold NaN or Inf values.",
                                {"path": str(p), "nonfinite_tensors": report.nonfinite_tensors[:20]}))
        return findings, None
    if report.malformed:  # valid safetensors, but a LoRA part the format cannot use as written
        more = f" (+{len(report.malformed) - 1} more)" if len(report.malformed) > 1 else ""
        findings.append(Finding("RUNTIME.LORA_INVALID", subject, f"{report.malformed[0]}{more}.",
                                {"path": str(p), "malformed": report.malformed[:20]}))
        return findings, None
    if not report.modules:
        what = shape["description"] if shape["kind"] == "unknown" else "holds no LoRA module this reader knows"
        findings.append(Finding("RUNTIME.LORA_INVALID", subject,
                                f"The file {what}: it is not a LoRA file; re-export it from the trainer.",
                                {"path": str(p), "key_format": report.key_format,
                                 "unmatched_keys": report.unmatched_keys[:20]}))
        return findings, None
    if report.all_zero:
        findings.append(Finding("QUALITY.NO_LORA_EFFECT", subject,
                                "Every weight delta in the file is zero (up weights all zero): it changes nothing.",
                                {"path": str(p), "modules": len(report.modules), "total_delta_norm": 0.0}))
    sources = {m.alpha_source for m in report.modules}
    if sources == {"none"} and facts.alpha is not None and facts.rank and float(facts.alpha) != float(facts.rank):
        findings.append(Finding("RUNTIME.LORA_ALPHA_UNKNOWN", subject,
                                f"The file carries no alpha, so it loads at scale 1.0, but the run trained with "
                                f"alpha {facts.alpha:g} and rank {facts.rank} (scale {facts.alpha / facts.rank:g}).",
                                {"path": str(p), "run_alpha": facts.alpha, "run_rank": facts.rank,
                                 "file_ranks": report.ranks}))
    return findings, report


def alpha_source(report: LoraFileReport | None) -> str:
    if report is None:
        return "unknown"
    sources = sorted({m.alpha_source for m in report.modules})
    if report.declared.get("alpha_source") == "lora_adapter_metadata":
        return "lora_adapter_metadata"
    if len(sources) != 1:
        return "mixed:" + ",".join(sources)
    return "none (scale 1.0 assumed)" if sources[0] == "none" else sources[0]


def check_resolution(spec: EvalSpec, facts: RunFacts, subject: str) -> list[Finding]:
    if facts.resolution and min(spec.width, spec.height) < facts.resolution:
        return [Finding("RUNTIME.RESOLUTION_BELOW_TRAINING", subject,
                        f"The evaluation renders at {spec.width}x{spec.height}, below the training "
                        f"resolution {facts.resolution}.",
                        {"width": spec.width, "height": spec.height, "training_resolution": facts.resolution})]
    return []
