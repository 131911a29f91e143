"""GPU check of the CUDA paths (run on a machine with a CUDA device; CI has none).

Exercises our own code on the toy SD1.x and SDXL models: device/dtype resolution, base pipeline
load in float32/float16/bfloat16, the LoRA load-and-prove path (probe delta vs the noise floor),
same-seed determinism with a CPU generator (in one process and across processes), CPU vs CUDA
pixel differences, a real CUDA out-of-memory error classified as OPERATIONAL.OOM in the decode
phase, recovery after it, and warm-up vs steady render times. Also trains a toy LoRA on CUDA.

    python bench/gpu_check.py --out DIR     # writes DIR/gpu_check.json and prints a summary
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _pixels(img):
    import numpy as np

    return np.asarray(img.convert("RGB")).astype(np.int16)


def _render(entry, prompt: str, seed: int, steps: int = 4, size: int = 64):
    from lora_pipeline.render.ops import PhaseClock
    from lora_pipeline.render.render_one import RenderRequest, render_image
    from lora_pipeline.render.spec import EvalSpec

    spec = EvalSpec(prompts=(prompt,), negative_prompt="blurry", seeds=(seed,), width=size, height=size,
                    steps=steps, guidance_scale=5.0)
    clock = PhaseClock()
    t0 = time.perf_counter()
    out = render_image(entry.pipe, spec, RenderRequest("base", 0, seed, prompt, "blurry"), clock, None)
    return out, time.perf_counter() - t0, clock


def check_arch(arch: str, base: Path, lora: Path, results: dict) -> None:
    import numpy as np
    import torch

    from lora_pipeline.lora.load import adapters_in_place, load_and_verify, unload
    from lora_pipeline.render.contract import base_identity
    from lora_pipeline.render.pipeline import clear_cache, get_pipeline

    ident = base_identity(base)
    cpu_ref = None
    for dtype in ("float32", "float16", "bfloat16"):
        for device in (("cpu", "cuda") if dtype == "float32" else ("cuda",)):
            key = f"{arch}/{device}/{dtype}"
            r: dict = {}
            try:
                entry, cold = get_pipeline(base, ident, arch, dtype, device)
                times = []
                outs = []
                for _ in range(3):
                    o, dt, _c = _render(entry, "a photo of sks_chair on a white background", seed=11)
                    outs.append(o)
                    times.append(round(dt, 4))
                a, b = _pixels(outs[0].image), _pixels(outs[1].image)
                r["render_s"] = times
                r["same_seed_identical"] = bool(np.array_equal(a, b))
                r["image_std"] = float(a.std())
                r["all_black_or_nan"] = bool(a.max() == 0)
                other, _, _ = _render(entry, "a photo of sks_chair on a white background", seed=12)
                r["other_seed_differs"] = bool(not np.array_equal(a, _pixels(other.image)))
                if device == "cpu":
                    cpu_ref = a
                elif cpu_ref is not None and dtype == "float32":
                    r["cpu_vs_cuda_max_abs"] = int(np.abs(a - cpu_ref).max())
                    r["cpu_vs_cuda_mean_abs"] = float(np.abs(a - cpu_ref).mean())
                outcome = load_and_verify(entry.pipe, lora, f"ck_gpu_{dtype}", 1.0, str(lora), dtype_name=dtype)
                r["lora_applied"] = outcome.applied
                r["lora_findings"] = [f.code for f in outcome.findings]
                r["probe"] = {k: outcome.evidence.get(k) for k in ("probe_rel_delta", "probe_noise_floor",
                                                                  "loaded_tensors", "file_tensors")}
                lo, _, _ = _render(entry, "a photo of sks_chair on a white background", seed=11)
                r["lora_vs_base_mean_abs"] = float(np.abs(_pixels(lo.image) - a).mean())
                unload(entry.pipe)
                r["adapters_after_unload"] = adapters_in_place(entry.pipe)
                again, _, _ = _render(entry, "a photo of sks_chair on a white background", seed=11)
                r["base_restored_bit_identical"] = bool(np.array_equal(_pixels(again.image), a))
            except Exception as e:  # noqa: BLE001 - record and go on to the next combination
                r["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                r["trace"] = traceback.format_exc()[-1500:]
            results[key] = r
            print(key, json.dumps({k: v for k, v in r.items() if k != "trace"}), flush=True)
    clear_cache()
    torch.cuda.empty_cache()


def check_oom(base: Path, results: dict) -> None:
    import torch

    from lora_pipeline.render.contract import base_identity
    from lora_pipeline.render.ops import PhaseClock, classify_error, error_finding
    from lora_pipeline.render.pipeline import empty_device_cache, get_pipeline
    from lora_pipeline.render.render_one import RenderRequest, render_image
    from lora_pipeline.render.spec import EvalSpec

    r: dict = {}
    try:
        torch.empty(1 << 46, dtype=torch.uint8, device="cuda")  # 64 TiB: a real allocation failure
    except BaseException as e:  # noqa: BLE001
        r["plain_alloc"] = {"type": type(e).__name__, "class": classify_error(e),
                            "is_torch_OutOfMemoryError": isinstance(e, torch.OutOfMemoryError)}
    entry, _ = get_pipeline(base, base_identity(base), "sd1", "float16", "cuda")

    def allocate_in_decode(_m, _a):
        torch.empty(1 << 46, dtype=torch.uint8, device="cuda")

    h = entry.pipe.vae.decoder.register_forward_pre_hook(allocate_in_decode)
    clock = PhaseClock()
    spec = EvalSpec(prompts=("a chair",), negative_prompt="", seeds=(1,), width=64, height=64, steps=3,
                    guidance_scale=5.0)
    try:
        render_image(entry.pipe, spec, RenderRequest("base", 0, 1, "a chair", ""), clock, None)
        r["decode_oom"] = "no error raised"
    except BaseException as e:  # noqa: BLE001
        f = error_finding(e, clock.phase, "gpu-check", {})
        r["decode_oom"] = {"code": f.code, "phase": f.evidence.get("phase"), "memory": f.evidence.get("memory"),
                           "error": f.evidence.get("error")}
    finally:
        h.remove()
    empty_device_cache()
    try:
        out = render_image(entry.pipe, spec, RenderRequest("base", 0, 1, "a chair", ""), PhaseClock(), None)
        r["render_after_oom_ok"] = out.image.size == (64, 64)
    except BaseException as e:  # noqa: BLE001
        r["render_after_oom_ok"] = f"{type(e).__name__}: {e}"
    results["oom"] = r
    print("oom", json.dumps(r), flush=True)


def _child_render(base: str) -> None:
    from lora_pipeline.render.contract import base_identity
    from lora_pipeline.render.pipeline import get_pipeline

    entry, _ = get_pipeline(Path(base), base_identity(Path(base)), "sd1", "float16", "cuda")
    out, _, _ = _render(entry, "a photo of sks_chair on a white background", seed=11)
    print("SHA", out.pixels_sha256)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--child-render")
    args = ap.parse_args()
    if args.child_render:
        _child_render(args.child_render)
        return 0
    import torch

    from lora_pipeline.quiet import quiet_libraries

    quiet_libraries()
    results: dict = {"torch": torch.__version__, "cuda": torch.version.cuda,
                     "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    if not torch.cuda.is_available():
        print("no CUDA device", flush=True)
        return 1
    from lora_pipeline.render.pipeline import resolve_device, resolve_dtype

    results["resolve"] = {"auto_device": resolve_device("auto"), "auto_dtype_cuda": resolve_dtype("auto", "cuda"),
                          "bf16_supported": torch.cuda.is_bf16_supported()}
    print("resolve", results["resolve"], flush=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    from lora_pipeline.toy.base import write_toy_base
    from lora_pipeline.toy.dataset import write_toy_dataset
    from lora_pipeline.toy.train import TrainSpec, train

    sd1 = write_toy_base(work / "toy-sd1")
    sdxl = write_toy_base(work / "toy-sdxl", sdxl=True)
    ds = write_toy_dataset(work / "ds", n=8, size=64)
    t0 = time.perf_counter()
    res = train(TrainSpec(base=sd1, dataset=ds, out=work / "run", trigger="sks_chair", steps=20, save_every=10,
                          rank=4, alpha=8.0, lr=5e-3, device="cuda"))
    results["train_cuda"] = {"seconds": round(time.perf_counter() - t0, 2), "final_loss": res.losses[-1],
                             "checkpoints": [c["file"] for c in res.checkpoints]}
    print("train", results["train_cuda"], flush=True)
    sd1_lora = work / "run" / res.checkpoints[-1]["file"]
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_conftest", REPO / "tests" / "render" / "conftest.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    sdxl_lora = conf.make_lora(sdxl, work / "sdxl-lora.safetensors")
    check_arch("sd1", sd1, sd1_lora, results)
    check_arch("sdxl", sdxl, sdxl_lora, results)
    check_oom(sd1, results)
    shas = []
    for _ in range(2):
        out = subprocess.run([sys.executable, __file__, "--child-render", str(sd1)], capture_output=True, text=True,
                             timeout=300)
        shas.append(next((ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("SHA")), out.stderr[-300:]))
    results["cross_process_fp16_identical"] = shas[0] == shas[1]
    results["cross_process_shas"] = shas
    print("cross-process", shas, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
