"""The reports group (issue 7): `checkpoint_report` (one partition per checkpoint, after
`eval_renders`) and `run_report` (one partition per run, after `training_run` and every checkpoint's
report), with asset checks that surface error findings in the UI's checks tab.

Thin: the work is in lora_pipeline.report (no Dagster there).

- `run_report[<run>]` depends on exactly that run's checkpoint reports (`TO_RUN`, a
  MultiToSingleDimensionPartitionMapping on the checkpoints' "run" dimension): a new checkpoint
  makes its own run's report stale and nothing else.
- `run_report` carries an automation condition (`RUN_REPORT_CONDITION`): once any of its run's
  checkpoint reports (or its training_run) was updated and none is still in progress, the
  `run_reports_automation` sensor (running by default) requests it. So a run the sensor picked up
  ends with its run report, with no manual step.
- Checks are declared with `partitions_def` (docs/notes: a check on a dynamically partitioned asset
  otherwise reads the wrong partition) and read the report.json of their partition; none is
  blocking: a finding is a result, not a failed step.
"""

from pathlib import Path

import dagster as dg

from assets.partitions import CHECKPOINTS, TO_RUN, TRAINING_RUNS
from assets.training import RUN_PARTITIONED_TAG
from lora_pipeline.config import Config
from resources.settings import PipelineSettings

GROUP = "reports"
CHECKPOINT_REPORT = dg.AssetKey("checkpoint_report")
RUN_REPORT = dg.AssetKey("run_report")
# check name -> (layers whose error findings fail it, description)
CHECKPOINT_CHECKS = {
    "evaluation_valid": (("provenance", "runtime", "comparison", "operational"),
                         "no error in the provenance, runtime, comparison or operational contracts"),
    "dataset_ok": (("dataset",), "no error finding in the dataset the run trained on"),
    "training_ok": (("training",), "no error finding in the training run at this checkpoint"),
    "quality_ok": (("quality",), "no error finding in the quality signals"),
    "not_rejected": (("review",), "no reviewer rejected this checkpoint (REVIEW.REJECTED)"),
}
RUN_CHECK = "run_findings_ok"
RUN_CHECK_DESCRIPTION = "no error finding at run level (dataset, training, spec drift across checkpoints)"
RUN_CHECK_LAYERS = ("provenance", "runtime", "comparison", "operational", "dataset", "training", "quality")


def _findings_table(findings: list[dict]) -> dg.MetadataValue:
    from assets.ui_metadata import findings_table

    return findings_table(findings)


def _report_links(instance: dg.DagsterInstance, key: list[str], folder: Path) -> dict[str, dg.MetadataValue]:
    """report_html (the path, with a copy button), report_html_download (a link in the UI; a click
    downloads the self-contained page, see assets/ui_metadata.py), report_json (the path)."""
    from assets.ui_metadata import report_link

    links = {"report_html": dg.MetadataValue.path(str(folder / "report.html"))}
    link = report_link(instance, [*key, "report"], folder / "report.html")
    if link is not None:
        links["report_html_download"] = link
    return {**links, "report_json": dg.MetadataValue.path(str(folder / "report.json"))}


def _counts(findings: list[dict]) -> dict[str, dg.MetadataValue]:
    return {f"{s}_findings": dg.MetadataValue.int(sum(f["severity"] == s for f in findings))
            for s in ("error", "warn", "info")}


def _reviews_md(reviews: list[dict]) -> dg.MetadataValue:
    if not reviews:
        return dg.MetadataValue.md("no reviews")
    rows = ["| at | by | scope | decision | note |", "|---|---|---|---|---|"]
    rows += [f"| {r.get('at')} | {r.get('by')} | {r.get('checkpoint_id') or 'run'} | {r.get('decision')} | "
             f"{str(r.get('note')).replace('|', '/')[:200]} |" for r in reviews]
    return dg.MetadataValue.md("\n".join(rows))


# Dagster's eager() without "no dependency missing" (a run's report must not wait for a checkpoint id
# that run never saved, which the two-dimensional partition space also holds) and without "newly
# missing" (a run added a moment ago has no checkpoint report yet): any dependency updated since the
# last request, none in progress, not in progress itself.
RUN_REPORT_CONDITION = (
    dg.AutomationCondition.in_latest_time_window()
    & dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("after its checkpoint reports")


def _failure(e: Exception) -> dg.Failure:
    return dg.Failure(description=str(e).splitlines()[0] if str(e) else type(e).__name__)


@dg.asset(key=CHECKPOINT_REPORT, group_name=GROUP, partitions_def=CHECKPOINTS, deps=["eval_renders"],
          check_specs=[dg.AssetCheckSpec(n, asset=CHECKPOINT_REPORT, description=d) for n, (_l, d) in CHECKPOINT_CHECKS.items()],
          code_version="1", kinds={"html", "json"},
          description="The diagnosis of one checkpoint: findings of every layer, the verdict (CONTRACT section 4), "
                      "reports/<run_id>/<checkpoint_id>/report.json and report.html.")
def checkpoint_report(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
    from assets.ui_metadata import image
    from lora_pipeline.report.diagnosis import ReportError, write_checkpoint_report
    from lora_pipeline.report.grid_image import comparison_grid_png
    from lora_pipeline.storage import split_checkpoint_partition_key

    config = settings.config
    run_id, cid = split_checkpoint_partition_key(context.partition_key)
    try:
        doc, folder = write_checkpoint_report(config, run_id, cid)
    except ReportError as e:
        raise _failure(e) from None
    findings = doc["findings"]
    context.log.info(f"{run_id}/{cid}: verdict {doc['verdict']}, {len(findings)} finding(s) -> {folder / 'report.html'}")
    meta: dict = {"verdict": doc["verdict"]}
    png = comparison_grid_png(doc["renders"], Path(config.storage))
    if png:  # inline on the asset page (assets/ui_metadata.py)
        meta["comparison_grid"] = image(context.instance, ["reports", run_id, cid, "comparison_grid"], png,
                                        "comparison grid: a row per prompt x seed; base, LoRA without trigger, "
                                        "LoRA with trigger")
    meta.update({**_report_links(context.instance, ["reports", run_id, cid], folder), **_counts(findings),
                 "findings": _findings_table(findings), "reviews": _reviews_md(doc["metrics"]["reviews"]),
                 "renders": len(doc["renders"])})
    # The checks come from the report in memory, in the same step (not one step per check re-reading
    # report.json: each Dagster step costs event-log writes).
    checks = [_check_result(n, findings, layers, CHECKPOINT_REPORT, {"verdict": doc["verdict"]})
              for n, (layers, _d) in CHECKPOINT_CHECKS.items()]
    return dg.MaterializeResult(metadata=meta, check_results=checks)


@dg.asset(key=RUN_REPORT, group_name=GROUP, partitions_def=TRAINING_RUNS, code_version="1", kinds={"html", "json"},
          tags=dict([RUN_PARTITIONED_TAG]),  # keeps it out of training's per-checkpoint job
          deps=["training_run", dg.AssetDep(CHECKPOINT_REPORT, partition_mapping=TO_RUN)],
          check_specs=[dg.AssetCheckSpec(RUN_CHECK, asset=RUN_REPORT, description=RUN_CHECK_DESCRIPTION)],
          automation_condition=RUN_REPORT_CONDITION,
          description="The run: checkpoint progression, signals over steps, per-checkpoint verdicts, candidates for "
                      "the best checkpoint, run-level findings; reports/<run_id>/report.json and report.html.")
def run_report(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
    from assets.ui_metadata import image
    from lora_pipeline.report.diagnosis import ReportError
    from lora_pipeline.report.run import write_run_report
    from lora_pipeline.report.run_html import key_signal_pngs

    try:
        doc, folder = write_run_report(settings.config, context.partition_key)
    except ReportError as e:
        raise _failure(e) from None
    verdicts = {c["checkpoint_id"]: c["verdict"] or "not evaluated" for c in doc["checkpoints"]}
    context.log.info(f"run {doc['run_id']}: {verdicts}; best {doc['best']}")
    curves = {f"{name.split('.')[-1]}_curve": image(context.instance, ["reports", doc["run_id"], name], png, title)
              for name, title, png in key_signal_pngs(doc)}
    curves.update(_delta_norm_curve(context.instance, settings.config, doc["run_id"]))
    return dg.MaterializeResult(metadata={
        "verdict": doc["verdict"], "best_checkpoint": str(doc["best"]),
        "checkpoint_verdicts": dg.MetadataValue.json(verdicts), **curves,
        **_report_links(context.instance, ["reports", doc["run_id"]], folder), **_counts(doc["findings"]),
        "findings": _findings_table(doc["findings"]),
        "candidates": dg.MetadataValue.md("\n".join(f"- `{c['checkpoint_id']}`: {c['reason']}"
                                                    for c in doc["candidates"]) or "no candidate"),
        "reviews": _reviews_md(doc["reviews"])},
        check_results=[_check_result(RUN_CHECK, doc["findings"], RUN_CHECK_LAYERS, RUN_REPORT,
                                     {"verdict": doc["verdict"]})])


def _delta_norm_curve(instance: dg.DagsterInstance, config: Config, run_id: str) -> dict[str, dg.MetadataValue]:
    """The weight-norm curve the report just drew (lora_pipeline/training/norms.py: the norms are
    computed after ingestion), when it shows something."""
    from assets.ui_metadata import image
    from lora_pipeline.training.curves import informative
    from lora_pipeline.training.norms import CURVE_FILE, run_dir, stored_points

    png = run_dir(config.storage, run_id) / CURVE_FILE
    if not informative(stored_points(config.storage, run_id)) or not png.is_file():
        return {}
    return {"delta_norm_curve": image(instance, ["runs", run_id, "delta_norm"], png.read_bytes(),
                                      "LoRA weight change per checkpoint")}


def _check_result(name: str, findings: list[dict], layers: tuple[str, ...], asset: dg.AssetKey,
                  extra: dict | None = None) -> dg.AssetCheckResult:
    errors = [f for f in findings if f["layer"] in layers and (f["severity"] == "error" or layers == ("review",))]
    return dg.AssetCheckResult(
        check_name=name, asset_key=asset, passed=not errors,
        severity=dg.AssetCheckSeverity.WARN if layers == ("review",) else dg.AssetCheckSeverity.ERROR,
        description="; ".join(f"{f['code']}: {f['message']}" for f in errors)[:1000] or None,
        metadata={"codes": dg.MetadataValue.text(", ".join(sorted({f["code"] for f in errors})) or "none"),
                  "findings": _findings_table(errors), **(extra or {})})


def definitions(config: Config) -> dg.Definitions:
    automation = dg.AutomationConditionSensorDefinition(
        "run_reports_automation", target=dg.AssetSelection.assets(RUN_REPORT), minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        # one run per run report, as the other sensors request: Dagster's default turns a tick that
        # asks for several runs' reports at once into a backfill, which waits for the backfill daemon
        emit_backfills=False,
        description="Requests a run's report once its checkpoint reports are in (RUN_REPORT_CONDITION).")
    return dg.Definitions(assets=[checkpoint_report, run_report], sensors=[automation])
