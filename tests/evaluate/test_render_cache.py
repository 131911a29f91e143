"""The render cache on real toy renders: the base arm rendered once for 3 checkpoints, an unchanged
re-evaluation renders nothing, a deleted render is redone alone, a corrupt cached PNG is redone."""

from __future__ import annotations

import json
from pathlib import Path

from tests.evaluate.conftest import TRIGGER

QUALITY = {"min_lora_effect": 1e-5, "min_trigger_effect": 1e-5}  # toy renders barely move (tests/render)


def _inputs(base: Path, lora: Path, storage: Path, checkpoint_id: str, seeds=(5,)):
    from lora_pipeline.render.contract import base_identity
    from lora_pipeline.render.evaluate import EvaluationInputs
    from lora_pipeline.render.spec import BaseChoice, CheckpointInput, DeclaredBase, EvalSpec, RunFacts

    facts = RunFacts(run_id="run-three", checkpoint_id=checkpoint_id, trigger=TRIGGER, rank=4, alpha=8.0,
                     resolution=64, base=DeclaredBase("toy-sd1", str(base), base_identity(base), "sd1"),
                     caption_trigger=TRIGGER)
    spec = EvalSpec(prompts=("a photo of {trigger}",), negative_prompt="blurry", seeds=seeds, width=64, height=64,
                    steps=2, guidance_scale=4.0)
    return EvaluationInputs(facts=facts, spec=spec, base=BaseChoice("toy-sd1", base, "name"),
                            checkpoint=CheckpointInput(lora), out_dir=storage / "renders" / "run-three" / checkpoint_id,
                            storage_root=storage, quality_thresholds=QUALITY)


def _evaluate_all(toy_base, files, storage):
    from lora_pipeline.render.evaluate import evaluate_checkpoint

    return [evaluate_checkpoint(_inputs(toy_base, f, storage, f"step-{i:08d}")) for i, f in enumerate(files, 1)]


def _files(run: Path) -> list[Path]:
    files = sorted((run / "checkpoints").glob("*.safetensors"))
    assert len(files) == 3
    return files


def test_three_checkpoints_share_one_base_render_and_a_rerun_renders_nothing(toy_base, three_checkpoint_run, tmp_path):
    from lora_pipeline.render import cache

    storage = tmp_path / "storage"
    before = dict(cache.RENDERS)
    first = _evaluate_all(toy_base, _files(three_checkpoint_run), storage)
    done = {k: v - before.get(k, 0) for k, v in cache.RENDERS.items()}
    assert done.get("base") == 1, done  # 1 prompt x 1 seed, shared by the 3 checkpoints
    assert done.get("lora_trigger") == 3 and done.get("lora_no_trigger") == 3
    assert all(r.verdict == "ok" for r in first), [f.code for r in first for f in r.findings]
    for r in first:  # CONTRACT section 3 paths hold, and each manifest names its own checkpoint
        for row in r.renders:
            png = r.path.parent / row["path"]
            m = json.loads(png.with_suffix(".json").read_text())
            assert m["checkpoint_id"] == r.document["checkpoint_id"] and m["arm"] == row["arm"]
            assert m["render_key"] == row["render_key"] and (storage / "render-cache" / m["render_key"][:2]).is_dir()
    base_keys = {row["render_key"] for r in first for row in r.renders if row["arm"] == "base"}
    assert len(base_keys) == 1

    n = cache.renders_done()
    second = _evaluate_all(toy_base, _files(three_checkpoint_run), storage)
    assert cache.renders_done() == n, "an unchanged re-evaluation must render nothing"
    assert [r.data_version for r in second] == [r.data_version for r in first]
    assert all(r.document["render_counts"] == {"rendered": 0, "reused": 3} for r in second)
    assert [r.document["quality"]["aggregate"] for r in second] == [r.document["quality"]["aggregate"] for r in first]


def test_deleted_render_redone_alone_and_corrupt_cache_png_redone(toy_base, three_checkpoint_run, tmp_path):
    from lora_pipeline.render import cache
    from lora_pipeline.render.evaluate import evaluate_checkpoint

    storage = tmp_path / "storage"
    files = _files(three_checkpoint_run)
    first = _evaluate_all(toy_base, files, storage)
    store = cache.RenderCache(storage / cache.CACHE_DIR)
    row = next(r for r in first[1].renders if r["arm"] == "lora_trigger")
    checkpoint_copy = first[1].path.parent / row["path"]

    # The checkpoint's own copy deleted: rewritten from the cache, nothing rendered.
    checkpoint_copy.unlink()
    n = cache.renders_done()
    again = evaluate_checkpoint(_inputs(toy_base, files[1], storage, "step-00000002"))
    assert cache.renders_done() == n and checkpoint_copy.is_file()
    assert again.data_version == first[1].data_version

    # The cached render deleted: exactly that one rendered again, same pixels.
    store.remove(row["render_key"])
    counts = dict(cache.RENDERS)
    again = evaluate_checkpoint(_inputs(toy_base, files[1], storage, "step-00000002"))
    assert cache.renders_done() == n + 1 and cache.RENDERS["lora_trigger"] == counts["lora_trigger"] + 1
    redone = next(r for r in again.renders if r["arm"] == "lora_trigger")
    assert redone["render_cache"] == "miss" and redone["pixels_sha256"] == row["pixels_sha256"]

    # A half-written (truncated) PNG in the cache: detected, redone, valid again.
    png = store.png(row["render_key"])
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    assert store.get(row["render_key"]) is None and not png.exists()  # invalid entries are removed
    png_sidecar_key = row["render_key"]
    evaluate_checkpoint(_inputs(toy_base, files[1], storage, "step-00000002"))
    assert cache.renders_done() == n + 2 and store.get(png_sidecar_key) is not None

    # A cache PNG whose chunk names another key is not trusted either.
    other = next(r for r in first[2].renders if r["arm"] == "lora_trigger")["render_key"]
    store.png(other).write_bytes(store.png(png_sidecar_key).read_bytes())
    assert store.get(other) is None


def test_key_covers_what_sets_the_pixels():
    from lora_pipeline.render import cache

    base = dict(base_sha256="a" * 64, lora=None, prompt="p", negative_prompt="n", seed=1, width=64, height=64,
                steps=2, guidance_scale=4.0, scheduler="PNDMScheduler", dtype="float32", device="cuda:1",
                memory_settings={"x": False}, library_versions={"torch": "2", "lora_pipeline": "0.1"})
    k = cache.render_key(cache.key_fields(**base))
    assert k == cache.render_key(cache.key_fields(**{**base, "device": "cuda:0",
                                                     "library_versions": {"torch": "2", "lora_pipeline": "0.2"}}))
    for change in ({"seed": 2}, {"prompt": "q"}, {"negative_prompt": ""}, {"steps": 3}, {"guidance_scale": 5.0},
                   {"scheduler": "DDIMScheduler"}, {"dtype": "float16"}, {"device": "cpu"}, {"width": 32},
                   {"lora": {"sha256": "b" * 64, "scale": 1.0}}, {"library_versions": {"torch": "3"}},
                   {"base_sha256": "c" * 64}):
        assert cache.render_key(cache.key_fields(**{**base, **change})) != k, change
    assert cache.render_key(cache.key_fields(**{**base, "lora": {"sha256": "b" * 64, "scale": 1.0}})) != \
        cache.render_key(cache.key_fields(**{**base, "lora": {"sha256": "b" * 64, "scale": 0.5}}))
