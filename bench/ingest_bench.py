"""Training-run ingestion vs the floor: sha256 of the same bytes.

Builds a kohya-style run of N checkpoints of ~SIZE MB each from real LoRA tensors (a toy LoRA
trained on the spot, its A/B matrices tiled to the 264 module shapes of an SD1.5 UNet + text-encoder
LoRA, fp16, the rank chosen to reach SIZE: 42 for 50 MB), then times `ingest_run` (hash + parse +
the light analysis of each file once: NaN/Inf and all-zero scan, no delta norms; cold cache) against
`sha256` over the same files. Prints, from one run (best of --repeat each): wall time and process CPU
time (both threads) of both, the ratios (target: wall <= 1.3x), the light analysis alone (parse + scan
on one thread, no hash) against the floor, CPU per file, where the deferred cost went (the delta
norms computed after ingestion, as the `lora_checkpoint` steps or the first report do:
training/norms.py `with_norms`, cold norm cache, no second hash), and the load average around.

    python bench/ingest_bench.py [--n 20] [--size-mb 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _real_lora(tmp: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    from lora_pipeline.toy.base import write_toy_base
    from lora_pipeline.toy.dataset import write_toy_dataset
    from lora_pipeline.toy.train import TrainSpec, train

    base = write_toy_base(tmp / "base", seed=0)
    ds = write_toy_dataset(tmp / "ds", trigger="sks", n=4, size=64)
    train(TrainSpec(base=base, dataset=ds, out=tmp / "run", trigger="sks", steps=2, save_every=2, rank=4,
                    alpha=4.0, lr=1e-3, resolution=64))
    return load_file(str(sorted((tmp / "run" / "checkpoints").glob("*.safetensors"))[-1]))


def sd15_modules() -> list[tuple[str, int, int]]:
    """(kohya module name, in, out) of an SD1.5 UNet + text-encoder LoRA (264 modules)."""
    mods = []
    blocks = [("down_blocks_0", 320, 2), ("down_blocks_1", 640, 2), ("down_blocks_2", 1280, 2),
              ("mid_block", 1280, 1), ("up_blocks_1", 1280, 3), ("up_blocks_2", 640, 3), ("up_blocks_3", 320, 3)]
    for blk, d, n in blocks:
        for i in range(n):
            p = f"lora_unet_{blk}_attentions_{i}"
            t = f"{p}_transformer_blocks_0"
            mods += [(f"{p}_proj_in", d, d), (f"{p}_proj_out", d, d), (f"{t}_ff_net_0_proj", d, 8 * d),
                     (f"{t}_ff_net_2", 4 * d, d), (f"{t}_attn2_to_k", 768, d), (f"{t}_attn2_to_v", 768, d)]
            mods += [(f"{t}_{a}_{m}", d, d) for a in ("attn1", "attn2") for m in ("to_q", "to_out_0")]
            mods += [(f"{t}_attn1_{m}", d, d) for m in ("to_k", "to_v")]
    for layer in range(12):
        p = f"lora_te_text_model_encoder_layers_{layer}"
        mods += [(f"{p}_self_attn_{m}", 768, 768) for m in ("q_proj", "k_proj", "v_proj", "out_proj")]
        mods += [(f"{p}_mlp_fc1", 768, 3072), (f"{p}_mlp_fc2", 3072, 768)]
    return mods


def build_run(folder: Path, n: int, size_mb: float, seed_tensors: dict[str, np.ndarray]) -> int:
    """N checkpoints of the SD1.5 layout; the rank is chosen so each file is ~size_mb (fp16)."""
    from safetensors.numpy import save_file

    downs = [v for k, v in sorted(seed_tensors.items()) if ".down." in k]
    ups = [v for k, v in sorted(seed_tensors.items()) if ".up." in k]
    mods = sd15_modules()
    rank = max(1, round(size_mb * 1e6 / (2 * sum(i + o for _, i, o in mods))))
    folder.mkdir(parents=True)
    total = 0
    for step_i in range(1, n + 1):
        tensors = {}
        for j, (name, fan_in, fan_out) in enumerate(mods):
            # the real toy LoRA matrices, tiled (padded) to this module's shape
            tensors[f"{name}.lora_down.weight"] = np.resize(downs[j % len(downs)], (rank, fan_in)).astype(np.float16)
            up = np.resize(ups[j % len(ups)], (fan_out, rank)) * (step_i / n)  # weights grow with steps
            tensors[f"{name}.lora_up.weight"] = up.astype(np.float16)
            tensors[f"{name}.alpha"] = np.array(rank / 2, dtype=np.float16)
        md = {"ss_network_dim": str(rank), "ss_network_alpha": str(rank / 2), "ss_steps": str(step_i * 100),
              "ss_base_model_version": "sd_v1", "ss_network_module": "networks.lora"}
        f = folder / f"bench-step{step_i * 100:08d}.safetensors"
        save_file(tensors, str(f), metadata=md)
        total += f.stat().st_size
    return total


def timed(fn) -> tuple[float, float]:
    """(wall, process CPU) seconds of fn()."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def floor_sha256(files: list[Path]) -> None:
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)


def analysis_alone(files: list[Path]) -> None:
    """What ingestion's light analysis costs without the hash: map the file (as ingestion does), parse,
    NaN/Inf + zero scan, on one thread."""
    from lora_pipeline.lora.inspect import analyse
    from lora_pipeline.lora.safetensors_file import parse_safetensors
    from lora_pipeline.training.checkpoints import _open

    for f in files:
        analyse(parse_safetensors(f, _open(f)[1], sha256="not hashed"), norms=False)


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="checkpoints in the run (default 20)")
    ap.add_argument("--size-mb", type=float, default=50.0, help="size of each checkpoint in MB (default 50)")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions; the best is reported")
    args = ap.parse_args(argv)
    from lora_pipeline.config import parse_config
    from lora_pipeline.training.ingest import ingest_run
    from lora_pipeline.training.norms import with_norms

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        total = build_run(tmp / "runs" / "bench", args.n, args.size_mb, _real_lora(tmp / "seed"))
        files = sorted((tmp / "runs" / "bench").glob("*.safetensors"))
        floor_sha256(files)  # warm the page cache for both measurements alike
        load_before = _load()
        floors, ingests, alone, later = [], [], [], []
        for r in range(args.repeat):
            floors.append(timed(lambda: floor_sha256(files)))
            cfg = parse_config(f"storage: st{r}\ntraining_runs: runs\n", root=tmp, source=None)  # cold index
            records: list = []
            ingests.append(timed(lambda c=cfg, out=records: out.append(ingest_run(tmp / "runs" / "bench", c).record)))
            assert len(records[0].checkpoints) == args.n, records[0].findings
            assert all(c.total_delta_norm is None for c in records[0].checkpoints)
            alone.append(timed(lambda: analysis_alone(files)))
            later.append(timed(lambda c=cfg, rec=records[0]: with_norms(c, rec, write=False)))  # cold norm cache
            assert all(c.total_delta_norm for c in records[0].checkpoints)
        (floor, floor_cpu), (ingest, ingest_cpu), (solo, _) = min(floors), min(ingests), min(alone)
        norms, norms_cpu = min(later)
        mb, per = total / 1e6, 1000 / args.n
        print(f"checkpoints:  {args.n} x {mb / args.n:.1f} MB = {mb:.0f} MB (best of {args.repeat})")
        print(f"floor sha256: {floor:.3f} s wall ({mb / floor:.0f} MB/s), {floor_cpu:.3f} s CPU")
        print(f"ingest_run:   {ingest:.3f} s wall ({mb / ingest:.0f} MB/s), {ingest_cpu:.3f} s CPU")
        print(f"analysis alone (map + parse + NaN/Inf/zero scan, no hash, no norms, one thread): {solo:.3f} s")
        print(f"ratio:        {ingest / floor:.2f}x wall (target <= 1.3x), {ingest_cpu / floor_cpu:.2f}x CPU, "
              f"analysis alone {solo / floor:.2f}x")
        print(f"per file:     floor {floor_cpu * per:.1f} ms CPU, ingest_run {ingest_cpu * per:.1f} ms CPU, "
              f"analysis alone {solo * per:.1f} ms")
        print(f"deferred:     delta norms after ingestion (with_norms, cold cache, no second hash): {norms:.3f} s "
              f"wall, {norms_cpu:.3f} s CPU = {norms_cpu * per:.1f} ms CPU per file, once per file content")
        print(f"load average: {load_before} before, {_load()} after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
