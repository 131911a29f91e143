"""A toy world for the report tests, built once per package on the real layers: the toy base, copies of
the toy dataset (clean, one caption removed, one changed after training), toy-trained native runs
pointed at them (one with a NaN planted in its loss log), snapshots, ingestion, and evaluations through
the real evaluation core (64x64, 2 steps, one prompt, one seed, one torch thread).

Runtime faults are planted the way a broken run would carry them: a run record whose checkpoint file is
a planted-fault LoRA (or whose facts disagree with the base/captions), evaluated through
`inputs_for` like the eval_renders asset does."""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TRIGGER = "sks_chair"
CLEAN, LAST = "clean", "step-00000006"




def _render_helpers():
    spec = importlib.util.spec_from_file_location("_render_conftest", Path(__file__).parents[1] / "render" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@dataclass
class World:
    root: Path
    config_path: Path
    config: object
    results: dict = field(default_factory=dict)  # run_id -> {checkpoint_id: EvaluationResult}

    def evaluate(self, run_id: str, checkpoint_id: str = LAST, config=None):
        from lora_pipeline.render.evaluate import evaluate_checkpoint
        from lora_pipeline.render.from_record import inputs_for

        inp = inputs_for(config or self.config, run_id, checkpoint_id, "cpu", "float32", dagster_run_id=None)
        res = evaluate_checkpoint(inp)
        self.results.setdefault(run_id, {})[checkpoint_id] = res
        return res


def _copy_run(src: Path, dest: Path, dataset: Path) -> Path:
    shutil.copytree(src, dest)  # copy2: mtimes kept, so the dataset link sees files older than training
    meta = json.loads((dest / "lora_run.json").read_text())
    meta["dataset"]["path"] = str(dataset)
    (dest / "lora_run.json").write_text(json.dumps(meta))
    return dest


def _record_variant(world: World, run_id: str, **changes) -> None:
    """A run record derived from the clean run's (what ingestion would write for a run with this fault)."""
    from lora_pipeline.fsutil import atomic_write_json, sha256_file
    from lora_pipeline.storage import Storage, checkpoint_partition_key
    from lora_pipeline.training.ingest import load_run_record

    rec = load_run_record(world.config.storage, CLEAN)
    rec.run_id = run_id
    lora = changes.pop("lora", None)
    for ck in rec.checkpoints:
        ck.partition_key = checkpoint_partition_key(run_id, ck.checkpoint_id)
        if lora is not None and ck.checkpoint_id == LAST:
            ck.path, ck.aliases = str(lora), []
            ck.sha256 = sha256_file(lora) if Path(lora).is_file() else ""
    rec.findings = [f for f in rec.findings if f.subject == f"run {CLEAN}"]
    for f in rec.findings:
        f.subject = f"run {run_id}"
    for k, v in changes.items():
        obj = rec
        *head, last = k.split(".")
        for h in head:
            obj = getattr(obj, h)
        setattr(obj, last, v)
    atomic_write_json(Storage(world.config.storage).run_record(run_id), {"schema_version": 1, **rec.to_dict()})


@pytest.fixture(scope="package")
def world(tmp_path_factory, toy_base, toy_dataset, native_run) -> World:
    from lora_pipeline.config import load_config
    from lora_pipeline.dataset.snapshot_write import take_snapshot
    from lora_pipeline.quiet import quiet_libraries
    from lora_pipeline.training.ingest import ingest_run, write_run_record

    quiet_libraries()
    root = tmp_path_factory.mktemp("report-world")
    data = root / "data"
    for name in ("products", "unpaired", "changed"):
        shutil.copytree(toy_dataset, data / name)
    caption = sorted((data / "unpaired").rglob("*.txt"))[0]
    caption.unlink()  # an image without its caption
    cfg = root / "lora_pipeline.yaml"
    cfg.write_text(
        "storage: storage\ntraining_runs: runs\n"
        "datasets:\n" + "".join(f"  {n}:\n    path: data/{n}\n    trigger: {TRIGGER}\n"
                                for n in ("products", "unpaired", "changed"))
        + f"base_models:\n  toy-sd1: {toy_base}\n"
        "eval:\n  prompts: ['a photo of {trigger} on a white background']\n  negative_prompt: 'blurry, lowres'\n"
        "  seeds: [11]\n  width: 64\n  height: 64\n  steps: 2\n  guidance_scale: 5.0\n"
        "runtime:\n  device: cpu\n  dtype: float32\n"
        "checks:\n  resolution: 64\n  min_images: 4\n"
        # a 6-step toy LoRA changes renders by ~0.01 (0..1): the effect floors are set below that
        "  quality_min_lora_effect: 0.002\n  quality_min_trigger_effect: 0.002\n")
    config = load_config(cfg)
    for name in ("products", "unpaired", "changed"):
        take_snapshot(config.storage, name, data / name)
    changed = sorted((data / "changed").rglob("*.txt"))[0]
    changed.write_text(changed.read_text() + ", now on a red rug")  # edited after training started
    runs = root / "runs"
    _copy_run(native_run, runs / CLEAN, data / "products")
    _copy_run(native_run, runs / "unpaired", data / "unpaired")
    _copy_run(native_run, runs / "changed", data / "changed")
    nan = _copy_run(native_run, runs / "nan-loss", data / "products")
    lines = (nan / "loss.jsonl").read_text().splitlines()
    lines[1] = json.dumps({"step": json.loads(lines[1])["step"], "loss": "nan"})
    (nan / "loss.jsonl").write_text("\n".join(lines) + "\n")
    for run in sorted(runs.iterdir()):
        write_run_record(config, ingest_run(run, config))
    w = World(root, cfg, config)
    for ck in ("step-00000003", LAST):
        w.evaluate(CLEAN, ck)
    for run in ("unpaired", "changed", "nan-loss"):
        w.evaluate(run)
    _runtime_faults(w, toy_base)
    return w


def _runtime_faults(w: World, toy_base: Path) -> None:
    h = _render_helpers()
    loras = w.root / "planted"

    def rename(sd):
        return {k.replace("unet.", "diffusion_model.", 1): v for k, v in sd.items()}

    def zero(sd):
        return {k: (v * 0 if ".up." in k or "lora_B" in k else v) for k, v in sd.items()}

    planted = {
        "fault-prefix": h.make_lora(toy_base, loras / "prefix.safetensors", mutate=rename),
        "fault-shape": h.make_lora(toy_base, loras / "wide.safetensors", unet_overrides={"block_out_channels": [64, 128]}),
        "fault-partial": h.make_lora(toy_base, loras / "deeper.safetensors", unet_overrides={"layers_per_block": 2}),
        "fault-zero": h.make_lora(toy_base, loras / "zero.safetensors", mutate=zero),
        "fault-missing": loras / "gone.safetensors",
    }
    for run_id, lora in planted.items():
        _record_variant(w, run_id, lora=lora)
        w.evaluate(run_id)
    _record_variant(w, "fault-base", **{"base_model.sha256": "0" * 64})
    _record_variant(w, "fault-respelled", trigger="sks-chair")
    _record_variant(w, "fault-resolution", resolution=128)
    for run_id in ("fault-base", "fault-respelled", "fault-resolution"):
        w.evaluate(run_id)
    _record_variant(w, "reviewed")  # the reviews test's own run: its decisions touch no other test
    w.evaluate("reviewed")
    long = " ".join(["a red wooden chair in a bright studio,"] * 11) + " {trigger}"
    variants = {"fault-truncated": {"prompts": [long]},
                "fault-negative": {"prompts": ["a photo of {trigger}, red chair"], "negative_prompt": "red, blurry"}}
    for run_id, ev in variants.items():
        _record_variant(w, run_id)
        w.evaluate(run_id, config=w.config.model_copy(update={"eval": w.config.eval.model_copy(update=ev)}))
