"""An evaluation whose every render is in the render cache, done without loading the base pipeline.

Such an evaluation (`evaluate --all` over cached renders, a backfill of old checkpoints) used to load
the base pipeline only for what the pipeline itself tells: the scheduler it runs, what the negative
prompt does and the prompt token counts (prompts.check_pipeline_prompts), and the LoRA load proof
(lora/load.py: loaded, active, changes the computation, by value). On a real base that load is most
of the time of a cached evaluation. Those answers are functions of inputs we can key on, so after a
clean pipeline run they are kept as a *proof record*, and a later evaluation with the same key replays
it: it derives every render key from the record and, only when every render is a valid cache entry
(all read before anything is taken over), writes the checkpoint's renders from the cache, takes the
record's findings and evidence (`lora_load.proof_reused` says when and by which run they were made)
and never loads the base. Anything missing (a render evicted, a record unreadable) runs the full path.

A checkpoint whose LoRA contract fails before the load (a base mismatch, an invalid file: the LoRA
arms are skipped) still needs the pipeline for its base arm's answers; its record is *base-only*
(no LoRA part) and is replayed only while the contract still fails before the load, base arm alone.
One whose LoRA loads but is not applied (LORA_NOT_APPLIED, LORA_INCOMPATIBLE: the LoRA arms are
skipped) gets a *load-failed* record: the base arm's answers and the load's findings and evidence,
replayed only while the contract holds up to the load, base arm alone. On a real base that is the
base load a backfill over old incompatible checkpoints no longer pays for each of them.

Key (sha256 of the canonical JSON): RECORD_VERSION, base model sha256, LoRA file sha256 and path,
the eval spec (prompts, negative prompt, seeds, size, steps, guidance, scheduler, LoRA scale), the
run's trigger, the captions' trigger and the file's declared one, whether the file is all zeros,
dtype, device type, memory settings, and every library version including lora_pipeline's. Bump
RECORD_VERSION when the proof or the prompt checks change what they find.

Layout: `<storage>/render-cache/proofs/<key[:2]>/<key>.json`, written whole (temporary name, then
rename). Records are untrusted input: one that does not parse or lacks a field is not used.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lora_pipeline.findings import Finding
from lora_pipeline.fsutil import atomic_write_bytes
from lora_pipeline.render import compare, contract, documents
from lora_pipeline.render.pipeline import MEMORY_SETTINGS
from lora_pipeline.render.spec import ARMS, LORA_ARMS

RECORD_VERSION = 3  # 2: records of two kinds (full, base_only); 3: and load_failed
KINDS = ("full", "base_only", "load_failed")
PROOFS_DIR = "proofs"  # under the render cache


def record_key(ev: Any, report: Any) -> str:
    inp = ev.inp
    fields = {"record_version": RECORD_VERSION, "base_sha256": ev.base_identity["sha256"],
              "lora_sha256": report.sha256, "lora_path": str(inp.checkpoint.path), "spec": inp.spec.to_dict(),
              "trigger": inp.facts.trigger, "caption_trigger": inp.facts.caption_trigger,
              "metadata_trigger": report.declared.get("trigger"), "all_zero": bool(report.all_zero),
              "dtype": inp.dtype, "device_type": inp.device.split(":")[0], "memory_settings": MEMORY_SETTINGS,
              "library_versions": ev.versions}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=True, default=str).encode()).hexdigest()


def record_path(ev: Any, key: str) -> Path:
    return ev.cache.root / PROOFS_DIR / key[:2] / f"{key}.json"


def save(ev: Any, report: Any, outcome: Any | None, prompt_findings: list[Finding], skip_reason: str = "") -> None:
    """Keep what the pipeline told this evaluation, after its base arm: the LoRA's load proof (`outcome`),
    applied (a full record) or not (load-failed: the LoRA arms skipped for `skip_reason`), or, with
    `outcome` None, nothing of the LoRA (base-only: its contract failed before the load)."""
    if ev.cache is None or report is None:
        return
    key = record_key(ev, report)
    kind = "base_only" if outcome is None else "full" if outcome.applied else "load_failed"
    record = {"record_version": RECORD_VERSION, "key": key, "kind": kind,
              "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "dagster_run_id": ev.inp.dagster_run_id, "scheduler": ev.scheduler,
              "sampler_a1111": ev.sampler_a1111, "guidance": ev.guidance,
              "token_counts": [[pi, trig, counts] for (pi, trig), counts in sorted(ev.token_counts.items())],
              "prompt_findings": [f.to_dict() for f in prompt_findings]}
    if outcome is not None:
        record.update({"lora_findings": [f.to_dict() for f in outcome.findings], "lora_evidence": outcome.evidence,
                       "lora_timings": outcome.timings, "adapter_name": ev.lora_facts.get("adapter_name")})
        record.update({"lora_applied": documents.lora_applied(outcome)} if outcome.applied else
                      {"skip_reason": skip_reason})
    with contextlib.suppress(OSError):  # best effort: without a record the next evaluation loads the base
        atomic_write_bytes(record_path(ev, key), (json.dumps(record, indent=1, default=str) + "\n").encode(),
                           sync=False)


def _load(ev: Any, key: str) -> dict[str, Any] | None:
    try:
        record = json.loads(record_path(ev, key).read_text("utf-8"))
        kind = record.get("kind")
        loaded = kind in ("full", "load_failed")  # the LoRA was loaded: its proof is in the record
        ok = (record.get("key") == key and record.get("record_version") == RECORD_VERSION
              and kind in KINDS and isinstance(record.get("scheduler"), str)
              and all(isinstance(record.get(k), list) for k in ("token_counts", "prompt_findings"))
              and (not loaded or (isinstance(record.get("lora_findings"), list)
                                  and isinstance(record.get("lora_evidence"), dict)
                                  and isinstance(record.get("adapter_name"), str)))
              and (kind != "full" or isinstance(record.get("lora_applied"), dict))
              and (kind != "load_failed" or isinstance(record.get("skip_reason"), str)))
        if ok:
            record["token_counts"] = {(int(pi), bool(t)): dict(c) for pi, t, c in record["token_counts"]}
            record["prompt"] = [Finding.from_dict(d) for d in record["prompt_findings"]]
            record["findings"] = record["prompt"] + [Finding.from_dict(d)
                                                     for d in (record["lora_findings"] if loaded else [])]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return record if ok else None


def replayed(ev: Any, report: Any) -> bool:
    """Evaluate `ev` from its proof record and the render cache, without the pipeline; False (nothing
    changed in `ev`) when there is no usable record, the record's path is not the one these inputs take
    (LoRA contract failed or not), or any render is not in the cache."""
    if ev.cache is None or report is None or ev.lora_facts is None:
        return False
    key = record_key(ev, report)
    record = _load(ev, key)
    if record is None:
        return False
    kind = record["kind"]
    base_only, full = kind == "base_only", kind == "full"
    # The contract as it stands before the LoRA load decides the path; the record must be of that path.
    failed = contract.lora_contract_errors(ev.findings + record["prompt"])
    if base_only != bool(failed):
        return False
    inp = ev.inp
    # The adapter the proof was made with (the manifest names the adapter that carried the LoRA).
    lora = {**ev.lora_facts, "adapter_name": record["adapter_name"], **record["lora_applied"]} if full else None
    planned = []
    for arm, (pi, template), seed in itertools.product(ARMS if full else ("base",), enumerate(inp.spec.prompts),
                                                       inp.spec.seeds):
        req = ev.request(arm, pi, template, seed)
        arm_lora = None if arm == "base" else lora
        _fields, render_key, hit = ev.cached(req, arm_lora, record["scheduler"])
        if hit is None:
            return False
        planned.append((req, template, arm_lora, render_key, hit))
    # Every render is there: take the record over, then write the checkpoint's renders from the cache.
    ev.scheduler, ev.sampler_a1111, ev.guidance = record["scheduler"], record.get("sampler_a1111"), record.get("guidance")
    ev.token_counts = record["token_counts"]
    for f in record["findings"]:
        f.subject = ev.subject
    ev.findings += record["findings"]
    ev.load_timings = {"pipeline_load": "skipped", "pipeline_load_s": 0.0}
    made = f"record {key[:12]} (made {record.get('created_at')}) reused: base pipeline not loaded"
    if base_only:
        ev.log(f"every base render cached and {made} (the LoRA contract failed, so the LoRA is not loaded either)")
    else:
        ev.lora_facts = lora if full else {**ev.lora_facts, "adapter_name": record["adapter_name"]}
        ev.doc["lora_load"] = {**record["lora_evidence"], "proof_reused": {
            "created_at": record.get("created_at"), "dagster_run_id": record.get("dagster_run_id"), "record": key,
            "timings": record.get("lora_timings")}}
        ev.log(f"every render cached and LoRA proof {made}" if full else
               f"every base render cached and LoRA load {made} (the LoRA was not applied: {record['skip_reason']})")
    for req, template, arm_lora, render_key, hit in planned:
        ev.keep_hit(req, template, arm_lora, render_key, hit)
    ev.doc["determinism"] = compare.determinism_reused(inp.spec.seeds[0])
    if base_only:  # as the full path does after the base arm
        ev._skip(LORA_ARMS, "LoRA contract failed: " + ", ".join(sorted(failed)))
    elif not full:  # as the full path does after a load that did not apply
        ev._skip(LORA_ARMS, record["skip_reason"])
    return True
