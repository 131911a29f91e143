"""Base identity benchmark (issue 16: no work repeated that is the same for the whole run).

Every evaluating process needs the base model's identity (`fsutil.model_hash`, sha256 of its files):
`lora-pipeline evaluate` once per invocation, a daemon run once per checkpoint, and matching a run's
declared base by hash once per configured base. A diffusers folder of `--mb` MB (an SD1.5 fp16 folder
is ~2,100 MB) is built once; then, each in a fresh interpreter with the page cache warm:
  floor:  sha256 of the same bytes (what hashing the base costs at best);
  first:  `base_identity` with an empty identity cache (hash + listing + entry written);
  later:  `base_identity` in the next process (listing + the kept entry read).

    .venv/bin/python bench/base_identity_bench.py [--mb 2100] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = {"unet/diffusion_pytorch_model.safetensors": 0.82, "text_encoder/model.safetensors": 0.12,
         "vae/diffusion_pytorch_model.safetensors": 0.06}


def build(model: Path, mb: int) -> None:
    if (model / "model_index.json").is_file():
        return
    block = os.urandom(1 << 20)
    for rel, share in PARTS.items():
        f = model / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        with open(f, "wb") as out:
            for _ in range(max(1, int(mb * share))):
                out.write(block)
        (f.parent / "config.json").write_text("{}")
    for rel in ("tokenizer/vocab.json", "tokenizer/merges.txt", "scheduler/scheduler_config.json"):
        (model / rel).parent.mkdir(parents=True, exist_ok=True)
        (model / rel).write_text("{}")
    (model / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')


def child(mode: str, model: Path, cache: Path) -> None:
    sys.path.insert(0, str(REPO))
    from lora_pipeline.fsutil import model_hash
    from lora_pipeline.render.base_identity import base_identity

    t0 = time.perf_counter()
    value = model_hash(model) if mode == "floor" else base_identity(model, cache)
    print("RESULT " + json.dumps({"seconds": time.perf_counter() - t0, "value": value}), flush=True)


def run_child(mode: str, model: Path, cache: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--model", str(model), "--cache", str(cache)],
                          cwd=REPO, capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{mode} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return json.loads(line[7:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=2100)
    ap.add_argument("--workdir", default="/tmp/lora-base-identity-bench")
    ap.add_argument("--child", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--cache", default=None)
    args = ap.parse_args()
    if args.child:
        child(args.child, Path(args.model), Path(args.cache))
        return
    work = Path(args.workdir)
    model, cache = work / f"base-{args.mb}mb", work / "render-cache"
    build(model, args.mb)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    floor = min((run_child("floor", model, cache) for _ in range(2)), key=lambda r: r["seconds"])  # warms the cache
    firsts, laters = [], []
    for _ in range(2):
        shutil.rmtree(cache, ignore_errors=True)
        firsts.append(run_child("first", model, cache))
        laters.append(run_child("later", model, cache))
    first, later = (min(x, key=lambda r: r["seconds"]) for x in (firsts, laters))
    assert first["value"] == later["value"] == floor["value"], "identities differ"
    print(f"base identity, {args.mb} MB diffusers folder, load {load}: floor (sha256) {floor['seconds']:.3f} s, "
          f"first process {first['seconds']:.3f} s ({first['seconds'] / floor['seconds']:.2f}x the floor), "
          f"a later process {later['seconds'] * 1000:.1f} ms ({later['seconds'] / floor['seconds']:.4f}x the floor)")


if __name__ == "__main__":
    main()
