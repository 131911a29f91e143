"""GPU check of the transformer families (toy SD3, FLUX.1, FLUX.2 Klein): run on a lent CUDA machine.

For each family and dtype (float32, float16, bfloat16 on CUDA; float32 on CPU as the reference) it
builds the toy, writes a diffusers-format LoRA on its transformer, runs the whole evaluation
(`evaluate_checkpoint`: contract, probe on the transformer, by-value check, three arms) and records
the verdict, the by-value statuses and worst relative error against the dtype's tolerance, the probe
delta, same-seed determinism (two renders of one image), CPU-vs-CUDA pixel differences, and warm-up
vs steady render times. Nothing is asserted: the JSON is the record, docs/gpu.md the reading.

    python bench/gpu_check_families.py --out DIR [--device cuda] [--families sd3,flux1,flux2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _lora(base: Path, out: Path) -> Path:
    from tests.render.test_transformer_families import transformer_lora

    return transformer_lora(base, out)


def _evaluate(base: Path, fam: str, lora: Path, out: Path, device: str, dtype: str):
    from lora_pipeline.render.evaluate import EvaluationInputs, evaluate_checkpoint
    from lora_pipeline.render.spec import BaseChoice, CheckpointInput
    from tests.evaluation_helpers import TOY_QUALITY, facts_for, tiny_spec

    inp = EvaluationInputs(facts=facts_for(base, fam), spec=tiny_spec(seeds=(11, 22)),
                           base=BaseChoice(f"toy-{fam}", base, "name"), checkpoint=CheckpointInput(lora),
                           out_dir=out, device=device, dtype=dtype, quality_thresholds=TOY_QUALITY)
    t0 = time.perf_counter()
    r = evaluate_checkpoint(inp)
    return r, time.perf_counter() - t0


def check_family(fam: str, work: Path, devices: list[tuple[str, str]], results: dict) -> None:
    import numpy as np
    from PIL import Image

    from lora_pipeline.toy.base import write_toy_base

    base = write_toy_base(work / f"toy-{fam}", seed=0, family=fam)
    lora = _lora(base, work / f"{fam}.safetensors")
    reference = None
    for device, dtype in devices:
        key = f"{fam}/{device}/{dtype}"
        try:
            r, wall = _evaluate(base, fam, lora, work / key.replace("/", "-"), device, dtype)
            load = r.document.get("lora_load") or {}
            bv = load.get("by_value") or {}
            pngs = {x["arm"] + "/" + x["path"].rsplit("/", 1)[-1]: np.asarray(Image.open(r.path.parent / x["path"]))
                    for x in r.renders}
            entry = {"verdict": r.verdict, "error_codes": sorted({f.code for f in r.findings if f.severity == "error"}),
                     "by_value_statuses": bv.get("statuses"), "max_rel_error": bv.get("max_rel_error"),
                     "tolerance": bv.get("tolerance"), "probe": load.get("probe"),
                     "probe_rel_delta": load.get("probe_rel_delta"), "noise_floor": load.get("probe_noise_floor"),
                     "determinism": r.document.get("determinism"), "wall_s": round(wall, 3),
                     "render_s": r.document.get("timings", {}).get("render_s")}
            if reference is None:
                reference = pngs
            else:
                diffs = [np.abs(pngs[k].astype(int) - reference[k].astype(int)) for k in pngs if k in reference]
                entry["vs_first_device"] = {"max": int(max(d.max() for d in diffs)),
                                            "mean": float(np.mean([d.mean() for d in diffs]))}
            results[key] = entry
        except Exception as e:  # noqa: BLE001 - recorded, the next check still runs
            results[key] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
        print(key, json.dumps(results[key])[:300], flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--families", default="sd3,flux1,flux2")
    args = ap.parse_args()
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    devices = [("cpu", "float32")]
    if args.device != "cpu":
        devices += [(args.device, d) for d in ("float32", "float16", "bfloat16")]
    results: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                     "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    with tempfile.TemporaryDirectory() as tmp:
        for fam in args.families.split(","):
            check_family(fam, Path(tmp), devices, results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check_families.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
