"""Evaluation benchmark (issue 6, Performance): the pipeline through Dagster against hand-written loops.

On the toy model, 4 checkpoints x 2 prompts x 2 seeds x 3 arms:
  (a) the pipeline through Dagster: assets/launch.py `materialize` on a temp workspace (datasets,
      ingestion, checkpoint analysis, evaluation, reports: everything the launcher does);
  (b) a minimal diffusers loop: the base loaded once, exactly the distinct images rendered (4 base +
      4 x 8 LoRA = 36), each saved as PNG;
  (c) a naive loop: the base reloaded per checkpoint and the base arm rendered per checkpoint (48).
Each mode runs in its own interpreter; times (wall, and process CPU of all threads: steadier on a
shared host) exclude interpreter start-up and the imports of torch, diffusers and dagster. Also:
(a) re-run unchanged, peak RSS of (a) over (b), and 50 successive checkpoints evaluated in one
process (RSS after the first vs after the 50th: no adapter leak).

    .venv/bin/python bench/eval_bench.py [--size 128] [--steps 8] [--repeat 1] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a photo of {trigger} on a white background", "{trigger} in a living room"]
SEEDS = [11, 22]
TRIGGER = "sks_chair"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _start() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _elapsed(t0: tuple[float, float]) -> dict[str, float]:
    """Wall seconds and process CPU seconds (all threads) since `t0`: CPU moves much less than wall
    with other work on a shared host, so the ratios are printed on both."""
    return {"seconds": time.perf_counter() - t0[0], "cpu_seconds": time.process_time() - t0[1]}


def prepare(work: Path, size: int, steps: int) -> Path:
    from lora_pipeline.toy.base import write_toy_base
    from lora_pipeline.toy.dataset import write_toy_dataset
    from lora_pipeline.toy.train import TrainSpec, train

    if not (work / "base" / "model_index.json").exists():
        write_toy_base(work / "base", seed=0)
        write_toy_dataset(work / "data", trigger=TRIGGER, n=8, size=64)
        train(TrainSpec(base=work / "base", dataset=work / "data", out=work / "runs" / "bench-run", trigger=TRIGGER,
                        steps=8, save_every=2, rank=4, alpha=8.0, lr=5e-2, resolution=64, format="native"))
    cfg = work / "lora_pipeline.yaml"
    cfg.write_text(
        "storage: storage\ntraining_runs: runs\n"
        f"datasets:\n  products:\n    path: {work / 'data'}\n    trigger: {TRIGGER}\n"
        f"base_models:\n  toy-sd1: {work / 'base'}\n"
        f"eval:\n  prompts: {json.dumps(PROMPTS)}\n  negative_prompt: 'blurry'\n  seeds: {SEEDS}\n"
        f"  width: {size}\n  height: {size}\n  steps: {steps}\n  guidance_scale: 5.0\n"
        "runtime:\n  device: cpu\n  dtype: float32\nchecks:\n  min_images: 1\n  resolution: 64\n")
    return cfg


def checkpoints(work: Path) -> list[Path]:
    files = sorted((work / "runs" / "bench-run" / "checkpoints").glob("*.safetensors"))
    assert len(files) == 4, files
    return files


def _pipe(work: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(work / "base", local_files_only=True)
    pipe.safety_checker = None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _render(pipe, prompt: str, seed: int, size: int, steps: int, out: Path) -> None:
    import torch

    img = pipe(prompt, negative_prompt="blurry", num_inference_steps=steps, guidance_scale=5.0, width=size,
               height=size, generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)


def _prompt(template: str, with_trigger: bool) -> str:
    from lora_pipeline.render.prompts import arm_prompt

    return arm_prompt(template, TRIGGER, with_trigger)


def mode_a(work: Path, size: int, steps: int) -> dict:
    from assets.launch import materialize
    from lora_pipeline.config import load_config

    t0 = _start()
    s = materialize(load_config(work / "lora_pipeline.yaml"))
    assert not s.failed, s.lines()
    return {**_elapsed(t0), "renders": s.renders, "base_loads": s.base_loads,
            "materialized": len(s.materialized)}


def mode_a_all(work: Path, size: int, steps: int) -> dict:
    from assets.launch import materialize
    from lora_pipeline.config import load_config

    t0 = _start()
    s = materialize(load_config(work / "lora_pipeline.yaml"), include_all=True)
    assert not s.failed, s.lines()
    return {**_elapsed(t0), "renders": s.renders, "materialized": len(s.materialized)}


def _arm_renders(pipe, trigger: bool, size: int, steps: int, out: Path) -> int:
    """Every prompt x seed of one arm into `out`; returns the number of renders."""
    n = 0
    for pi, tpl in enumerate(PROMPTS):
        for seed in SEEDS:
            _render(pipe, _prompt(tpl, trigger), seed, size, steps, out / f"{pi}-{seed}.png")
            n += 1
    return n


def _lora_renders(pipe, f: Path, adapter: str, size: int, steps: int, out: Path) -> int:
    """Load one checkpoint, render both LoRA arms, delete the adapter; returns the number of renders."""
    pipe.load_lora_weights(str(f.parent), weight_name=f.name, adapter_name=adapter)
    n = sum(_arm_renders(pipe, trig, size, steps, out / f.stem / arm)
            for arm, trig in (("lora_no_trigger", False), ("lora_trigger", True)))
    pipe.delete_adapters(adapter)
    return n


def mode_b(work: Path, size: int, steps: int) -> dict:
    t0 = _start()
    pipe, out = _pipe(work), work / "out-b"
    n = _arm_renders(pipe, True, size, steps, out / "base")
    for i, f in enumerate(checkpoints(work)):
        n += _lora_renders(pipe, f, f"c{i}", size, steps, out)
    return {**_elapsed(t0), "renders": n, "base_loads": 1}


def mode_c(work: Path, size: int, steps: int) -> dict:
    t0 = _start()
    n, out = 0, work / "out-c"
    for i, f in enumerate(checkpoints(work)):
        pipe = _pipe(work)
        n += _arm_renders(pipe, True, size, steps, out / f.stem / "base")
        n += _lora_renders(pipe, f, f"c{i}", size, steps, out)
        del pipe
    return {**_elapsed(t0), "renders": n, "base_loads": 4}


def mode_mem50(work: Path, size: int, steps: int) -> dict:
    """50 distinct checkpoints (one real file's tensors scaled per checkpoint), evaluated in one process."""
    import gc

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from lora_pipeline.render.contract import base_identity
    from lora_pipeline.render.evaluate import EvaluationInputs, evaluate_checkpoint
    from lora_pipeline.render.spec import BaseChoice, CheckpointInput, DeclaredBase, EvalSpec, RunFacts

    src = checkpoints(work)[-1]
    with safe_open(str(src), "pt") as fh:
        header = fh.metadata()
    tensors = load_file(str(src))
    folder = work / "mem50"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    base = work / "base"
    spec = EvalSpec(prompts=(PROMPTS[0],), negative_prompt="blurry", seeds=(11,), width=64, height=64, steps=2,
                    guidance_scale=5.0)
    ident = base_identity(base)
    rss = []
    t0 = time.perf_counter()
    for i in range(50):
        f = folder / f"ck-{i:02d}.safetensors"
        save_file({k: (v * (1 + 0.01 * i)).contiguous() for k, v in tensors.items()}, str(f), metadata=header)
        facts = RunFacts(run_id="mem", checkpoint_id=f"step-{i:08d}", trigger=TRIGGER, rank=4, alpha=8.0,
                         resolution=64, base=DeclaredBase("toy-sd1", str(base), ident, "sd1"), caption_trigger=TRIGGER)
        r = evaluate_checkpoint(EvaluationInputs(facts=facts, spec=spec, base=BaseChoice("toy-sd1", base, "name"),
                                                 checkpoint=CheckpointInput(f), out_dir=folder / "renders" / str(i),
                                                 storage_root=folder / "storage"))
        assert len(r.renders) == 3, [x.code for x in r.findings]
        gc.collect()
        rss.append(rss_mb())
    return {"seconds": time.perf_counter() - t0, "rss_after_first_mb": rss[0], "rss_after_last_mb": rss[-1],
            "rss_max_mb": max(rss), "growth": rss[-1] / rss[0] - 1}


MODES = {"a": mode_a, "a_all": mode_a_all, "b": mode_b, "c": mode_c, "mem50": mode_mem50}


def child(mode: str, work: Path, size: int, steps: int) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    import dagster  # noqa: F401 - imported before timing, like torch and diffusers
    import diffusers  # noqa: F401

    from lora_pipeline.quiet import quiet_libraries

    quiet_libraries()
    res = MODES[mode](work, size, steps)
    res["peak_rss_mb"] = peak_mb()
    print("RESULT " + json.dumps(res), flush=True)


def run_child(mode: str, work: Path, size: int, steps: int) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("DAGSTER_HOME", None)
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--workdir", str(work), "--size", str(size),
                           "--steps", str(steps)], cwd=REPO, env=env, capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"mode {mode} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    res = json.loads(line[7:])
    print(f"  {mode}: {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()})}",
          flush=True)
    return res


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--child", default=None)
    ap.add_argument("--repeat", type=int, default=1, help="rounds of b, a, a unchanged, a --all, c; the fastest "
                                                          "of each mode is used (a shared machine only adds time)")
    args = ap.parse_args()
    if args.child:
        child(args.child, Path(args.workdir), args.size, args.steps)
        return
    work = Path(args.workdir or "/tmp/lora-eval-bench").resolve()
    work.mkdir(parents=True, exist_ok=True)
    prepare(work, args.size, args.steps)
    print(f"eval bench: 4 checkpoints x {len(PROMPTS)} prompts x {len(SEEDS)} seeds x 3 arms, "
          f"{args.size}px, {args.steps} steps, CPU, {os.environ.get('BENCH_THREADS', '1')} torch thread(s), "
          f"{args.repeat} round(s); load {_loadavg()}")
    rounds = []
    for i in range(args.repeat):  # each round: fresh workspace, then the modes in turn (interleaved rounds)
        if args.repeat > 1:
            print(f" round {i + 1}:", flush=True)
        for d in ("storage", ".dagster", "out-b", "out-c"):
            shutil.rmtree(work / d, ignore_errors=True)
        rounds.append({"b": run_child("b", work, args.size, args.steps), "a": run_child("a", work, args.size, args.steps),
                       "a2": run_child("a", work, args.size, args.steps),
                       "a_all": run_child("a_all", work, args.size, args.steps),
                       "c": run_child("c", work, args.size, args.steps)})
    # The fastest round of each mode: on a shared machine other work only ever adds time.
    b, a, a2, a_all, c = (min((r[k] for r in rounds), key=lambda x: x["seconds"]) for k in ("b", "a", "a2", "a_all", "c"))
    m = run_child("mem50", work, args.size, args.steps)
    if args.repeat > 1:
        print(f"fastest of {args.repeat} rounds: b {b['seconds']:.2f} s, a {a['seconds']:.2f} s, "
              f"a unchanged {a2['seconds']:.3f} s, a --all {a_all['seconds']:.2f} s, c {c['seconds']:.2f} s; "
              f"load {_loadavg()}")
    cpu = {k: min(r[k]["cpu_seconds"] for r in rounds) for k in ("b", "a", "a2", "a_all", "c")}
    print(f"a/b = {a['seconds'] / b['seconds']:.2f} (target <= 1.25); CPU {cpu['a'] / cpu['b']:.2f}")
    print(f"a/c = {a['seconds'] / c['seconds']:.2f} (target < 1); CPU {cpu['a'] / cpu['c']:.2f}")
    print(f"a re-run unchanged / a = {a2['seconds'] / a['seconds']:.3f} (target <= 0.05; CPU "
          f"{cpu['a2'] / cpu['a']:.3f}); forced (--all, renders from cache) / a = "
          f"{a_all['seconds'] / a['seconds']:.3f} (target <= 0.15; CPU {cpu['a_all'] / cpu['a']:.3f})")
    print(f"fixed cost of (a) beyond (b): {a['seconds'] - b['seconds']:.1f} s wall, "
          f"{cpu['a'] - cpu['b']:.1f} s CPU (it does not grow with a render's cost)")
    print(f"peak RSS a/b = {a['peak_rss_mb'] / b['peak_rss_mb']:.2f} ({a['peak_rss_mb']:.0f} / {b['peak_rss_mb']:.0f} MB)")
    print(f"50 checkpoints in one process: RSS {m['rss_after_first_mb']:.0f} MB after the first, "
          f"{m['rss_after_last_mb']:.0f} MB after the 50th: growth {100 * m['growth']:.1f}% (target <= 10%)")


if __name__ == "__main__":
    main()
