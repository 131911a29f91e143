"""Quality signals computed from the renders, with no downloaded weights (docs/quality.md).

- signals.py    the per-image measures (numpy only): arm difference, high-frequency energy, seed
                diversity, nearest training image by the dataset's own perceptual hash
- checkpoint.py per prompt x seed and per checkpoint -> the `quality` section of evaluation.json and
                the QUALITY.* findings
- clip.py       the optional CLIP text-image score (a local CLIP folder named by `eval.clip_model`)
- run_level.py  across the checkpoints of one run: the render half of TRAINING.OVERTRAINING_SUSPECTED
                and COMPARISON.UNCONTROLLED for eval-spec drift

No Dagster here. Thresholds: `DEFAULTS`, overridable by `checks.quality_*` in the config.
"""

from __future__ import annotations

# name -> default; every one documented in docs/quality.md (and mirrored in ChecksConfig).
DEFAULTS: dict[str, float] = {
    "min_lora_effect": 0.01,  # mean |base - lora_trigger| (0..1) below this: QUALITY.NO_LORA_EFFECT
    "min_trigger_effect": 0.01,  # mean |lora_no_trigger - lora_trigger| below this: TRIGGER_NO_EFFECT
    "max_hf_ratio": 4.0,  # median HF energy of lora_trigger / base above this: NOISE_COLLAPSE
    "min_seed_diversity_ratio": 0.25,  # seed diversity lora_trigger / base below this: SEED_COLLAPSE
    "memorization_distance": 4,  # pHash Hamming distance to a training image at or below this: MEMORIZATION
    "worsening": 0.25,  # run level: a signal 25% worse at the last checkpoint than at the best earlier one
}


def thresholds(overrides: dict[str, float] | None = None) -> dict[str, float]:
    out = dict(DEFAULTS)
    out.update({k: v for k, v in (overrides or {}).items() if k in DEFAULTS and v is not None})
    return out
