"""One checkpoint evaluation, end to end: contract checks, base arm, LoRA load + proof, LoRA arms,
comparison and provenance checks, quality signals, then `evaluation.json` in the checkpoint's renders dir.

With `storage_root` set, every render goes through the render cache (render/cache.py): a valid cached
render with the same key is reused (no pipeline call), so the base arm is rendered once per base,
spec and trigger and an unchanged re-evaluation renders nothing; the checkpoint's own
`<arm>/<prompt>-<seed>.png` (+ sidecar) is always written fresh from the cached pixels with this
checkpoint's manifest. A `call_hook` (which may change the call) bypasses the cache.

`evaluation.json` (schema_version 1; the reports layer turns it into report.json):
    {schema_version, run_id, checkpoint_id, step, verdict, findings [Finding.to_dict()],
     provenance {base_model, lora, trigger, eval, runtime {device, dtype, memory_settings,
                 library_versions, pipeline_load (cold|warm|skipped: render/replay.py), pipeline_load_s},
                 dataset_snapshot, dagster_run_id},
     renders [{path (relative to the renders dir), manifest (sidecar path), arm, prompt_index, prompt,
               negative_prompt, seed, width, height, steps, guidance_scale, scheduler, token_counts,
               sha256 (file), pixels_sha256, save_s, render_key, render_cache (hit|miss|null)}],
     skipped [{arm, prompt_index, seed, reason}], lora_load {evidence of lora/load.py},
     determinism {reference, max_abs, mean_abs, tolerance} or {reference, skipped}, metrics
     {base_vs_lora_trigger_mean_abs, lora_trigger_vs_no_trigger_mean_abs}, quality (see
     lora_pipeline/quality/checkpoint.py and docs/quality.md), timings {render_s per render name},
     render_keys [sorted], data_version (sha256 of the sorted keys), render_counts {rendered, reused}}
Written last and atomically: a crashed evaluation leaves no evaluation.json (and a stale heartbeat).
"""

from __future__ import annotations

import itertools
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_pipeline.findings import Finding, verdict
from lora_pipeline.fsutil import atomic_write_json
from lora_pipeline.render import cache, compare, contract, documents, infotext, manifest, ops, prompts, replay
from lora_pipeline.render.families import set_scheduler
from lora_pipeline.render.log_batch import BatchedLog
from lora_pipeline.render.pipeline import CachedPipeline, cached_keys, discard, get_pipeline
from lora_pipeline.render.render_one import RenderRequest, render_image, settings_changed
from lora_pipeline.render.spec import ARMS, LORA_ARMS, BaseChoice, CheckpointInput, EvalSpec, RunFacts

EVALUATION_FILE = "evaluation.json"
SLOW_S = 5.0  # a render phase this long is logged as it ends; denoise progress at most this often
_ADAPTER_SEQ = itertools.count(1)


@dataclass
class EvaluationInputs:
    facts: RunFacts
    spec: EvalSpec
    base: BaseChoice | None
    checkpoint: CheckpointInput
    out_dir: Path
    device: str = "cpu"
    dtype: str = "float32"
    dagster_run_id: str | None = None
    storage_root: Path | None = None  # set: render cache under it, memorization against its snapshots
    clip_model: Path | None = None  # a local CLIP folder: text-image scores in the quality section
    quality_thresholds: dict[str, float] | None = None  # None: lora_pipeline.quality.DEFAULTS


@dataclass
class EvaluationResult:
    path: Path
    verdict: str
    findings: list[Finding] = field(default_factory=list)
    renders: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    document: dict[str, Any] = field(default_factory=dict)
    pipeline_cold: bool | None = None
    render_keys: list[str] = field(default_factory=list)

    @property
    def data_version(self) -> str:
        """Follows the render cache keys (sorted); the verdict-bearing document is derived from them."""
        return cache.keys_digest(self.render_keys)

    def codes(self) -> set[str]:
        return {f.code for f in self.findings}


def _clear_outputs(out_dir: Path) -> None:
    (out_dir / EVALUATION_FILE).unlink(missing_ok=True)
    for arm in ARMS:
        shutil.rmtree(out_dir / arm, ignore_errors=True)


class _Evaluation:
    """State of one evaluation; `run()` does the work in order."""

    def __init__(self, inp: EvaluationInputs, log: Callable[[str], None],
                 call_hook: Callable[[dict], dict] | None) -> None:
        self.inp, self.call_hook = inp, call_hook
        # Lines batched into few log messages (each one an event-log write in Dagster, render/log_batch.py);
        # a caller's BatchedLog is used as it is (the caller flushes it).
        self.own_log = not isinstance(log, BatchedLog)
        self.log = BatchedLog(log, every_s=SLOW_S) if self.own_log else log
        self.subject = f"{inp.facts.run_id}/{inp.facts.checkpoint_id}"
        self.findings: list[Finding] = []
        self.manifests: list[dict[str, Any]] = []
        self.renders: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.reasons: dict[tuple, str] = {}
        self.images: dict[tuple, Any] = {}
        self.render_s: dict[str, float] = {}
        self.doc: dict[str, Any] = {"lora_load": {}, "determinism": {}, "metrics": {}}
        self.base_identity: dict[str, Any] = {}
        self.lora_facts: dict[str, Any] | None = None
        self.entry: CachedPipeline | None = None
        self.cold: bool | None = None
        self.versions = manifest.library_versions()
        self.load_timings: dict[str, Any] = {}
        self.first_call_here = False
        self.scheduler = ""
        self.sampler_a1111: dict[str, Any] | None = None
        self.guidance: dict[str, Any] | None = None  # families.guidance: what guidance and negative prompt do
        self.token_counts: dict[tuple, dict] = {}
        self.prompt_findings: list[Finding] = []  # check_pipeline_prompts' findings, for the proof record
        self.cache = cache.RenderCache(inp.storage_root / cache.CACHE_DIR) \
            if inp.storage_root is not None and call_hook is None else None  # a hooked call may change pixels
        self.fresh: set[tuple] = set()  # (prompt_index, seed, arm) rendered here (not from the cache)
        self.keys: list[str] = []

    # -- the steps -------------------------------------------------------------------------------
    def run(self) -> EvaluationResult:
        inp = self.inp
        inp.out_dir.mkdir(parents=True, exist_ok=True)
        self.findings += ops.scan_heartbeats(inp.out_dir, self.subject)
        _clear_outputs(inp.out_dir)
        identities = inp.storage_root / cache.CACHE_DIR if inp.storage_root is not None else None
        base_findings, self.base_identity = contract.check_base(inp.facts.base, inp.base, self.subject, identities)
        self.findings += base_findings
        file_findings, report = contract.check_lora_file(inp.checkpoint.path, inp.facts, self.subject)
        self.findings += file_findings
        self.findings += contract.check_lora_family(report, self.base_identity, self.subject)
        self.findings += contract.check_resolution(inp.spec, inp.facts, self.subject)
        if report is not None:
            self.lora_facts = documents.lora_facts(inp, report)
        if self.base_identity and not replay.replayed(self, report):  # all cached: no pipeline (replay.py)
            self._with_pipeline(report)
        return self._finish()

    def _with_pipeline(self, report: Any) -> None:
        inp, b = self.inp, self.base_identity
        if (b["sha256"], inp.dtype, inp.device) not in cached_keys():
            self.log.flush()  # a cold load can take minutes: what came before is shown first
        t0 = time.perf_counter()
        try:
            self.entry, self.cold = get_pipeline(Path(b["path"]), b["sha256"], b["architecture"], inp.dtype, inp.device)
        except Exception as e:  # noqa: BLE001 - a finding, not a traceback
            self.findings.append(ops.error_finding(e, "pipeline_load", self.subject, {"base": b["path"]}))
            self._skip(ARMS, "the base pipeline could not be loaded")
            return
        self.load_timings = {"pipeline_load": "cold" if self.cold else "warm",
                             "pipeline_load_s": round(self.entry.load_s if self.cold else time.perf_counter() - t0, 6)}
        self.log(f"pipeline load {self.load_timings['pipeline_load']} "
                 f"{self.load_timings['pipeline_load_s']:.3f}s ({b['name']}, {inp.dtype}, {inp.device})")
        pipe = self.entry.pipe
        original_scheduler = pipe.scheduler
        try:
            try:
                self.scheduler = set_scheduler(pipe, inp.spec.scheduler)
                self.sampler_a1111 = infotext.a1111_sampler(pipe.scheduler)
            except ValueError as e:
                self.findings.append(ops.error_finding(e, "scheduler", self.subject, {}))
                self._skip(ARMS, str(e))
                return
            self.guidance, found, self.token_counts = prompts.check_pipeline_prompts(
                pipe, inp.spec, inp.facts, report, self.subject)
            self.findings += found
            self.prompt_findings = found
            self._render_arm_set(("base",), None)
            self._determinism()
            if failed := contract.lora_contract_errors(self.findings):
                replay.save(self, report, None, self.prompt_findings)  # a base-only record (replay.py)
                self._skip(LORA_ARMS, "LoRA contract failed: " + ", ".join(sorted(failed)))
            else:
                self._load_and_render_lora(report)
        finally:
            if self.entry.pipe is not None:
                pipe.scheduler = original_scheduler

    def _load_and_render_lora(self, report: Any) -> None:
        from lora_pipeline.lora.load import PipelineDirty, load_and_verify, unload

        inp, pipe = self.inp, self.entry.pipe
        name = f"ck_{next(_ADAPTER_SEQ):04d}_{report.sha256[:8]}"
        self.lora_facts["adapter_name"] = name
        self.log(f"LoRA load {inp.checkpoint.path.name} as adapter {name}")
        try:
            outcome = load_and_verify(pipe, inp.checkpoint.path, name, inp.spec.lora_scale, self.subject,
                                      all_zero=report.all_zero, dtype_name=inp.dtype)
        except PipelineDirty as e:
            self._dirty(e, "lora_load")
            return
        self.findings += outcome.findings
        self.doc["lora_load"] = outcome.evidence
        self.load_timings.update({k: round(v, 6) for k, v in outcome.timings.items()})
        self.log(f"LoRA load {outcome.timings.get('lora_load_s', 0):.3f}s, verify "
                 f"{outcome.timings.get('lora_verify_s', 0):.3f}s: {outcome.evidence.get('loaded_tensors')} of "
                 f"{outcome.evidence.get('file_tensors')} tensors landed, probe rel delta "
                 f"{outcome.evidence.get('probe_rel_delta')}")
        if not outcome.applied:
            reason = "LoRA contract failed: " + ", ".join(sorted({f.code for f in outcome.findings}))
            replay.save(self, report, outcome, self.prompt_findings, reason)  # a load-failed record (replay.py)
            self._skip(LORA_ARMS, reason)
            return
        self.lora_facts.update(documents.lora_applied(outcome))
        replay.save(self, report, outcome, self.prompt_findings)
        try:
            self._render_arm_set(LORA_ARMS, self.lora_facts)
        finally:
            try:
                unload(pipe)
                self.log(f"adapter {name} deleted; no adapter remains")
            except PipelineDirty as e:
                self._dirty(e, "lora_unload")

    def _dirty(self, e: Exception, phase: str) -> None:
        self.findings.append(ops.error_finding(e, phase, self.subject, {"action": "pipeline discarded"}))
        self.log(f"pipeline discarded: {e}")
        discard(self.entry)
        self._skip(LORA_ARMS, f"pipeline discarded in {phase}")

    def _skip(self, arms: tuple[str, ...], reason: str) -> None:
        for arm, pi, seed in itertools.product(arms, range(len(self.inp.spec.prompts)), self.inp.spec.seeds):
            if (pi, seed, arm) not in self.reasons:
                self.reasons[(pi, seed, arm)] = reason
                self.skipped.append({"arm": arm, "prompt_index": pi, "seed": seed, "reason": reason})

    # -- rendering -------------------------------------------------------------------------------
    def _render_arm_set(self, arms: tuple[str, ...], lora: dict[str, Any] | None) -> None:
        spec = self.inp.spec
        for arm, (pi, template), seed in itertools.product(arms, enumerate(spec.prompts), spec.seeds):
            self._render(arm, pi, template, seed, lora)

    def request(self, arm: str, pi: int, template: str, seed: int) -> RenderRequest:
        with_trigger = arm != "lora_no_trigger"
        return RenderRequest(arm, pi, seed, prompts.arm_prompt(template, self.inp.facts.trigger, with_trigger),
                             self.inp.spec.negative_prompt)

    def cached(self, req: RenderRequest, lora: dict[str, Any] | None, scheduler: str) -> tuple[dict, str, Any]:
        """(cache key fields, key, the valid cache entry or None) of one render."""
        fields = documents.cache_key_fields(self.inp, self.base_identity, req, lora, scheduler, self.versions)
        key = cache.render_key(fields)
        return fields, key, self.cache.get(key)

    def keep_hit(self, req: RenderRequest, template: str, lora: dict[str, Any] | None, key: str, hit: Any) -> Any:
        """Write the checkpoint's copy of a cached render and record it; returns its image."""
        cache.HITS[req.arm] += 1
        out = documents.output_from_entry(hit.image, hit.entry)
        self._keep(req, self._png(req), out, hit.entry.get("timings") or {}, lora, template, key, "hit", hit.encoded)
        return out.image

    def _png(self, req: RenderRequest) -> Path:
        return self.inp.out_dir / req.arm / f"{req.name}.png"

    def _render(self, arm: str, pi: int, template: str, seed: int, lora: dict[str, Any] | None,
                keep_file: bool = True) -> Any:
        req = self.request(arm, pi, template, seed)
        png = self._png(req)
        key = fields = None
        if keep_file and self.cache is not None:
            fields, key, hit = self.cached(req, lora, self.scheduler)
            if hit is not None:
                return self.keep_hit(req, template, lora, key, hit)
        got = self._render_now(req, png, keep_file)
        if got is None or not keep_file:
            return got
        out, timings = got
        encoded = None
        if key is not None:
            _entry, encoded = self.cache.put(key, out.image, documents.cache_entry(fields, out, timings))
        self._keep(req, png, out, timings, lora, template, key, "miss" if key else None, encoded)
        return out.image

    def _render_now(self, req: RenderRequest, png: Path, keep_file: bool) -> tuple[Any, dict] | Any | None:
        inp, pipe, arm, pi, seed = self.inp, self.entry.pipe, req.arm, req.prompt_index, req.seed
        label = f"{arm} {req.name}"
        # A fast render gets one line (in _keep, with its phase timings), batched with the others into
        # few event-log writes (self.log); a slow one also says each phase as it ends and its denoise
        # progress every SLOW_S (which also sends the batch), so a long warm-up is never mistaken for a stall.
        clock = ops.PhaseClock(lambda prev, new, s: prev not in ("start", "save") and s >= SLOW_S
                               and self.log(f"{label}: {prev} {s:.3f}s"))
        hb = ops.Heartbeat(inp.out_dir, f"{arm}__{req.name}", png) if keep_file else None
        said = [time.perf_counter()]

        def on_step(i: int, n: int) -> None:
            now = time.perf_counter()
            if (i == 1 and self.entry.calls == 0) or now - said[0] >= SLOW_S:  # the first render: warm-up
                said[0] = now
                self.log(f"{label}: denoise step {i}/{n}")

        t0 = time.perf_counter()
        try:
            out = render_image(pipe, inp.spec, req, clock, hb, on_step=on_step, call_hook=self.call_hook)
        except Exception as e:  # noqa: BLE001 - classified into a finding with its phase
            phase = clock.phase
            if hb:
                hb.done()
            where = {"arm": arm, "prompt_index": pi, "seed": seed}
            self.findings.append(ops.error_finding(e, phase, self.subject, where))
            self.reasons[(pi, seed, arm)] = reason = f"{type(e).__name__} in {phase}"
            self.skipped.append({**where, "reason": reason})
            self.log(f"{label}: FAILED in {phase}: {type(e).__name__}")
            if ops.classify_error(e) != "failed":
                from lora_pipeline.render.pipeline import empty_device_cache

                empty_device_cache()
            return None
        cache.count_render(arm if keep_file else "determinism")
        timings = clock.stop()
        self.entry.calls += 1
        if self.entry.calls == 1:
            self.entry.first_call_s = time.perf_counter() - t0
            self.first_call_here = True
        self.render_s[f"{arm}/{req.name}"] = round(time.perf_counter() - t0, 6)
        if hb:
            hb.done()
        if not keep_file:
            return out.image
        self.fresh.add((pi, seed, arm))
        return out, timings

    def _keep(self, req: RenderRequest, png: Path, out: Any, timings: dict[str, float], lora: dict[str, Any] | None,
              template: str, key: str | None, cache_state: str | None, encoded: bytes | None = None) -> None:
        """Check the settings, write the checkpoint's copy (PNG with both chunks + sidecar), record it."""
        inp, arm, pi, seed = self.inp, req.arm, req.prompt_index, req.seed
        self.findings += settings_changed(inp.spec, req, out, self.scheduler, self.subject)
        m = documents.render_manifest(inp, self.base_identity, req, out, timings, lora, template, self.load_timings,
                                      self.token_counts, self.scheduler, self.versions)
        m["sampler_a1111"], m["guidance"] = self.sampler_a1111, self.guidance
        if key is not None:
            m.update(render_key=key, render_cache=cache_state)
        ts = time.perf_counter()
        manifest.write_render(png, out.image, m, encoded=encoded or None)
        save_s = time.perf_counter() - ts
        phases = ", ".join(f"{k} {v:.3f}s" for k, v in timings.items())
        how = f"render cache hit {key[:12]}" if cache_state == "hit" and key else phases
        self.log(f"{arm} {req.name}: {how}, save {save_s:.3f}s -> {png.relative_to(inp.out_dir)}")
        self.manifests.append(m)
        self.images[(pi, seed, arm)] = out.image
        if key is not None:
            self.keys.append(key)
        self.renders.append(documents.render_row(png, inp.out_dir, m, out, save_s, key, cache_state))

    def _determinism(self) -> None:
        """Re-render one base image once per (base, spec, resolved prompt) in this process; later
        checkpoints compare their first base image with that reference."""
        spec = self.inp.spec
        first = self.images.get((0, spec.seeds[0], "base"))
        if first is None:
            return
        if (0, spec.seeds[0], "base") not in self.fresh:
            self.doc["determinism"] = compare.determinism_reused(spec.seeds[0])
            return
        # The reference is per resolved prompt, not per spec: runs with another trigger render another
        # base prompt, and comparing it with this one would report a false NONDETERMINISTIC.
        req = self.request("base", 0, spec.prompts[0], spec.seeds[0])
        key = f"determinism:{spec.digest}:{req.prompt}\0{req.negative_prompt}"
        ref = self.entry.checks.get(key)
        if ref is None:
            again = self._render("base", 0, spec.prompts[0], spec.seeds[0], None, keep_file=False)
            if again is None:
                return
            self.entry.checks[key] = ref = first
            first = again
        self.doc["determinism"], found = compare.determinism(ref, first, spec.seeds[0], self.subject)
        self.findings += found

    # -- the end ---------------------------------------------------------------------------------
    def _finish(self) -> EvaluationResult:
        inp = self.inp
        self.findings += compare.arm_missing(inp.spec, self.manifests, self.reasons, self.subject)
        if self.manifests:
            self.findings += compare.uncontrolled(inp.spec, self.manifests, inp.facts.trigger, self.subject)
            self.findings += manifest.validate_manifests(self.manifests, self.subject)
            self.doc["metrics"].update(documents.arm_metrics(self.images))
            self._quality()
        if self.first_call_here and self.entry is not None:  # the steady state: every render after the first
            self.findings += ops.slow_warmup(self.entry.first_call_s, list(self.render_s.values())[1:], self.subject)
        ops.mark_recovered(self.findings)  # WORKER_LOST of a render redone since: info
        doc = documents.evaluation_document(self, verdict(self.findings))
        path = atomic_write_json(inp.out_dir / EVALUATION_FILE, doc)
        return EvaluationResult(path=path, verdict=doc["verdict"], findings=self.findings, renders=self.renders,
                                skipped=self.skipped, document=doc, pipeline_cold=self.cold, render_keys=self.keys)

    def _quality(self) -> None:
        from lora_pipeline.quality.checkpoint import assess_checkpoint

        inp = self.inp
        found, self.doc["quality"] = assess_checkpoint(
            self.images, inp.spec, inp.facts.trigger, self.subject, storage_root=inp.storage_root,
            dataset_snapshot=inp.facts.dataset_snapshot, clip_model=inp.clip_model,
            thresholds=inp.quality_thresholds, log=self.log)
        self.findings += found


def evaluate_checkpoint(inp: EvaluationInputs, log: Callable[[str], None] = lambda _m: None,
                        call_hook: Callable[[dict], dict] | None = None) -> EvaluationResult:
    """Evaluate one checkpoint into `inp.out_dir`; findings, never tracebacks, for bad inputs. `log` gets
    the progress lines, several to a message (render/log_batch.py); pass a `BatchedLog` to batch them
    with your own lines (you flush it)."""
    ev = _Evaluation(inp, log, call_hook)
    try:
        return ev.run()
    finally:
        if ev.own_log:
            ev.log.flush()
