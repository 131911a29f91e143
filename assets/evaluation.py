"""The evaluation group: `eval_renders`, one partition per checkpoint (`<run_id>~<checkpoint_id>`).

Thin: the work is in lora_pipeline.render (core, no Dagster) through the `diffusion_runtime`
resource. For each checkpoint the step reads the run record from storage, proves the runtime
applies the LoRA, renders the three arms and writes `renders/<run_id>/<checkpoint_id>/evaluation.json`
(shape documented in lora_pipeline/render/evaluate.py), logging its progress to Dagster several lines
to a message (each message is an event-log write; a slow phase still shows within SLOW_S).

- `pool="gpu"`: one render step at a time per instance (the shipped dagster.yaml limits pools to 1);
  `GPU_STEP_TAGS` route the step to a GPU node when scaled out (deploy/).
- `evaluation` job: in-process executor and a single-run backfill policy, so one run evaluates a
  range of checkpoints in one process and loads each base pipeline once for all of them.
- Depends on the training group's `lora_checkpoint` by key (same partitions).
- Data version (one-partition runs) = sha256 of the sorted render cache keys, so it changes exactly
  when some render's pixels would; code version = `code_version(config)`, which follows the eval spec,
  quality thresholds, CLIP folder and runtime settings, so editing them shows every checkpoint stale.
- Backfills: assets/launch.py (`lora-pipeline evaluate`), the UI's backfill page, or
  `dagster job backfill -j checkpoint_job --partitions ...` (queued runs need the daemon).
"""

import dagster as dg

from assets.deploy_tags import GPU_STEP_TAGS
from assets.partitions import CHECKPOINTS
from lora_pipeline.config import Config
from resources.diffusion_runtime import DiffusionRuntime
from resources.settings import PipelineSettings

GROUP = "evaluation"
LORA_CHECKPOINT_KEY = dg.AssetKey("lora_checkpoint")
EVALUATION_JOB = "evaluation"
CODE_VERSION = "2"  # bump when the evaluation code changes what it writes


def code_version(config: Config) -> str:
    """Changes whenever what the renders and their judgement depend on changes in the config (eval spec,
    quality thresholds, CLIP folder, runtime): Dagster then shows every evaluated checkpoint stale."""
    import hashlib
    import json

    from lora_pipeline.render.spec import EvalSpec

    facts = {"spec": EvalSpec.from_config(config.eval).to_dict(), "quality": config.checks.quality_thresholds(),
             "clip": str(config.eval.clip_model or ""), "runtime": config.runtime.model_dump()}
    return f"{CODE_VERSION}-" + hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]


def _eval_renders(context: dg.AssetExecutionContext, settings: PipelineSettings,
                 diffusion_runtime: DiffusionRuntime) -> dg.MaterializeResult:
    from lora_pipeline.render.evaluate import SLOW_S
    from lora_pipeline.render.from_record import EvaluationSetupError, inputs_for
    from lora_pipeline.render.log_batch import BatchedLog
    from lora_pipeline.render.pipeline import PipelineLoadError
    from lora_pipeline.storage import split_checkpoint_partition_key

    config = settings.config
    try:
        device, dtype = diffusion_runtime.resolved()
    except PipelineLoadError as e:
        raise dg.Failure(description=str(e)) from None
    rows, totals = [], {"renders": 0, "skipped": 0, "errors": 0, "warnings": 0, "rendered": 0, "reused": 0}
    keys, key_digest = list(context.partition_keys), ""
    dirs, verdicts = [], {}
    for key in keys:
        run_id, checkpoint_id = split_checkpoint_partition_key(key)
        try:
            inputs = inputs_for(config, run_id, checkpoint_id, device, dtype, dagster_run_id=context.run_id)
        except EvaluationSetupError as e:
            raise dg.Failure(description=str(e)) from None
        # Every line of this checkpoint batched into few log messages (each one an event-log write).
        log = BatchedLog(context.log.info, every_s=SLOW_S, prefix=f"[{key}] ")
        log(f"evaluating {inputs.checkpoint.path} on {device}/{dtype}")
        try:
            result = diffusion_runtime.evaluate(inputs, log=log)
            log(f"verdict {result.verdict}: {len(result.renders)} renders, {len(result.skipped)} skipped, "
                f"{len(result.findings)} findings -> {result.path}")
        finally:
            log.flush()
        verdicts[key] = result.verdict
        dirs.append(str(inputs.out_dir))
        totals["renders"] += len(result.renders)
        totals["skipped"] += len(result.skipped)
        counts = result.document.get("render_counts") or {}
        totals["rendered"] += counts.get("rendered", 0)
        totals["reused"] += counts.get("reused", 0)
        key_digest = result.data_version
        for f in result.findings:
            totals["errors" if f.severity == "error" else "warnings"] += f.severity in ("error", "warn")
            rows.append(dg.TableRecord({"checkpoint": key, "code": f.code, "severity": f.severity,
                                        "message": f.message[:300]}))
    schema = dg.TableSchema(columns=[dg.TableColumn(c) for c in ("checkpoint", "code", "severity", "message")])
    data_version = None
    if len(keys) == 1:  # one partition: its data version follows the render cache keys
        data_version = dg.DataVersion(key_digest)
    return dg.MaterializeResult(data_version=data_version, metadata={
        **{k: dg.MetadataValue.int(v) for k, v in totals.items()},
        "findings": dg.MetadataValue.table(rows, schema=schema),
        "verdicts": dg.MetadataValue.json(verdicts),
        "render_dir": dg.MetadataValue.path(dirs[0]) if len(dirs) == 1 else dg.MetadataValue.json(dirs),
        "base_loads_in_process": dg.MetadataValue.int(DiffusionRuntime.base_loads()),
        "device": device, "dtype": dtype,
    })


def definitions(config: Config) -> dg.Definitions:
    eval_renders = dg.asset(
        name="eval_renders",
        group_name=GROUP,
        partitions_def=CHECKPOINTS,
        pool="gpu",
        deps=[LORA_CHECKPOINT_KEY],
        backfill_policy=dg.BackfillPolicy.single_run(),
        op_tags=GPU_STEP_TAGS,
        kinds={"pytorch", "diffusers"},
        code_version=code_version(config),
        description="Prove the runtime applies the LoRA, then render base / LoRA without trigger / LoRA with "
                    "trigger for every prompt x seed (each render reused from the render cache when its key is "
                    "unchanged), with a manifest in and beside every PNG, and judge them (quality signals). "
                    "Data version = the render cache keys.",
    )(_eval_renders)
    evaluation_job = dg.define_asset_job(EVALUATION_JOB, selection=[eval_renders], executor_def=dg.in_process_executor,
                                         description="Evaluate checkpoints in one process: the base loads once per "
                                                     "run.")
    return dg.Definitions(assets=[eval_renders], jobs=[evaluation_job])
