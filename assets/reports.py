"""The reports group (issue 7): `checkpoint_report` (one partition per checkpoint, after
`eval_renders`) and `run_report` (one partition per run, after `training_run` and every checkpoint's
report), with asset checks that surface error findings in the UI's checks tab.

Thin: the work is in lora_pipeline.report (no Dagster there).

- `run_report` depends on `checkpoint_report` through `AllPartitionMapping`: the checkpoints
  partitions are dynamic `<run_id>~<checkpoint_id>` keys, for which Dagster has no "prefix" mapping;
  "all" validates and is honest about staleness (a new checkpoint report makes run reports stale).
  The run report itself reads only its own run's checkpoint reports.
- Checks are declared with `partitions_def` (docs/notes: a check on a dynamically partitioned asset
  otherwise reads the wrong partition) and read the report.json of their partition; none is
  blocking: a finding is a result, not a failed step.
"""

import base64
from pathlib import Path

import dagster as dg

from assets.partitions import CHECKPOINTS, TRAINING_RUNS
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
_SCHEMA = dg.TableSchema(columns=[dg.TableColumn(c) for c in ("layer", "severity", "code", "subject", "message")])


def _findings_table(findings: list[dict]) -> dg.MetadataValue:
    return dg.MetadataValue.table(
        [dg.TableRecord({"layer": f["layer"], "severity": f["severity"], "code": f["code"],
                         "subject": str(f.get("subject"))[:200], "message": str(f.get("message"))[:300]})
         for f in findings], schema=_SCHEMA)


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


def _failure(e: Exception) -> dg.Failure:
    return dg.Failure(description=str(e).splitlines()[0] if str(e) else type(e).__name__)


@dg.asset(key=CHECKPOINT_REPORT, group_name=GROUP, partitions_def=CHECKPOINTS, deps=["eval_renders"],
          code_version="1", kinds={"html", "json"},
          description="The diagnosis of one checkpoint: findings of every layer, the verdict (CONTRACT section 4), "
                      "reports/<run_id>/<checkpoint_id>/report.json and report.html.")
def checkpoint_report(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
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
    meta = {"verdict": doc["verdict"], **_counts(findings), "findings": _findings_table(findings),
            "report_html": dg.MetadataValue.path(str(folder / "report.html")),
            "report_json": dg.MetadataValue.path(str(folder / "report.json")),
            "reviews": _reviews_md(doc["metrics"]["reviews"]), "renders": len(doc["renders"])}
    png = comparison_grid_png(doc["renders"], Path(config.storage))
    if png:
        meta["comparison_grid"] = dg.MetadataValue.md(
            f"![comparison grid](data:image/png;base64,{base64.b64encode(png).decode()})")
    return dg.MaterializeResult(metadata=meta)


@dg.asset(key=RUN_REPORT, group_name=GROUP, partitions_def=TRAINING_RUNS, code_version="1", kinds={"html", "json"},
          tags=dict([RUN_PARTITIONED_TAG]),  # keeps it out of training's per-checkpoint job
          deps=["training_run", dg.AssetDep(CHECKPOINT_REPORT, partition_mapping=dg.AllPartitionMapping())],
          description="The run: checkpoint progression, signals over steps, per-checkpoint verdicts, candidates for "
                      "the best checkpoint, run-level findings; reports/<run_id>/report.json and report.html.")
def run_report(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
    from lora_pipeline.report.diagnosis import ReportError
    from lora_pipeline.report.run import write_run_report

    try:
        doc, folder = write_run_report(settings.config, context.partition_key)
    except ReportError as e:
        raise _failure(e) from None
    verdicts = {c["checkpoint_id"]: c["verdict"] or "not evaluated" for c in doc["checkpoints"]}
    context.log.info(f"run {doc['run_id']}: {verdicts}; best {doc['best']}")
    return dg.MaterializeResult(metadata={
        "verdict": doc["verdict"], **_counts(doc["findings"]), "findings": _findings_table(doc["findings"]),
        "checkpoint_verdicts": dg.MetadataValue.json(verdicts), "best_checkpoint": str(doc["best"]),
        "candidates": dg.MetadataValue.md("\n".join(f"- `{c['checkpoint_id']}`: {c['reason']}"
                                                    for c in doc["candidates"]) or "no candidate"),
        "report_html": dg.MetadataValue.path(str(folder / "report.html")),
        "report_json": dg.MetadataValue.path(str(folder / "report.json")),
        "reviews": _reviews_md(doc["reviews"])})


def _check_result(name: str, findings: list[dict], layers: tuple[str, ...], asset: dg.AssetKey,
                  extra: dict | None = None) -> dg.AssetCheckResult:
    errors = [f for f in findings if f["layer"] in layers and (f["severity"] == "error" or layers == ("review",))]
    return dg.AssetCheckResult(
        check_name=name, asset_key=asset, passed=not errors,
        severity=dg.AssetCheckSeverity.WARN if layers == ("review",) else dg.AssetCheckSeverity.ERROR,
        description="; ".join(f"{f['code']}: {f['message']}" for f in errors)[:1000] or None,
        metadata={"codes": dg.MetadataValue.text(", ".join(sorted({f["code"] for f in errors})) or "none"),
                  "findings": _findings_table(errors), **(extra or {})})


def _read_report(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise dg.Failure(description=f"{path}: no report yet (materialize the report first)") from None
    except (OSError, ValueError) as e:
        raise dg.Failure(description=f"{path}: unreadable ({type(e).__name__})") from None


def _checkpoint_check(name: str) -> dg.AssetChecksDefinition:
    layers, description = CHECKPOINT_CHECKS[name]

    @dg.asset_check(asset=CHECKPOINT_REPORT, name=name, description=description, partitions_def=CHECKPOINTS)
    def _check(context: dg.AssetCheckExecutionContext, settings: PipelineSettings) -> dg.AssetCheckResult:
        from lora_pipeline.storage import Storage, split_checkpoint_partition_key

        run_id, cid = split_checkpoint_partition_key(context.partition_key)
        doc = _read_report(Storage(Path(settings.config.storage)).checkpoint_report_dir(run_id, cid) / "report.json")
        return _check_result(name, doc["findings"], layers, CHECKPOINT_REPORT, {"verdict": doc["verdict"]})

    return _check


@dg.asset_check(asset=RUN_REPORT, name="run_findings_ok", partitions_def=TRAINING_RUNS,
                description="no error finding at run level (dataset, training, spec drift across checkpoints)")
def run_findings_ok(context: dg.AssetCheckExecutionContext, settings: PipelineSettings) -> dg.AssetCheckResult:
    from lora_pipeline.storage import Storage

    doc = _read_report(Storage(Path(settings.config.storage)).run_report_dir(context.partition_key) / "report.json")
    layers = ("provenance", "runtime", "comparison", "operational", "dataset", "training", "quality")
    return _check_result("run_findings_ok", doc["findings"], layers, RUN_REPORT, {"verdict": doc["verdict"]})


def definitions(config: Config) -> dg.Definitions:
    return dg.Definitions(assets=[checkpoint_report, run_report],
                          asset_checks=[*(_checkpoint_check(n) for n in CHECKPOINT_CHECKS), run_findings_ok])
