"""The one findings catalogue: every code of CONTRACT section 5, with layer, severity, meaning and fix.

Everything that reports a problem builds a `Finding` from a code listed here; docs/findings.md is
generated from this table (`python -m lora_pipeline.findings > docs/findings.md`) and a test keeps
the two equal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warn", "info"]
Layer = Literal[
    "provenance", "runtime", "comparison", "operational", "dataset", "training", "quality", "review"
]

# CONTRACT section 4: the verdict is decided by the first layer, in this order, with an error.
VERDICT_ORDER: tuple[tuple[tuple[str, ...], str], ...] = (
    (("provenance", "runtime", "comparison", "operational"), "evaluation_invalid"),
    (("dataset",), "dataset_problem"),
    (("training",), "training_problem"),
    (("quality",), "quality_problem"),
)
VERDICTS = ("evaluation_invalid", "dataset_problem", "training_problem", "quality_problem", "ok")


@dataclass(frozen=True)
class CodeInfo:
    code: str
    layer: Layer
    severity: Severity
    meaning: str
    fix: str


def _c(code: str, severity: Severity, meaning: str, fix: str) -> CodeInfo:
    layer = code.split(".", 1)[0].lower()
    return CodeInfo(code, layer, severity, meaning, fix)  # type: ignore[arg-type]


CATALOGUE: dict[str, CodeInfo] = {
    c.code: c
    for c in [
        _c("PROVENANCE.INCOMPLETE", "error",
           "A render's manifest lacks facts needed to reproduce it (model hash, seed, settings, ...), or a "
           "stored snapshot object no longer matches its content address (checks.full_verify, trace).",
           "Re-render through lora-pipeline so every fact is recorded; do not judge images without provenance. "
           "A changed stored object is restored from the source folder when it still holds the bytes; "
           "otherwise re-snapshot the dataset."),
        _c("RUNTIME.BASE_MODEL_MISSING", "error",
           "The base model the run declares cannot be found or matched to a configured base model.",
           "Add the base model to `base_models` in the config (by name, path or hash) on the worker that renders."),
        _c("RUNTIME.BASE_MODEL_MISMATCH", "error",
           "The evaluated base model differs from the run's declared base by name, hash or architecture, or "
           "the LoRA file is for another model family (SD1/SD2/SDXL/SD3/FLUX.1/FLUX.2) than the base.",
           "Evaluate on the exact base the LoRA was trained on; fix the run's base reference or the config entry."),
        _c("RUNTIME.LORA_MISSING", "error",
           "The LoRA file is not visible to the worker that renders.",
           "Check the path from the worker's point of view (mounts, permissions, relative paths)."),
        _c("RUNTIME.LORA_INVALID", "error",
           "The LoRA file is unreadable, not safetensors (pickles are refused), truncated or malformed (a "
           "header the safetensors rules refuse, an empty or non-finite alpha, factors whose shapes do not fit), "
           "holds NaN/Inf, or is not a LoRA (a full model checkpoint, alpha tensors only); the message says which.",
           "Point the run at the LoRA .safetensors file (a full model belongs under base_models); re-export a "
           "damaged or incomplete one from the trainer; discard checkpoints with NaN/Inf weights."),
        _c("RUNTIME.LORA_INCOMPATIBLE", "error",
           "The LoRA's keys or shapes do not fit the base model (loading raised), its LoRA pairs sit under "
           "a key prefix no loader knows, its LyCORIS modules name layers the base does not have, or it uses "
           "a LyCORIS algorithm no peft tuner carries (IA3, OFT, BOFT, GLoRA, full/diff, norm); the message "
           "names the algorithm and layer.",
           "Use the base architecture the LoRA was trained for, or convert the file to the right key format "
           "(strip an unknown key prefix); re-export an unsupported LyCORIS algorithm as LoRA/LoCon, LoHa or "
           "LoKr."),
        _c("RUNTIME.LORA_PARTIAL", "error",
           "Verified by value, part of the LoRA file does not render as the file defines it: modules that "
           "name no module of the base, did not land, landed with other weights or scale, or lost their DoRA "
           "magnitude. The LoRA arms are still rendered and marked `applied: partial`.",
           "Check the key prefixes and the base variant; for DoRA files use a runtime that applies "
           "`dora_scale`; until then the renders show a weaker or different LoRA than the one trained."),
        _c("RUNTIME.LORA_NOT_APPLIED", "error",
           "The LoRA was loaded but does not change the computation, or another adapter is active.",
           "Check key prefixes and adapter activation; renders from this path do not test the LoRA."),
        _c("RUNTIME.LORA_ALPHA_UNKNOWN", "warn",
           "The file carries no alpha and the run's config says alpha differs from rank: strength is wrong.",
           "Save the LoRA with its adapter metadata (or kohya alpha tensors) so the scale alpha/rank survives."),
        _c("RUNTIME.SETTINGS_CHANGED", "error",
           "The settings actually passed to the pipeline differ from the eval spec.",
           "Remove the code path that alters settings (e.g. lowering steps or size to dodge memory)."),
        _c("RUNTIME.RESOLUTION_BELOW_TRAINING", "warn",
           "The evaluation renders below the resolution the LoRA was trained at.",
           "Render at the training resolution or above."),
        _c("RUNTIME.TRIGGER_MISMATCH", "error",
           "The generation trigger differs from the training captions' trigger in spelling or tokens.",
           "Use the exact trigger string the captions carry."),
        _c("RUNTIME.PROMPT_TRUNCATED", "warn",
           "A prompt (or negative prompt) is longer than the text encoder's token limit and was cut.",
           "Shorten the prompt to fit the token limit of every text encoder."),
        _c("RUNTIME.TRIGGER_TRUNCATED", "error",
           "The trigger falls past the token limit, so the model never sees it.",
           "Put the trigger near the start of the prompt and shorten the prompt."),
        _c("RUNTIME.NEGATIVE_CONTRADICTS", "warn",
           "Content words of the negative prompt also appear in the positive prompt.",
           "Remove from the negative prompt what the positive prompt asks for."),
        _c("COMPARISON.UNCONTROLLED", "error",
           "Renders meant to be compared differ in more than weights or trigger (or in eval spec across checkpoints).",
           "Render every arm and checkpoint with one eval spec; re-run the evaluation."),
        _c("COMPARISON.ARM_MISSING", "error",
           "One of the three comparison arms is missing for a prompt x seed.",
           "Re-run the evaluation; see the operational findings for why the arm was not rendered."),
        _c("COMPARISON.NONDETERMINISTIC", "error",
           "Re-rendering the same base image gave different pixels beyond the tolerance.",
           "Fix seeds (CPU generator per image), batch size, threads and memory savers."),
        _c("OPERATIONAL.OOM", "error",
           "A render ran out of memory (device or host); it was not retried at lower settings.",
           "Render on a larger device or enable a memory saver for every arm alike, then re-run."),
        _c("OPERATIONAL.WORKER_LOST", "error",
           "A render's heartbeat went stale with no output and no live process.",
           "Check the worker's logs (killed, preempted, crashed) and re-run the evaluation."),
        _c("OPERATIONAL.RENDER_FAILED", "error",
           "A render failed for another reason (the phase and error are in the evidence).",
           "Read the error in the evidence and the Dagster logs; fix and re-run."),
        _c("OPERATIONAL.SLOW_WARMUP", "info",
           "The first render was far slower than steady state (warm-up, not a stall).",
           "Nothing to fix; exclude warm-up from timings."),
        _c("DATASET.IMAGE_WITHOUT_CAPTION", "error",
           "An image has no caption file or metadata row.",
           "Add the caption or remove the image."),
        _c("DATASET.CAPTION_WITHOUT_IMAGE", "error",
           "A caption has no image (an orphan).",
           "Restore the image or delete the orphan caption."),
        _c("DATASET.EMPTY_CAPTION", "warn",
           "A caption is empty or whitespace only.",
           "Write a literal caption for the image."),
        _c("DATASET.UNREADABLE_IMAGE", "error",
           "An image cannot be decoded (truncated, not an image, or decompression-bomb size).",
           "Replace or remove the file."),
        _c("DATASET.SOURCE_CHANGED", "warn",
           "The dataset folder changed after the snapshot or after training started.",
           "Snapshot the dataset again and re-train, or evaluate against the snapshot the run used."),
        _c("DATASET.NOT_SNAPSHOTTED", "warn",
           "No snapshot matches the dataset the run trained on.",
           "Snapshot the dataset before training so renders can be traced back to exact files."),
        _c("DATASET.VAGUE_CAPTIONS", "warn",
           "Captions carry quality words (masterpiece, best quality, 8k, ...) instead of literal content.",
           "Describe what is in the image; drop quality tags."),
        _c("DATASET.UNIFORM_CAPTIONS", "warn",
           "Too few distinct captions: the model cannot tell the concept from the rest.",
           "Caption each image with what differs in it (background, pose, light)."),
        _c("DATASET.TRIGGER_INCONSISTENT", "error",
           "The trigger is missing from some captions or spelled in variants.",
           "Use one exact trigger spelling in every caption."),
        _c("DATASET.DUPLICATE_IMAGES", "warn",
           "Images are exact or near duplicates of each other.",
           "Remove duplicates; they overweight one view and invite memorization."),
        _c("DATASET.LOW_RESOLUTION", "warn",
           "Images are smaller than the training resolution.",
           "Use larger source images or train at a lower resolution."),
        _c("DATASET.TOO_FEW_IMAGES", "warn",
           "The dataset has fewer images than the configured minimum.",
           "Add more varied images of the concept."),
        _c("DATASET.CAPTION_TOO_LONG", "warn",
           "A caption is longer than the text encoder's token limit and will be cut in training.",
           "Shorten the caption."),
        _c("TRAINING.LOSS_NOT_FINITE", "error",
           "The training loss became NaN or Inf.",
           "Lower the learning rate, check mixed precision, and restart from an earlier checkpoint."),
        _c("TRAINING.LOSS_DIVERGED", "error",
           "The smoothed loss stayed well above its minimum: training diverged.",
           "Lower the learning rate or rank; pick a checkpoint from before the divergence."),
        _c("TRAINING.OVERTRAINING_SUSPECTED", "warn",
           "Late checkpoints look overtrained (training signals and render quality worsen together).",
           "Prefer an earlier checkpoint; reduce steps or learning rate."),
        _c("TRAINING.AGGRESSIVE_SETTINGS", "warn",
           "Rank, learning rate or steps per image are high for the dataset and optimizer.",
           "Compare with the documented thresholds; lower rank, learning rate or steps."),
        _c("TRAINING.CONFIG_UNKNOWN", "warn",
           "The run's training configuration could not be read or is missing key facts.",
           "Keep the trainer's config and metadata beside the checkpoints."),
        _c("TRAINING.WEIGHTS_EXPLODING", "error",
           "LoRA weight-delta norms jump between checkpoints.",
           "Lower the learning rate; use a checkpoint from before the jump."),
        _c("QUALITY.NO_LORA_EFFECT", "error",
           "LoRA renders look like the base renders (or the file's weight deltas are all zero).",
           "Train longer or check that the checkpoint holds trained weights."),
        _c("QUALITY.TRIGGER_NO_EFFECT", "warn",
           "Renders with and without the trigger look the same: the trigger does not steer the LoRA.",
           "Caption with the trigger consistently; the LoRA may have bled into every prompt."),
        _c("QUALITY.NOISE_COLLAPSE", "error",
           "LoRA renders carry far more high-frequency energy than the base: collapse toward noise.",
           "Lower learning rate or steps; pick an earlier checkpoint."),
        _c("QUALITY.SEED_COLLAPSE", "warn",
           "LoRA renders vary much less across seeds than the base: collapse toward one image.",
           "Reduce steps or rank; add variety to the dataset."),
        _c("QUALITY.MEMORIZATION", "warn",
           "A render is a near copy of a training image.",
           "Reduce steps; add variety; check for duplicates in the dataset."),
        _c("REVIEW.REJECTED", "info",
           "A reviewer rejected this checkpoint.",
           "Read the review note."),
    ]
}


@dataclass
class Finding:
    """One observed problem, with the evidence that shows it."""

    code: str
    subject: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    severity: Severity | None = None  # None -> the catalogue default

    def __post_init__(self) -> None:
        if self.code not in CATALOGUE:
            raise ValueError(f"unknown finding code {self.code!r}: add it to lora_pipeline/findings.py")
        if self.severity is None:
            self.severity = CATALOGUE[self.code].severity

    @property
    def layer(self) -> str:
        return CATALOGUE[self.code].layer

    @property
    def fix(self) -> str:
        return CATALOGUE[self.code].fix

    def to_dict(self) -> dict[str, Any]:
        """The report.json shape of CONTRACT section 4."""
        d = asdict(self)
        return {
            "code": self.code, "layer": self.layer, "severity": self.severity, "subject": self.subject,
            "message": self.message, "evidence": d["evidence"], "fix": self.fix,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        return cls(code=d["code"], subject=d.get("subject", ""), message=d.get("message", ""),
                   evidence=dict(d.get("evidence") or {}), severity=d.get("severity"))


def verdict(findings: list[Finding]) -> str:
    """CONTRACT section 4: the first layer in order with an `error` finding decides."""
    error_layers = {f.layer for f in findings if f.severity == "error"}
    for layers, name in VERDICT_ORDER:
        if error_layers.intersection(layers):
            return name
    return "ok"


def catalogue_markdown() -> str:
    lines = [
        "# Finding codes",
        "",
        "Generated from `lora_pipeline/findings.py` (`python -m lora_pipeline.findings > docs/findings.md`);",
        "a test keeps this file equal to the code. Verdict rule (CONTRACT section 4): the first layer, in the",
        "order provenance/runtime/comparison/operational -> `evaluation_invalid`, dataset -> `dataset_problem`,",
        "training -> `training_problem`, quality -> `quality_problem`, with a finding of severity `error`",
        "decides; none -> `ok`.",
        "",
        "| code | layer | default severity | meaning | fix |",
        "|---|---|---|---|---|",
    ]
    for c in CATALOGUE.values():
        lines.append(f"| `{c.code}` | {c.layer} | {c.severity} | {c.meaning} | {c.fix} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(catalogue_markdown(), end="")
