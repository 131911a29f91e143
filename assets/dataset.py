"""The dataset group: the source folder observed, `dataset_snapshot` (one partition per configured
dataset) and its asset checks. Thin: the work is in lora_pipeline.dataset.

- `dataset_source` (observable source asset): the content fingerprint of each dataset folder (hashes
  only files whose size or mtime changed since the last scan). When it differs from the snapshot's
  id, the UI shows `dataset_snapshot` stale.
- `dataset_snapshot`: stores the folder in the content-addressed store and writes
  `snapshots/<dataset>/<snapshot_id>/manifest.parquet`; data version = snapshot id. It returns a
  `MaterializeResult` with metadata; no value travels through an IO manager.
- checks (declared with the partitions definition, so each reads its own partition's snapshot):
  one per entry of lora_pipeline.dataset.checks.CHECKS, plus `source_unchanged`
  (DATASET.SOURCE_CHANGED). `pairing` is blocking. All of them run in ONE step (a multi-asset check
  that can be subset: the UI still runs any one alone), which reads the snapshot's manifest once;
  eleven steps cost ~10 Dagster steps' bookkeeping and ten more manifest reads per snapshot.
"""

import functools
import traceback
from collections.abc import Callable

import dagster as dg

from assets.partitions import dataset_partitions
from lora_pipeline.config import Config
from resources.settings import PipelineSettings

GROUP = "dataset"
SOURCE_KEY = dg.AssetKey("dataset_source")
SNAPSHOT_KEY = dg.AssetKey("dataset_snapshot")
BLOCKING = frozenset({"pairing"})
MAX_EXAMPLES = 20
CHECK_DESCRIPTIONS = {
    "pairing": "every image has a caption and every caption an image (blocking)",
    "empty_captions": "no empty captions",
    "readable_images": "every image decodes (not truncated, not 0 bytes, not a decompression bomb)",
    "literal_captions": "captions carry no quality words (masterpiece, best quality, 8k, ...)",
    "caption_variety": "enough distinct captions (checks.min_distinct_caption_ratio)",
    "trigger": "the dataset's trigger is in every caption, spelled one way",
    "duplicates": "no exact (sha256) or near (pHash, checks.near_duplicate_distance) duplicates",
    "resolution": "no image side below checks.resolution",
    "enough_images": "at least checks.min_images readable images",
    "caption_length": "captions fit the tokenizer's limit (real tokenizer of a base model, else estimated)",
    "source_unchanged": "the source folder still matches the latest snapshot",
}


def _dataset(config: Config, key: str):
    ds = config.datasets.get(key)
    if ds is None:
        raise dg.Failure(description=f"dataset {key!r} is not configured (datasets: in {config.source_label})")
    return ds


def _tokenizer_base(config: Config):
    from lora_pipeline.dataset.tokens import tokenizer_folder

    for path in config.base_models.values():
        if tokenizer_folder(path) is not None:
            return path
    return None


def _result(name: str, findings: list, extra: dict | None = None) -> dg.AssetCheckResult:
    errors = any(f.severity == "error" for f in findings)
    examples = sorted({p for f in findings for p in f.evidence.get("examples", [])})[:MAX_EXAMPLES]
    meta = {
        "count": sum(int(f.evidence.get("count", 0)) for f in findings),
        "codes": dg.MetadataValue.text(", ".join(f.code for f in findings) or "none"),
        "examples": dg.MetadataValue.json(examples),
        "findings": dg.MetadataValue.json([f.to_dict() for f in findings]),
        **(extra or {}),
    }
    return dg.AssetCheckResult(
        check_name=name, asset_key=SNAPSHOT_KEY, passed=not findings, metadata=meta,
        severity=dg.AssetCheckSeverity.ERROR if errors else dg.AssetCheckSeverity.WARN,
        description="; ".join(f.message for f in findings) or None)


def source_versions(config: Config, keys: list[str], warn: Callable[[str], None]) -> dict[str, str]:
    """The observed data version of each dataset partition in `keys`: the folder's content fingerprint,
    "not-configured" or "unreadable" (said through `warn`). The one definition of what an observation
    of `dataset_source` records, whether a run observes it or the launcher reports it."""
    from lora_pipeline.dataset.layout import DatasetError
    from lora_pipeline.dataset.snapshot import source_fingerprint

    versions = {}
    for key in keys:
        ds = config.datasets.get(key)
        if ds is None:
            versions[key] = "not-configured"
            continue
        try:
            versions[key] = source_fingerprint(config.storage, key, ds.path)
        except DatasetError as e:
            warn(str(e))
            versions[key] = "unreadable"
    return versions


def definitions(config: Config) -> dg.Definitions:
    parts = dataset_partitions(config)

    @dg.observable_source_asset(key=SOURCE_KEY, group_name=GROUP, partitions_def=parts,
                                required_resource_keys={"settings"},
                                description="Each configured dataset folder, fingerprinted by content.")
    def dataset_source(context) -> dg.DataVersionsByPartition:
        keys = parts.get_partition_keys()
        return dg.DataVersionsByPartition(source_versions(context.resources.settings.config, keys,
                                                          context.log.warning))

    @dg.asset(key=SNAPSHOT_KEY, group_name=GROUP, partitions_def=parts, deps=[SOURCE_KEY], code_version="1",
              description="An immutable, content-addressed copy of the dataset with its manifest.parquet.")
    def dataset_snapshot(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
        from lora_pipeline.dataset.checks import CheckInput, notes
        from lora_pipeline.dataset.layout import DatasetError
        from lora_pipeline.dataset.snapshot_write import take_snapshot

        cfg = settings.config
        key = context.partition_key
        ds = _dataset(cfg, key)
        try:
            res = take_snapshot(cfg.storage, key, ds.path, full_verify=cfg.checks.full_verify)
        except DatasetError as e:
            raise dg.Failure(description=str(e)) from None
        for f in res.findings:  # checks.full_verify: a stored object that no longer matches its address
            context.log.warning(f.message)
        frame = res.scan.frame
        inp = CheckInput(frame, key, res.info.orphan_captions, res.info.refused_symlinks, trigger=ds.trigger)
        preview = frame.head(10).select("path", "width", "height", "repeats", "caption")
        captions = frame.filter(frame["caption"].is_not_null()).height
        return dg.MaterializeResult(
            data_version=dg.DataVersion(res.snapshot_id),
            metadata={
                "snapshot_id": res.snapshot_id,
                "snapshot_path": dg.MetadataValue.path(str(res.info.path)),
                "manifest": dg.MetadataValue.path(str(res.info.manifest_path)),
                "source": dg.MetadataValue.path(str(res.scan.root)),
                "new_snapshot": res.created,
                "previous_snapshot_id": res.previous_id or "",
                "dagster/row_count": frame.height,
                "images": frame.height,
                "captioned_images": captions,
                "files": len(res.scan.files),
                "orphan_captions": len(res.info.orphan_captions),
                "refused_symlinks": len(res.info.refused_symlinks),
                "files_hashed": res.scan.hashed,
                "hashes_reused": res.scan.reused,
                "objects_stored": res.scan.stored,
                "integrity": dg.MetadataValue.json([f.to_dict() for f in res.findings]),
                "notes": dg.MetadataValue.json(notes(inp, res.scan.listing.metadata_decode_errors)),
                "preview": dg.MetadataValue.table(
                    records=[dg.TableRecord({k: ("" if v is None else v) for k, v in r.items()})
                             for r in preview.to_dicts()],
                    schema=dg.TableSchema([dg.TableColumn(c, "string" if c in ("path", "caption") else "int")
                                           for c in preview.columns])),
            })

    specs = [dg.AssetCheckSpec(name, asset=SNAPSHOT_KEY, description=text, blocking=name in BLOCKING,
                               partitions_def=parts) for name, text in CHECK_DESCRIPTIONS.items()]

    @dg.multi_asset_check(name="dataset_checks", specs=specs, can_subset=True,
                          description="The dataset checks of one snapshot, in one step.")
    def dataset_checks(context: dg.AssetCheckExecutionContext, settings: PipelineSettings):
        key, cfg = context.partition_key, settings.config
        snap = _latest(cfg, key)
        manifest = functools.cache(snap.manifest)  # read once, by the first check that needs it
        failed = []
        for name in CHECK_DESCRIPTIONS:
            if dg.AssetCheckKey(SNAPSHOT_KEY, name) not in context.selected_asset_check_keys:
                continue
            try:  # one check that cannot run costs only itself, as when each was its own step
                yield run_dataset_check(name, key, cfg, snap, manifest)
            except dg.Failure as e:
                failed.append(f"{name}: {e.description}")
            except Exception as e:  # noqa: BLE001 - the others still run; the traceback goes to the log
                context.log.error(f"check {name} raised:\n{traceback.format_exc()}")
                failed.append(f"{name}: {type(e).__name__}: {e}")
        if failed:
            raise dg.Failure(description="; ".join(failed))

    return dg.Definitions(assets=[dataset_source, dataset_snapshot], asset_checks=[dataset_checks])


def _latest(cfg: Config, key: str):
    from lora_pipeline.dataset.snapshot import latest_snapshot

    _dataset(cfg, key)
    snap = latest_snapshot(cfg.storage, key)
    if snap is None:
        raise dg.Failure(description=f"dataset {key!r} has no snapshot yet: materialize dataset_snapshot")
    return snap


def run_dataset_check(name: str, key: str, cfg: Config, snap=None, manifest: Callable | None = None
                      ) -> dg.AssetCheckResult:
    """One check on the latest snapshot of dataset `key` (also callable directly in tests); `snap` and
    `manifest()` (its manifest frame), when given, are shared by the checks of one step."""
    from lora_pipeline.dataset.checks import CHECKS, CheckInput
    from lora_pipeline.dataset.layout import DatasetError
    from lora_pipeline.dataset.snapshot import source_drift
    from lora_pipeline.dataset.tokens import token_memo_dir

    ds = _dataset(cfg, key)
    snap = snap if snap is not None else _latest(cfg, key)
    extra = {"snapshot_id": snap.snapshot_id}
    if name == "source_unchanged":
        try:
            drift = source_drift(cfg.storage, key, ds.path)
        except DatasetError as e:
            raise dg.Failure(description=str(e)) from None
        finding = drift.finding()
        extra.update({"added": len(drift.added), "removed": len(drift.removed), "modified": len(drift.modified),
                      "fingerprint": drift.fingerprint})
        return _result(name, [finding] if finding else [], extra)
    c = cfg.checks
    inp = CheckInput((manifest or snap.manifest)(), key, snap.orphan_captions, snap.refused_symlinks, trigger=ds.trigger,
                     resolution=c.resolution, min_images=c.min_images,
                     min_distinct_caption_ratio=c.min_distinct_caption_ratio,
                     near_duplicate_distance=c.near_duplicate_distance,
                     tokenizer_base=_tokenizer_base(cfg) if name == "caption_length" else None,
                     token_memo=token_memo_dir(cfg.storage))
    return _result(name, CHECKS[name][1](inp), extra)
