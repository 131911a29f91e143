"""Renders of a clean checkpoint (trained by the real toy trainer): all arms, pixels differ, PNG chunks
parse back to the sidecar, identical inputs give identical bytes; the operational contract (OOM in
decode, stale heartbeat, host OOM class, warm-up) and the comparison/provenance checks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from lora_pipeline.render import compare, infotext, manifest, ops


def _ckpt(run, step):
    return next(run.rglob(f"*-step{step:08d}.safetensors"))


def _strip_manifest_chunk(data: bytes) -> bytes:
    """The PNG without its `lora_pipeline` tEXt chunk (the one that holds timings and run ids)."""
    out, pos = bytearray(data[:8]), 8
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if not (kind in (b"tEXt", b"iTXt") and body.startswith(manifest.MANIFEST_CHUNK.encode() + b"\0")):
            out += data[pos:pos + 12 + n]
        pos += 12 + n
    return bytes(out)


@pytest.mark.parametrize("fmt", ["native", "kohya"])
def test_clean_trained_checkpoint(fmt, native_run, kohya_run, toy_base, run_eval, facts_maker, tmp_path):
    run = native_run if fmt == "native" else kohya_run
    facts = facts_maker(toy_base, "sd1", alpha=8.0 if fmt == "native" else 2.0)
    r = run_eval(toy_base, "sd1", _ckpt(run, 6), tmp_path / "a", facts=facts)
    assert r.verdict == "ok", [(f.code, f.message) for f in r.findings]
    assert {x["arm"] for x in r.renders} == {"base", "lora_no_trigger", "lora_trigger"}
    out = tmp_path / "a"
    base = np.asarray(Image.open(out / "base" / "0-11.png"))
    lora = np.asarray(Image.open(out / "lora_trigger" / "0-11.png"))
    assert np.abs(base.astype(int) - lora.astype(int)).mean() > 0.1  # the LoRA changes the image
    for x in r.renders:
        png = out / x["path"]
        chunks = manifest.read_png_chunks(png)
        side = json.loads((out / x["manifest"]).read_text())
        assert chunks["lora_pipeline"] == side
        info = infotext.parse_infotext(chunks["parameters"])
        assert info["prompt"] == side["prompt"] and info["negative_prompt"] == side["negative_prompt"]
        p = info["params"]
        assert (p["Steps"], p["Seed"], p["Size"]) == (str(side["steps"]), str(side["seed"]), "64x64")
        assert p["Model hash"] == side["base_model"]["sha256"][:10] and p["Sampler"] == "DDIM"
        if side["arm"] != "base":
            data = _ckpt(run, 6).read_bytes()
            addnet = hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()[:12]
            assert p["Lora hashes"] == f"{_ckpt(run, 6).stem}: {addnet}" == f"{_ckpt(run, 6).stem}: {side['lora']['short_hash']}"
            assert side["lora"]["alpha_source"] == ("lora_adapter_metadata" if fmt == "native" else "tensor")
        assert side["phase_timings"]["denoise_s"] > 0 and len(side["phase_timings"]["step_s"]) == 2
        assert "pipeline_load" in side["phase_timings"] and "decode_s" in side["phase_timings"]
    assert manifest.validate_manifests([json.loads((out / x["manifest"]).read_text()) for x in r.renders], "s") == []
    assert not list((out / ops.HEARTBEAT_DIR).glob("*.json"))
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["verdict"] == "ok" and len(doc["renders"]) == 3 and doc["determinism"]["max_abs"] == 0

    # Same inputs twice: identical pixels and identical files but for the manifest chunk's volatile facts.
    r2 = run_eval(toy_base, "sd1", _ckpt(run, 6), tmp_path / "b", facts=facts)
    for x in r2.renders:
        a, b = (tmp_path / "a" / x["path"]).read_bytes(), (tmp_path / "b" / x["path"]).read_bytes()
        assert _strip_manifest_chunk(a) == _strip_manifest_chunk(b)
    assert [x["pixels_sha256"] for x in r.renders] == [x["pixels_sha256"] for x in r2.renders]


def test_oom_in_decode_is_reported_with_its_phase_and_not_retried(toy_base, lora_maker, run_eval, tmp_path):
    import torch

    from lora_pipeline.render.contract import base_identity
    from lora_pipeline.render.pipeline import get_pipeline

    lora = lora_maker(toy_base, tmp_path / "clean.safetensors")
    entry, _ = get_pipeline(toy_base, base_identity(toy_base), "sd1", "float32", "cpu")
    calls = []

    def oom(_module, _args):
        calls.append(1)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated in the VAE decoder)")

    handle = entry.pipe.vae.decoder.register_forward_pre_hook(oom)
    try:
        r = run_eval(toy_base, "sd1", lora, tmp_path / "out")
    finally:
        handle.remove()
    ooms = [f for f in r.findings if f.code == "OPERATIONAL.OOM"]
    assert ooms and all(f.evidence["phase"] == "decode" and f.evidence["memory"] == "device" for f in ooms)
    assert len(calls) == len(ooms) == 3  # one attempt per image: never retried at lower settings
    assert "COMPARISON.ARM_MISSING" in r.codes() and r.renders == []
    assert not list((tmp_path / "out" / ops.HEARTBEAT_DIR).glob("*.json"))


def test_other_errors_and_host_oom_are_classified():
    assert ops.classify_error(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8")) \
        == "host_oom"
    assert ops.classify_error(MemoryError()) == "host_oom"
    f = ops.error_finding(ValueError("boom"), "encode", "s", {})
    assert f.code == "OPERATIONAL.RENDER_FAILED" and f.evidence["phase"] == "encode"


def test_stale_heartbeat_is_worker_lost(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    hb_dir = tmp_path / ops.HEARTBEAT_DIR
    hb_dir.mkdir()
    old = time.time() - 3600
    (hb_dir / "lora_trigger__0-11.json").write_text(json.dumps(
        {"pid": dead.pid, "host": os.uname().nodename, "updated": old, "phase": "denoise", "step": 3,
         "output": str(tmp_path / "lora_trigger" / "0-11.png")}))
    (hb_dir / "base__0-11.json").write_text(json.dumps(  # alive: not lost
        {"pid": os.getpid(), "host": os.uname().nodename, "updated": old, "phase": "denoise",
         "output": str(tmp_path / "base" / "0-11.png")}))
    found = ops.scan_heartbeats(tmp_path, "s")
    assert [f.code for f in found] == ["OPERATIONAL.WORKER_LOST"]
    assert found[0].evidence["phase"] == "denoise" and found[0].evidence["pid"] == dead.pid
    assert not (hb_dir / "lora_trigger__0-11.json").exists() and (hb_dir / "base__0-11.json").exists()


def test_stale_heartbeat_seen_by_the_next_evaluation(toy_base, lora_maker, run_eval, tmp_path):
    out = tmp_path / "out"
    (out / ops.HEARTBEAT_DIR).mkdir(parents=True)
    (out / ops.HEARTBEAT_DIR / "base__0-11.json").write_text(json.dumps(
        {"pid": 999999, "host": "elsewhere", "updated": 0, "phase": "decode", "output": str(out / "base/0-11.png")}))
    r = run_eval(toy_base, "sd1", lora_maker(toy_base, tmp_path / "clean.safetensors"), out)
    lost = next(f for f in r.findings if f.code == "OPERATIONAL.WORKER_LOST")
    assert lost.evidence["recovered"] is True and lost.severity == "info"  # redone here: history, not a fault


def test_provenance_uncontrolled_and_nondeterminism_checks(toy_base, native_run, run_eval, facts_maker, tmp_path,
                                                          spec_maker):
    r = run_eval(toy_base, "sd1", _ckpt(native_run, 3), tmp_path / "out")
    ms = [json.loads((tmp_path / "out" / x["manifest"]).read_text()) for x in r.renders]
    broken = [dict(m) for m in ms]
    del broken[0]["seed"]
    broken[1]["base_model"] = dict(broken[1]["base_model"], sha256=None)
    f = manifest.validate_manifests(broken, "s")
    assert [x.code for x in f] == ["PROVENANCE.INCOMPLETE"] and any("seed" in p for p in f[0].evidence["problems"])
    changed = [dict(m) for m in ms]
    changed[2]["steps"] = 1
    spec = spec_maker()
    u = compare.uncontrolled(spec, changed, "sks_chair", "s")
    assert [x.code for x in u] == ["COMPARISON.UNCONTROLLED"] and "steps" in u[0].evidence["differs"]
    assert compare.uncontrolled(spec, ms, "sks_chair", "s") == []
    a = Image.new("RGB", (8, 8), (10, 10, 10))
    b = Image.new("RGB", (8, 8), (40, 10, 10))
    assert [x.code for x in compare.nondeterministic(compare.pixel_diff(a, b), {}, "s")] == \
        ["COMPARISON.NONDETERMINISTIC"]
    assert compare.nondeterministic(compare.pixel_diff(a, a), {}, "s") == []
    assert [x.code for x in ops.slow_warmup(3.0, [0.1, 0.1, 0.2], "s")] == ["OPERATIONAL.SLOW_WARMUP"]


def test_arm_prompts_follow_the_contract():
    from lora_pipeline.render.prompts import arm_prompt

    assert arm_prompt("a photo of {trigger}, on a table", "sks", True) == "a photo of sks, on a table"
    assert arm_prompt("a photo of {trigger}, on a table", "sks", False) == "a photo of, on a table"
    assert arm_prompt("{trigger} in a living room", "sks", False) == "in a living room"
    assert arm_prompt("a chair", "sks", True) == "sks, a chair"
    assert arm_prompt("a chair", "sks", False) == "a chair"


def test_determinism_reference_is_per_resolved_prompt(toy_base, native_run, run_eval, facts_maker, tmp_path):
    """Two runs with different triggers in one process render different base prompts: the second must
    not be compared with the first one's reference (a false COMPARISON.NONDETERMINISTIC)."""
    from lora_pipeline.render.pipeline import clear_cache

    clear_cache()
    ck = _ckpt(native_run, 3)
    first = run_eval(toy_base, "sd1", ck, tmp_path / "a")
    other = run_eval(toy_base, "sd1", ck, tmp_path / "b",
                     facts=facts_maker(toy_base, "sd1", trigger="ohwx", caption_trigger="ohwx"))
    again = run_eval(toy_base, "sd1", ck, tmp_path / "c")
    for r in (first, other, again):
        assert "COMPARISON.NONDETERMINISTIC" not in r.codes(), r.document.get("determinism")
        assert r.document["determinism"]["max_abs"] == 0
