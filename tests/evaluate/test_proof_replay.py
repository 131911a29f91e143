"""An evaluation whose renders are all cached replays its LoRA proof record (render/replay.py) and never
loads the base pipeline; the document it writes is the one the full path writes, apart from saying so.
A missing render, a changed trigger or a damaged record sends it down the full path."""

from __future__ import annotations

import json
from pathlib import Path

from tests.evaluate.test_render_cache import _files, _inputs

# Timings, file hashes (the PNG chunk holds the timings), the replay note, and the adapter names a
# process numbers in sequence (the replay names the adapter its record was proven with).
VOLATILE = {"pipeline_load", "pipeline_load_s", "lora_load_s", "lora_verify_s", "timings", "save_s", "sha256",
            "proof_reused", "created_at", "adapter_name", "active_adapters"}


def _stable(doc):
    """The document without VOLATILE keys."""
    if isinstance(doc, dict):
        return {k: _stable(v) for k, v in doc.items() if k not in VOLATILE}
    if isinstance(doc, list):
        return [_stable(v) for v in doc]
    return doc


def _evaluate(toy_base, lora: Path, storage: Path, **facts_changes):
    import dataclasses

    from lora_pipeline.render.evaluate import evaluate_checkpoint

    inp = _inputs(toy_base, lora, storage, "step-00000002")
    if facts_changes:
        inp = dataclasses.replace(inp, facts=dataclasses.replace(inp.facts, **facts_changes))
    return evaluate_checkpoint(inp)


def _loads_and_renders(fn):
    """(base pipeline loads, renders) done by `fn()`, on a process with no pipeline in memory."""
    from lora_pipeline.render import cache
    from lora_pipeline.render.pipeline import BASE_LOADS, clear_cache

    clear_cache()
    loads, renders = BASE_LOADS["count"], cache.renders_done()
    result = fn()
    return result, BASE_LOADS["count"] - loads, cache.renders_done() - renders


def test_all_cached_evaluation_replays_the_proof_without_loading_the_base(toy_base, three_checkpoint_run, tmp_path):
    storage, lora = tmp_path / "storage", _files(three_checkpoint_run)[0]
    first, loads, renders = _loads_and_renders(lambda: _evaluate(toy_base, lora, storage))
    assert (loads, renders) == (1, 4), "base + determinism + 2 LoRA arms"
    assert first.document["provenance"]["runtime"]["pipeline_load"] == "cold"
    assert "proof_reused" not in first.document["lora_load"]
    records = list((storage / "render-cache" / "proofs").rglob("*.json"))
    assert len(records) == 1

    second, loads, renders = _loads_and_renders(lambda: _evaluate(toy_base, lora, storage))
    assert (loads, renders) == (0, 0), "every render cached and the proof recorded: the base is not loaded"
    doc = second.document
    assert doc["provenance"]["runtime"]["pipeline_load"] == "skipped"
    reused = doc["lora_load"]["proof_reused"]
    assert reused["record"] == records[0].stem and reused["created_at"]
    from lora_pipeline.report.checkpoint_html import _proof  # the report page says where the proof comes from

    assert _proof(doc["lora_load"]).startswith("reused: proven") and _proof(first.document["lora_load"]) == \
        "made in this evaluation"
    assert second.verdict == first.verdict == "ok", [f.code for f in second.findings]
    assert doc["render_counts"] == {"rendered": 0, "reused": 3}
    for row in doc["renders"]:  # each checkpoint copy carries the full manifest, adapter named
        m = json.loads((second.path.parent / row["path"]).with_suffix(".json").read_text())
        assert m["render_cache"] == "hit" and m["phase_timings"]["pipeline_load"] == "skipped"
        if row["arm"] != "base":
            assert m["lora"]["adapter_name"] == first.document["provenance"]["lora"]["adapter_name"]
    # The full path on the same cache (record removed) writes the same document, timings aside.
    records[0].unlink()
    third, loads, _ = _loads_and_renders(lambda: _evaluate(toy_base, lora, storage))
    assert loads == 1 and "proof_reused" not in third.document["lora_load"]
    assert _stable(doc) == _stable(third.document)


def test_missing_render_changed_trigger_or_damaged_record_take_the_full_path(toy_base, three_checkpoint_run,
                                                                             tmp_path):
    from lora_pipeline.render import cache

    storage, lora = tmp_path / "storage", _files(three_checkpoint_run)[1]
    first = _evaluate(toy_base, lora, storage)
    # One LoRA render evicted from the cache: the pipeline is loaded and that render alone is redone.
    key = next(r["render_key"] for r in first.renders if r["arm"] == "lora_trigger")
    cache.RenderCache(storage / cache.CACHE_DIR).remove(key)
    again, loads, renders = _loads_and_renders(lambda: _evaluate(toy_base, lora, storage))
    assert (loads, renders) == (1, 1) and "proof_reused" not in again.document["lora_load"]

    # Another trigger is another record: not replayed (and its renders are new).
    other, loads, _ = _loads_and_renders(lambda: _evaluate(toy_base, lora, storage, trigger="zq_chair"))
    assert loads == 1 and "proof_reused" not in other.document["lora_load"]

    # A damaged record (untrusted input) is not used; the full path writes a good one again.
    for record in (storage / "render-cache" / "proofs").rglob("*.json"):
        record.write_text('{"record_version": 1, "key": "' + record.stem + '", "scheduler": 7}')
    damaged, loads, renders = _loads_and_renders(lambda: _evaluate(toy_base, lora, storage))
    assert (loads, renders) == (1, 0) and damaged.verdict == first.verdict
    assert "proof_reused" not in damaged.document["lora_load"]
    replayed, loads, _ = _loads_and_renders(lambda: _evaluate(toy_base, lora, storage))
    assert loads == 0 and "proof_reused" in replayed.document["lora_load"]


def test_lora_contract_failure_replays_a_base_only_record(toy_base, three_checkpoint_run, tmp_path):
    """A checkpoint whose LoRA contract fails before the load (here the run declares another base) gets
    a base-only record: cached, it is evaluated without loading the base, to the document the full path
    writes; once the contract holds again, that record is not used (the LoRA must be loaded)."""
    from lora_pipeline.render.spec import DeclaredBase

    storage, lora = tmp_path / "storage", _files(three_checkpoint_run)[2]
    other = DeclaredBase("toy-sd1", str(toy_base), "0" * 64, "sd1")
    first, loads, renders = _loads_and_renders(lambda: _evaluate(toy_base, lora, storage, base=other))
    assert (loads, renders) == (1, 2), "base arm + determinism; the LoRA arms skipped"
    assert "RUNTIME.BASE_MODEL_MISMATCH" in first.codes() and len(first.skipped) == 2
    records = list((storage / "render-cache" / "proofs").rglob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["kind"] == "base_only"

    second, loads, renders = _loads_and_renders(lambda: _evaluate(toy_base, lora, storage, base=other))
    assert (loads, renders) == (0, 0), "every base render cached: the base is not loaded"
    assert second.document["provenance"]["runtime"]["pipeline_load"] == "skipped"
    assert second.skipped == first.skipped and second.verdict == first.verdict
    records[0].unlink()  # the full path on the same cache writes the same document
    third, loads, _ = _loads_and_renders(lambda: _evaluate(toy_base, lora, storage, base=other))
    assert loads == 1 and _stable(second.document) == _stable(third.document)

    # The contract holds again (the run's declared base is the evaluated one): the base-only record
    # does not fit; the full path loads the base and the LoRA.
    fixed, loads, renders = _loads_and_renders(lambda: _evaluate(toy_base, lora, storage))
    assert loads == 1 and renders == 2 and not fixed.skipped
    assert fixed.document["lora_load"].get("loaded_tensors")


def _renamed(src: Path, out: Path, share: float) -> Path:
    """`src` with the first `share` of its modules' keys under a prefix no loader maps ("diffusion_model."
    instead of "unet."): 1.0 loads nothing (LORA_NOT_APPLIED), 0.5 lands half (LORA_PARTIAL)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        meta, keys = f.metadata(), sorted(f.keys())
        modules = sorted({k.rsplit(".lora.", 1)[0] for k in keys})
        moved = set(modules[: round(len(modules) * share)])
        tensors = {(k.replace("unet.", "diffusion_model.", 1) if k.rsplit(".lora.", 1)[0] in moved else k): f.get_tensor(k)
                   for k in keys}
    save_file(tensors, str(out), metadata=meta)
    return out


def test_lora_loaded_but_not_applied_replays_a_load_failed_record(toy_base, three_checkpoint_run, tmp_path):
    """A LoRA that loads but lands nowhere (LORA_NOT_APPLIED: the LoRA arms skipped) gets a load-failed
    record: cached, it is evaluated without loading the base, to the document the full path writes,
    the load's findings and evidence included."""
    storage = tmp_path / "storage"
    lora = _renamed(_files(three_checkpoint_run)[1], tmp_path / "prefix.safetensors", 1.0)
    first, loads, renders = _loads_and_renders(lambda: _evaluate(toy_base, lora, storage))
    assert "RUNTIME.LORA_NOT_APPLIED" in first.codes(), [(f.code, f.message) for f in first.findings]
    assert (loads, renders) == (1, 2), "base arm + determinism; the LoRA arms skipped after the load"
    assert {s["arm"] for s in first.skipped} == {"lora_no_trigger", "lora_trigger"}
    records = list((storage / "render-cache" / "proofs").rglob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["kind"] == "load_failed"

    second, loads, renders = _loads_and_renders(lambda: _evaluate(toy_base, lora, storage))
    assert (loads, renders) == (0, 0), "every base render cached and the load recorded: the base is not loaded"
    doc = second.document
    assert doc["provenance"]["runtime"]["pipeline_load"] == "skipped"
    assert doc["lora_load"]["proof_reused"]["record"] == records[0].stem
    assert second.skipped == first.skipped and second.verdict == first.verdict == "evaluation_invalid"
    assert second.codes() == first.codes()
    records[0].unlink()  # the full path on the same cache writes the same document
    third, loads, _ = _loads_and_renders(lambda: _evaluate(toy_base, lora, storage))
    assert loads == 1 and _stable(second.document) == _stable(third.document)


def test_partially_applied_lora_replays_its_record_with_every_arm(toy_base, three_checkpoint_run, tmp_path):
    """A LoRA half of whose modules land (LORA_PARTIAL: rendered, marked partial) replays its full record:
    the contract check before the load decides the path, not the partial finding the load made."""
    storage = tmp_path / "storage"
    lora = _renamed(_files(three_checkpoint_run)[1], tmp_path / "half.safetensors", 0.5)
    first, loads, renders = _loads_and_renders(lambda: _evaluate(toy_base, lora, storage))
    assert "RUNTIME.LORA_PARTIAL" in first.codes() and not first.skipped
    assert (loads, renders) == (1, 4)
    second, loads, renders = _loads_and_renders(lambda: _evaluate(toy_base, lora, storage))
    assert (loads, renders) == (0, 0)
    assert second.document["provenance"]["lora"]["applied"] == "partial"
    records = list((storage / "render-cache" / "proofs").rglob("*.json"))
    records[0].unlink()
    third, loads, _ = _loads_and_renders(lambda: _evaluate(toy_base, lora, storage))
    assert loads == 1 and _stable(second.document) == _stable(third.document)
