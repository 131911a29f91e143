"""The training group (issue 4): `training_run` (one dynamic partition per run), `lora_checkpoint`
(one per checkpoint: run x checkpoint id, key `<checkpoint_id>|<run_id>`) and `training_runs_sensor`, which keeps the
partitions in step with the runs folder and requests each checkpoint's evaluation once.

Thin: the logic lives in lora_pipeline.training; torch is never imported here.
"""


import importlib.util
import json
from pathlib import Path

import dagster as dg

from assets.partitions import CHECKPOINT_IDS, CHECKPOINTS, TO_RUN, TRAINING_RUNS
from lora_pipeline.config import Config
from lora_pipeline.findings import Finding
from lora_pipeline.fsutil import atomic_write_json
from lora_pipeline.lora.safetensors_file import LoraFileError
from lora_pipeline.storage import Storage, split_checkpoint_partition_key
from lora_pipeline.training.checkpoints import FileIndex
from lora_pipeline.training.ingest import (
    IngestError,
    index_path,
    ingest_run,
    load_run_record,
    run_folder,
    write_run_record,
)
from lora_pipeline.training.norms import store_norm
from lora_pipeline.training.record import Roots
from lora_pipeline.training.scan import fingerprint_of, scan_runs
from resources.settings import PipelineSettings

GROUP = "training"
RUN_KEY = dg.AssetKey("training_run")
CHECKPOINT_KEY = dg.AssetKey("lora_checkpoint")
RUN_JOB = "training_run_job"
CHECKPOINT_JOB = "checkpoint_job"
_RUN_KEY_TAG = "dagster/run_key"
CONTENT_TAG = "lora_pipeline/content"  # on a materialization: the content it was made from, when not its data version
# Assets partitioned by run that sit downstream of lora_checkpoint carry this tag (assets/reports.py).
RUN_PARTITIONED_TAG = ("lora_pipeline/partitioned_by", "training_runs")
SENSOR_INTERVAL_S = 30  # also tells `evaluate` users how soon the sensor picks up a file left out


def _findings_table(findings: list[Finding]) -> dg.MetadataValue:
    from assets.ui_metadata import findings_table

    return findings_table([f.to_dict() for f in findings])


def _curves(instance: dg.DagsterInstance, config: Config, record, files: dict[str, Path]) -> dict[str, dg.MetadataValue]:
    """loss_curve and delta_norm_curve, inline on the asset page (assets/ui_metadata.py) when they show
    something; otherwise a sentence saying why there is no curve. Ingestion computes no delta norm
    (lora_pipeline/training/norms.py): the weight curve is drawn here only when every checkpoint's
    norm is already cached (its lora_checkpoint step ran); it is always in the run report."""
    import copy

    from assets.ui_metadata import image
    from lora_pipeline.report.html_common import no_loss_reason
    from lora_pipeline.training.curves import delta_norm_curve, informative
    from lora_pipeline.training.norms import curve_points, with_norms

    out: dict[str, dg.MetadataValue] = {}
    if record.loss:
        out["loss_curve"] = image(instance, ["runs", record.run_id, "loss"], files["loss.png"].read_bytes(),
                                  "training loss per step (grey: raw, blue: smoothed; dotted: checkpoints)")
    else:
        out["loss_curve"] = dg.MetadataValue.text(no_loss_reason({"format": record.format}))
    cached = with_norms(config, copy.deepcopy(record), compute=False, write=False).checkpoints
    norms = [(c.step or i, c.total_delta_norm) for i, c in enumerate(cached) if c.total_delta_norm is not None]
    if informative(norms) and len(norms) == len(cached):
        out["delta_norm_curve"] = image(instance, ["runs", record.run_id, "delta_norm"],
                                        delta_norm_curve(curve_points(cached)), "LoRA weight change per checkpoint")
    elif len(norms) < len(cached):
        out["delta_norm_curve"] = dg.MetadataValue.text(
            f"weight norms known for {len(norms)} of {len(cached)} checkpoint(s): each is computed by its "
            "lora_checkpoint step; the curve is in the run report")
    else:
        out["delta_norm_curve"] = dg.MetadataValue.text(
            f"{len(norms)} checkpoint(s) with a weight norm: no curve to draw")
    return out


def _dataset_deps() -> list[dg.AssetDep]:
    if importlib.util.find_spec("assets.dataset") is None:
        return []
    return [dg.AssetDep("dataset_snapshot", partition_mapping=dg.AllPartitionMapping())]


def _build_assets():
    @dg.asset(key=RUN_KEY, group_name=GROUP, partitions_def=TRAINING_RUNS, deps=_dataset_deps(), code_version="1",
              description="A training run folder ingested into one normalised run record "
                          "(storage/runs/<run_id>/run.json): facts, checkpoints, loss, findings.")
    def training_run(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
        config = settings.config
        run_id = context.partition_key
        folder = run_folder(config, run_id)
        if folder is None:
            raise dg.Failure(f"run {run_id}: no folder for it under {config.training_runs}")
        ingested = ingest_run(folder, config)
        files = write_run_record(config, ingested)
        r = ingested.record
        meta = {
            "run_json": dg.MetadataValue.path(str(files["run.json"])),
            "format": r.format, "checkpoints": len(r.checkpoints), "loss_points": len(r.loss),
            "base_model": str(r.base_model.name), "trigger": str(r.trigger), "rank": str(r.rank),
            "alpha": str(r.alpha), "learning_rate": str(r.learning_rate),
            "dataset_snapshot": str(r.dataset.snapshot_id), "findings": _findings_table(r.findings),
            **_curves(context.instance, config, r, files),
        }
        if r.pending:
            meta["pending_files"] = ", ".join(r.pending)
        # Data version: the run's facts, not its checkpoint list (a new checkpoint leaves the others
        # fresh); the content tag: the folder's fingerprint (what makes the run need ingesting again).
        return dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(r.facts_version()),
                                    tags={CONTENT_TAG: run_content(fingerprint_of(r), r.folder)})

    @dg.asset(key=CHECKPOINT_KEY, group_name=GROUP, partitions_def=CHECKPOINTS, code_version="1",
              deps=[dg.AssetDep(RUN_KEY, partition_mapping=TO_RUN)],
              description="One checkpoint file analysed in one read (hash + header + tensors): key "
                          "family, rank/alpha per module, delta norms (computed here, not at ingestion; "
                          "cached by file hash), NaN/Inf, inferred base architecture vs the run's declared "
                          "base. Data version = file sha256.")
    def lora_checkpoint(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
        config = settings.config
        doc, findings = analyse_partition(config, context.partition_key)
        return dg.MaterializeResult(
            metadata={"analysis_json": dg.MetadataValue.path(doc["analysis_path"]), "sha256": doc["sha256"],
                      "size": doc["size"], "step": str(doc["step"]), "key_format": doc["analysis"]["key_format"],
                      "ranks": str(doc["analysis"]["ranks"]),
                      "total_delta_norm": float(doc["analysis"]["total_delta_norm"] or 0.0),
                      "architecture": str(doc["base_check"]), "findings": _findings_table(findings)},
            data_version=dg.DataVersion(doc["sha256"]))

    return [training_run, lora_checkpoint]


_COMPATIBLE = {"sd-unet": {"sd1", "sd2", None}, "flux": {"flux1", "flux2", None}}  # generic file families


def analyse_partition(config: Config, partition_key: str) -> tuple[dict, list[Finding]]:
    """Analyse one checkpoint partition and write storage/checkpoints/<run>/<ckpt>/analysis.json."""
    run_id, cid = split_checkpoint_partition_key(partition_key)
    folder = run_folder(config, run_id)
    if folder is None:
        raise dg.Failure(f"checkpoint {partition_key}: run folder {run_id} not found under {config.training_runs}")
    try:
        record = load_run_record(config.storage, run_id)
    except IngestError:
        record = None
    if record is not None:  # its paths as they are in this workspace (moved or copied since written)
        record = record.reanchored(Roots.of(config))
    if record is None or record.checkpoint(cid) is None:
        record = ingest_run(folder, config).record
    ck = record.checkpoint(cid)
    if ck is None:
        raise dg.Failure(f"checkpoint {partition_key}: no such checkpoint in {folder} (removed or renamed?)")
    path = Path(ck.path)
    try:  # the full analysis: this step computes the checkpoint's delta norms (ingestion does not)
        full = FileIndex(index_path(config.storage, run_id)).analysis(
            path.relative_to(folder).as_posix(), path, config.checks.full_verify, norms=True)
    except (LoraFileError, OSError) as e:
        raise dg.Failure((str(e).splitlines() or [type(e).__name__])[0]) from None
    store_norm(config.storage, run_id, full)  # cached by file hash for the reports (training/norms.py)
    declared, inferred = record.base_model.architecture, (full.get("architecture") or {}).get("family")
    consistent = declared is None or inferred in (declared, "unknown") or declared in _COMPATIBLE.get(inferred, set())
    findings = [Finding(f.code, f.subject, f.message, f.evidence, f.severity) for f in record.findings
                if f.subject == str(path)]
    if not consistent:
        findings.append(Finding("TRAINING.CONFIG_UNKNOWN", str(path),
                                f"The run declares a {declared} base but the weights look {inferred}.",
                                {"declared": declared, "inferred": full.get("architecture")}))
    dest = Storage(Path(config.storage)).checkpoint_analysis(run_id, cid)
    doc = {"schema_version": 1, "run_id": run_id, "checkpoint_id": cid, "partition_key": partition_key,
           "path": str(path), "sha256": full["sha256"], "size": full["size"], "step": ck.step, "epoch": ck.epoch,
           "base_check": {"declared": declared, "inferred": inferred, "consistent": consistent},
           "analysis": full, "findings": [f.to_dict() for f in findings]}
    atomic_write_json(dest, doc)
    doc["analysis_path"] = str(dest)
    return doc, findings


def _done(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str, version: str, run_key: str) -> bool:
    """Already requested (a run with this run key exists) or already materialized at this version."""
    if instance.get_run_records(dg.RunsFilter(tags={_RUN_KEY_TAG: run_key}), limit=1):
        return True
    return recorded_content(instance, key, partition) == version


def run_content(fingerprint: str, folder) -> str:
    """What a training_run materialization is made from: the run folder's content and where it is
    (reports name the files they judged, so a copied or moved workspace is ingested again)."""
    import hashlib

    # A tag value: at most 63 characters of [A-Za-z0-9_.-].
    return hashlib.sha256(f"{fingerprint}@{Path(folder).resolve()}".encode()).hexdigest()[:40]


def recorded_content(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> str | None:
    """What the latest materialization of key[partition] was made from: its content tag (training_run:
    the run folder's fingerprint), else its data version (lora_checkpoint: the file's sha256)."""
    rec = instance.get_latest_data_version_record(key, partition_key=partition)
    mat = rec.asset_materialization if rec is not None else None
    tags = (mat.tags or {}) if mat else {}
    return tags.get(CONTENT_TAG) or tags.get("dagster/data_version")


def _build_jobs():
    run_job = dg.define_asset_job(RUN_JOB, selection=dg.AssetSelection.assets(RUN_KEY),
                                  description="Ingest one training run (partition = run id).")
    # Every checkpoint-partitioned asset from lora_checkpoint down (evaluation assets join by lineage).
    # Run-partitioned assets below it (reports' run_report, tagged) are left out: one job, one partitions def.
    selection = dg.AssetSelection.assets(CHECKPOINT_KEY).downstream() - dg.AssetSelection.tag(*RUN_PARTITIONED_TAG)
    checkpoint_job = dg.define_asset_job(CHECKPOINT_JOB, selection=selection,
                                         description="Analyse and evaluate one checkpoint (partition = checkpoint|run).")
    return run_job, checkpoint_job


def _cursor(text: str | None) -> dict[str, str]:
    """The sensor's cursor ({run_id: fingerprint}); anything unreadable counts as empty (re-check all)."""
    try:
        doc = json.loads(text or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}


def build_sensor(config: Config, run_job, checkpoint_job) -> dg.SensorDefinition:
    @dg.sensor(name="training_runs_sensor", jobs=[run_job, checkpoint_job], minimum_interval_seconds=SENSOR_INTERVAL_S,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Adds a partition per run folder and per complete checkpoint file; requests "
                           "ingestion/evaluation once per content (run key from the checkpoint sha256).")
    def training_runs_sensor(context: dg.SensorEvaluationContext):
        instance = context.instance
        scans = scan_runs(config)
        # The cursor holds each run's fingerprint as of the tick that handled it: a run whose folder
        # has not changed since costs no instance query (at 50 runs x 10 checkpoints an unchanged tick
        # is a scan of file stats, not 1,000 look-ups).
        seen = _cursor(context.cursor)
        have_runs = set(instance.get_dynamic_partitions(TRAINING_RUNS.name))
        have_ids = set(instance.get_dynamic_partitions(CHECKPOINT_IDS.name))
        changed = [s for s in scans if seen.get(s.run_id) != s.fingerprint or s.run_id not in have_runs]
        new_runs = [s.run_id for s in scans if s.run_id not in have_runs]
        new_ids = list(dict.fromkeys(split_checkpoint_partition_key(c.partition_key)[1]
                                     for s in scans for c in s.checkpoints
                                     if split_checkpoint_partition_key(c.partition_key)[1] not in have_ids))
        requests = []
        for s in changed:
            if not _done(instance, RUN_KEY, s.run_id, run_content(s.fingerprint, s.folder), s.run_key):
                requests.append(dg.RunRequest(job_name=RUN_JOB, partition_key=s.run_id, run_key=s.run_key))
            for c in s.checkpoints:
                if not _done(instance, CHECKPOINT_KEY, c.partition_key, c.sha256, c.run_key):
                    requests.append(dg.RunRequest(job_name=CHECKPOINT_JOB, partition_key=c.partition_key,
                                                  run_key=c.run_key, tags={"lora_pipeline/sha256": c.sha256}))
        waiting = sum(len(s.waiting) for s in scans)
        cursor = json.dumps({s.run_id: s.fingerprint for s in scans}, sort_keys=True)
        if not (new_runs or new_ids or requests):
            context.update_cursor(cursor)
            return dg.SkipReason(f"{len(scans)} run(s) up to date; {waiting} file(s) not complete yet")
        adds = [TRAINING_RUNS.build_add_request(new_runs)] if new_runs else []
        adds += [CHECKPOINT_IDS.build_add_request(new_ids)] if new_ids else []
        return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=adds, cursor=cursor)

    return training_runs_sensor


def definitions(config: Config) -> dg.Definitions:
    run_job, checkpoint_job = _build_jobs()
    return dg.Definitions(assets=_build_assets(), jobs=[run_job, checkpoint_job],
                          sensors=[build_sensor(config, run_job, checkpoint_job)])
