"""The records one evaluation writes, built from plain values: a render's manifest (shape documented in
manifest.py), its row in `evaluation.json`, its render-cache key fields and entry, the LoRA's provenance
and the arm metrics."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lora_pipeline.fsutil import sha256_file
from lora_pipeline.render import cache, compare, contract, infotext, manifest
from lora_pipeline.render.pipeline import MEMORY_SETTINGS
from lora_pipeline.render.render_one import RenderOutput, RenderRequest


def render_manifest(inp: Any, base: dict[str, Any], req: RenderRequest, out: RenderOutput,
                    timings: dict[str, float], lora: dict[str, Any] | None, template: str,
                    load_timings: dict[str, Any], token_counts: dict[tuple, dict], scheduler: str,
                    versions: dict[str, str]) -> dict[str, Any]:
    r = out.requested
    phase = dict(load_timings)
    phase.update({f"{k}_s": v for k, v in timings.items() if k != "save"}, step_s=out.step_s,
                 text_encoder_s=out.observed.get("text_encoder_s") or {})
    if req.arm == "base":
        phase = {k: v for k, v in phase.items() if not k.startswith("lora_")}
    return {
        "schema_version": manifest.SCHEMA_VERSION, "run_id": inp.facts.run_id,
        "checkpoint_id": inp.facts.checkpoint_id, "arm": req.arm, "prompt_index": req.prompt_index,
        "prompt_template": template,
        "base_model": {k: base.get(k) for k in ("name", "path", "sha256", "architecture")},
        "lora": None if lora is None else {k: lora.get(k) for k in ("path", "sha256", "adapter_name", "scale",
                                                                     "alpha_source", "applied", "short_hash")},
        "trigger": inp.facts.trigger, "prompt": r["prompt"], "negative_prompt": r["negative_prompt"],
        "token_counts": token_counts.get((req.prompt_index, req.arm != "lora_no_trigger"), {}),
        "seed": req.seed, "width": r["width"], "height": r["height"], "steps": r["num_inference_steps"],
        "guidance_scale": float(r["guidance_scale"]), "scheduler": scheduler, "dtype": inp.dtype,
        "device": inp.device, "generator": "cpu", "memory_settings": dict(MEMORY_SETTINGS),
        "library_versions": versions, "phase_timings": phase, "observed": out.observed,
        "pixels_sha256": out.pixels_sha256, "dagster_run_id": inp.dagster_run_id,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def render_row(png: Path, out_dir: Path, m: dict[str, Any], out: RenderOutput, save_s: float,
               key: str | None, cache_state: str | None) -> dict[str, Any]:
    return {"path": str(png.relative_to(out_dir)), "manifest": str(png.with_suffix(".json").relative_to(out_dir)),
            "arm": m["arm"], "prompt_index": m["prompt_index"], "prompt": m["prompt"],
            "negative_prompt": m["negative_prompt"], "seed": m["seed"], "width": m["width"], "height": m["height"],
            "steps": m["steps"], "guidance_scale": m["guidance_scale"], "scheduler": m["scheduler"],
            "token_counts": m["token_counts"], "sha256": sha256_file(png), "pixels_sha256": out.pixels_sha256,
            "save_s": round(save_s, 6), "render_key": key, "render_cache": cache_state}


def cache_key_fields(inp: Any, base: dict[str, Any], req: RenderRequest, lora: dict[str, Any] | None,
                     scheduler: str, versions: dict[str, str]) -> dict[str, Any]:
    """What the render cache keys one render of this evaluation on (cache.key_fields)."""
    s = inp.spec
    return cache.key_fields(base_sha256=base["sha256"], lora=lora, prompt=req.prompt,
                            negative_prompt=req.negative_prompt, seed=req.seed, width=s.width, height=s.height,
                            steps=s.steps, guidance_scale=s.guidance_scale, scheduler=scheduler, dtype=inp.dtype,
                            device=inp.device, memory_settings=MEMORY_SETTINGS, library_versions=versions)


def cache_entry(key_fields: dict[str, Any], out: RenderOutput, timings: dict[str, float]) -> dict[str, Any]:
    """What the render cache keeps beside the pixels: how the original render ran."""
    return {"key_fields": key_fields, "pixels_sha256": out.pixels_sha256, "requested": out.requested,
            "observed": out.observed, "step_s": out.step_s, "timings": timings,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds")}


def output_from_entry(image: Any, entry: dict[str, Any]) -> RenderOutput:
    return RenderOutput(image=image, requested=dict(entry.get("requested") or {}),
                        observed=dict(entry.get("observed") or {}), step_s=list(entry.get("step_s") or []),
                        pixels_sha256=entry["pixels_sha256"])


def lora_facts(inp: Any, report: Any) -> dict[str, Any]:
    """`provenance.lora` as read from the file (lora/inspect.py's report), before it is loaded."""
    return {"path": str(inp.checkpoint.path), "sha256": report.sha256, "recorded_sha256": inp.checkpoint.sha256,
            "alpha_source": contract.alpha_source(report), "scale": inp.spec.lora_scale,
            "key_format": report.key_format, "architecture": report.architecture.get("family"),
            "ranks": report.ranks, "short_hash": infotext.lora_short_hash(inp.checkpoint.path, report.metadata)}


def lora_applied(outcome: Any) -> dict[str, Any]:
    """What the load proved landed (lora/load.py's outcome), added to `provenance.lora`."""
    bv = outcome.evidence.get("by_value") or {}
    return {"applied": "partial" if outcome.partial else "as_file",
            "modules_as_file": f"{(bv.get('statuses') or {}).get('ok', 0)}/{bv.get('modules_in_file')}",
            **{f"file_{k}": v for k, v in (outcome.evidence.get("file_defines") or {}).items()}}


def arm_metrics(images: dict[tuple, Any]) -> dict[str, float]:
    """Mean absolute pixel difference (8-bit levels) between arms, averaged over prompt x seed."""
    pairs = {"base_vs_lora_trigger_mean_abs": ("base", "lora_trigger"),
             "lora_trigger_vs_no_trigger_mean_abs": ("lora_no_trigger", "lora_trigger")}
    out = {}
    for name, (a, b) in pairs.items():
        vals = [compare.pixel_diff(images[(pi, s, a)], images[(pi, s, b)])["mean_abs"]
                for (pi, s, arm) in images if arm == a and (pi, s, b) in images]
        if vals:
            out[name] = round(sum(vals) / len(vals), 6)
    return out


def evaluation_document(ev: Any, verdict: str) -> dict[str, Any]:
    """`evaluation.json` of one evaluation (shape in evaluate.py's docstring)."""
    inp = ev.inp
    return {
        "schema_version": 1, "run_id": inp.facts.run_id, "checkpoint_id": inp.facts.checkpoint_id,
        "step": inp.facts.step, "verdict": verdict,
        "findings": [f.to_dict() for f in ev.findings],
        "provenance": {"base_model": ev.base_identity or {"declared": vars(inp.facts.base)},
                       "lora": ev.lora_facts or {"path": str(inp.checkpoint.path)},
                       "trigger": inp.facts.trigger, "eval": inp.spec.to_dict(),
                       "runtime": {"device": inp.device, "dtype": inp.dtype, "memory_settings": MEMORY_SETTINGS,
                                   "library_versions": ev.versions, **ev.load_timings},
                       "dataset_snapshot": inp.facts.dataset_snapshot, "dagster_run_id": inp.dagster_run_id},
        "renders": ev.renders, "skipped": ev.skipped, **ev.doc, "timings": {"render_s": ev.render_s},
        "render_keys": sorted(ev.keys), "data_version": cache.keys_digest(ev.keys),
        "render_counts": {"rendered": sum(r.get("render_cache") != "hit" for r in ev.renders),
                          "reused": sum(r.get("render_cache") == "hit" for r in ev.renders)},
    }
