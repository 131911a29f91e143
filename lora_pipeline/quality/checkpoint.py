"""Quality signals of one checkpoint: per prompt x seed, per prompt, and aggregated, with findings.

`assess_checkpoint(images, spec, trigger, subject, ...)` -> (findings, quality section), where
`images` maps (prompt_index, seed, arm) -> PIL image. Signals that lack their arms are left out (an
evaluation whose LoRA arms were skipped has no LoRA signals). The section:

    {thresholds, per_render [{prompt_index, seed, lora_effect, trigger_effect, hf_base, hf_lora,
     hf_ratio, nearest_training {path, distance, base_distance}, clip {base, lora_trigger}}],
     per_prompt [{prompt_index, seed_diversity_base, seed_diversity_lora, seed_diversity_ratio}],
     aggregate {lora_effect, trigger_effect, hf_ratio, seed_diversity_ratio, nearest_training_distance,
                memorized, clip_base, clip_lora_trigger}, training_images {source, count} | {skipped},
     clip {model} | {skipped} | {error}}
Aggregates: means for the effects and seed-diversity ratio, the median for the HF ratio, the minimum
distance. Formulas and thresholds: docs/quality.md.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_pipeline.findings import Finding
from lora_pipeline.quality import signals
from lora_pipeline.quality import thresholds as resolve_thresholds


def training_hashes(storage_root: Path | None, dataset_snapshot: dict[str, Any] | None
                    ) -> tuple[dict[str, str], dict[str, Any]]:
    """{relative path: pHash} of the run's dataset snapshot (the named one, else the latest)."""
    from lora_pipeline.dataset.snapshot import latest_snapshot, load_snapshot

    ds = dataset_snapshot or {}
    name, sid = ds.get("name"), ds.get("snapshot_id")
    if storage_root is None or not name:
        return {}, {"skipped": "no dataset snapshot known for this run"}
    snap = load_snapshot(storage_root, name, sid) if sid else latest_snapshot(storage_root, name)
    if snap is None:
        return {}, {"skipped": f"dataset {name!r} has no snapshot {sid or ''}".strip()}
    frame = snap.manifest().select("path", "phash").drop_nulls()
    hashes = dict(zip(frame["path"].to_list(), frame["phash"].to_list(), strict=True))
    return hashes, {"source": f"{name}/{snap.snapshot_id}", "count": len(hashes)}


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def assess_checkpoint(images: dict[tuple, Any], spec: Any, trigger: str | None, subject: str, *,
                      storage_root: Path | None = None, dataset_snapshot: dict[str, Any] | None = None,
                      clip_model: Path | None = None, thresholds: dict[str, float] | None = None,
                      training: dict[str, str] | None = None, log: Callable[[str], None] = lambda _m: None
                      ) -> tuple[list[Finding], dict[str, Any]]:
    t = resolve_thresholds(thresholds)
    if training is None:
        training, train_info = training_hashes(storage_root, dataset_snapshot)
    else:
        train_info = {"source": "given", "count": len(training)}
    per_render, per_prompt = [], []
    cells = sorted({(pi, s) for (pi, s, _a) in images})
    for pi, seed in cells:
        base, lt, lnt = (images.get((pi, seed, a)) for a in ("base", "lora_trigger", "lora_no_trigger"))
        row: dict[str, Any] = {"prompt_index": pi, "seed": seed}
        if base is not None and lt is not None:
            hb, hl = signals.hf_energy(base), signals.hf_energy(lt)
            row.update(lora_effect=_r(signals.arm_difference(base, lt)), hf_base=_r(hb), hf_lora=_r(hl),
                       hf_ratio=_r(hl / max(hb, signals.EPS)))
        if lt is not None and lnt is not None:
            row["trigger_effect"] = _r(signals.arm_difference(lnt, lt))
        if lt is not None and training:
            path, dist = signals.nearest_training(lt, training)
            base_dist = signals.distance_to(base, training[path]) if base is not None else None
            row["nearest_training"] = {"path": path, "distance": dist, "base_distance": base_dist}
        per_render.append(row)
    for pi in sorted({pi for pi, _s in cells}):
        seeds = sorted({s for p, s in cells if p == pi})
        div = {a: signals.seed_diversity([images[(pi, s, a)] for s in seeds if (pi, s, a) in images])
               for a in ("base", "lora_trigger")}
        ratio = None
        if div["base"] is not None and div["lora_trigger"] is not None and div["base"] > signals.EPS:
            ratio = div["lora_trigger"] / div["base"]
        per_prompt.append({"prompt_index": pi, "seeds": len(seeds), "seed_diversity_base": _r(div["base"]),
                           "seed_diversity_lora": _r(div["lora_trigger"]), "seed_diversity_ratio": _r(ratio)})
    clip_info = _clip(images, spec, trigger, clip_model, per_render, log)
    agg = _aggregate(per_render, per_prompt, t)
    quality = {"thresholds": t, "per_render": per_render, "per_prompt": per_prompt, "aggregate": agg,
               "training_images": train_info, "clip": clip_info}
    return _findings(agg, per_render, per_prompt, t, subject), quality


def _vals(rows: list[dict], key: str) -> list[float]:
    return [r[key] for r in rows if r.get(key) is not None]


def _aggregate(per_render: list[dict], per_prompt: list[dict], t: dict[str, float]) -> dict[str, Any]:
    def mean(xs: list[float]) -> float | None:
        return _r(sum(xs) / len(xs)) if xs else None

    near = [r["nearest_training"] for r in per_render if r.get("nearest_training")]
    memorized = [n for n in near if _memorized(n, t)]
    hf = _vals(per_render, "hf_ratio")
    return {"lora_effect": mean(_vals(per_render, "lora_effect")),
            "trigger_effect": mean(_vals(per_render, "trigger_effect")),
            "hf_ratio": _r(statistics.median(hf)) if hf else None,
            "seed_diversity_ratio": mean(_vals(per_prompt, "seed_diversity_ratio")),
            "nearest_training_distance": min((n["distance"] for n in near), default=None),
            "memorized": len(memorized),
            "clip_base": mean([r["clip"]["base"] for r in per_render if r.get("clip", {}).get("base") is not None]),
            "clip_lora_trigger": mean([r["clip"]["lora_trigger"] for r in per_render
                                       if r.get("clip", {}).get("lora_trigger") is not None])}


def _memorized(n: dict[str, Any], t: dict[str, float]) -> bool:
    """Near a training image, and nearer than the base render is (the LoRA made it so)."""
    close = n["distance"] <= t["memorization_distance"]
    return close and (n["base_distance"] is None or n["base_distance"] > t["memorization_distance"])


def _findings(agg: dict[str, Any], per_render: list[dict], per_prompt: list[dict], t: dict[str, float],
              subject: str) -> list[Finding]:
    out = []
    cells = [{"prompt_index": r["prompt_index"], "seed": r["seed"], **{k: r.get(k) for k in keys}}
             for r in per_render for keys in [("lora_effect", "trigger_effect", "hf_ratio")]]
    if agg["lora_effect"] is not None and agg["lora_effect"] < t["min_lora_effect"]:
        out.append(Finding("QUALITY.NO_LORA_EFFECT", subject,
                           f"LoRA renders differ from the base renders by {agg['lora_effect']:.4f} on average "
                           f"(mean absolute difference, 0..1), below {t['min_lora_effect']:g}.",
                           {"lora_effect": agg["lora_effect"], "threshold": t["min_lora_effect"],
                            "per_render": [{k: c[k] for k in ("prompt_index", "seed", "lora_effect")} for c in cells]}))
    if agg["trigger_effect"] is not None and agg["trigger_effect"] < t["min_trigger_effect"]:
        out.append(Finding("QUALITY.TRIGGER_NO_EFFECT", subject,
                           f"Renders with and without the trigger differ by {agg['trigger_effect']:.4f} on average, "
                           f"below {t['min_trigger_effect']:g}.",
                           {"trigger_effect": agg["trigger_effect"], "threshold": t["min_trigger_effect"],
                            "lora_effect": agg["lora_effect"],
                            "per_render": [{k: c[k] for k in ("prompt_index", "seed", "trigger_effect")}
                                           for c in cells]}))
    if agg["hf_ratio"] is not None and agg["hf_ratio"] > t["max_hf_ratio"]:
        out.append(Finding("QUALITY.NOISE_COLLAPSE", subject,
                           f"LoRA renders carry {agg['hf_ratio']:.3g}x the base's high-frequency energy "
                           f"(median over prompt x seed), above {t['max_hf_ratio']:g}x.",
                           {"hf_ratio": agg["hf_ratio"], "threshold": t["max_hf_ratio"],
                            "per_render": [{k: r.get(k) for k in ("prompt_index", "seed", "hf_base", "hf_lora",
                                                                   "hf_ratio")} for r in per_render]}))
    ratio = agg["seed_diversity_ratio"]
    if ratio is not None and ratio < t["min_seed_diversity_ratio"]:
        out.append(Finding("QUALITY.SEED_COLLAPSE", subject,
                           f"LoRA renders vary across seeds {ratio:.3g}x as much as the base renders, below "
                           f"{t['min_seed_diversity_ratio']:g}x: collapse toward one image.",
                           {"seed_diversity_ratio": ratio, "threshold": t["min_seed_diversity_ratio"],
                            "per_prompt": per_prompt}))
    hits = [{"prompt_index": r["prompt_index"], "seed": r["seed"], "training_image": r["nearest_training"]["path"],
             "distance": r["nearest_training"]["distance"], "base_distance": r["nearest_training"]["base_distance"]}
            for r in per_render if r.get("nearest_training") and _memorized(r["nearest_training"], t)]
    if hits:
        out.append(Finding("QUALITY.MEMORIZATION", subject,
                           f"{len(hits)} LoRA render(s) are near copies of training images (pHash distance <= "
                           f"{t['memorization_distance']:g}), e.g. {hits[0]['training_image']} at {hits[0]['distance']}.",
                           {"matches": hits, "threshold_distance": t["memorization_distance"]}))
    return out


def _clip(images: dict[tuple, Any], spec: Any, trigger: str | None, clip_model: Path | None,
          per_render: list[dict], log: Callable[[str], None]) -> dict[str, Any]:
    if clip_model is None:
        return {"skipped": "eval.clip_model not set"}
    from lora_pipeline.quality.clip import ClipUnavailable, clip_scores
    from lora_pipeline.render.prompts import arm_prompt

    try:
        for row in per_render:
            text = arm_prompt(spec.prompts[row["prompt_index"]], trigger, True)
            arms = [a for a in ("base", "lora_trigger") if (row["prompt_index"], row["seed"], a) in images]
            scores = clip_scores(Path(clip_model), [images[(row["prompt_index"], row["seed"], a)] for a in arms],
                                 text)
            row["clip"] = {a: _r(s) for a, s in zip(arms, scores, strict=True)}
    except ClipUnavailable as e:
        log(f"CLIP score skipped: {e}")
        return {"model": str(clip_model), "error": str(e)}
    return {"model": str(clip_model), "score": "100 x cosine(image embedding, prompt embedding)"}
