"""The dataset group in Dagster: materialize a partition, read the check evaluations, observe the
source and see the snapshot go stale when the folder changes."""

import warnings
from pathlib import Path

import dagster as dg
import pytest

from lora_pipeline.config import load_config
from resources.settings import PipelineSettings
from tests.dataset.helpers import pair, plain_dataset

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


@pytest.fixture
def workspace(tmp_path) -> Path:
    plain_dataset(tmp_path / "data/chairs", n=10)
    pair(tmp_path / "data/chairs", "dup", "a photo of sks_chair, a copy", seed=100)  # exact dup of img_000
    (tmp_path / "data/chairs/orphan.txt").write_text("a photo of sks_chair, no image")
    plain_dataset(tmp_path / "data/lamps", n=10, trigger="ohwx_lamp")
    (tmp_path / "lora_pipeline.yaml").write_text(
        "storage: st\n"
        "datasets:\n  chairs: {path: data/chairs, trigger: sks_chair}\n"
        "  lamps: {path: data/lamps, trigger: ohwx_lamp}\n"
        "checks: {resolution: 32, min_images: 5}\n")
    return tmp_path


def _defs(ws: Path):
    import assets.dataset as ad

    config = load_config(ws / "lora_pipeline.yaml")
    resources = {"settings": PipelineSettings(config_path=str(ws / "lora_pipeline.yaml"))}
    defs = ad.definitions(config)
    full = dg.Definitions(assets=list(defs.assets), asset_checks=list(defs.asset_checks), resources=resources,
                          jobs=[dg.define_asset_job("observe_datasets", [ad.SOURCE_KEY])])
    return ad, defs, full, resources


def _status(full: dg.Definitions, instance, key: str, partition: str):
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._core.loader import LoadingContextForTest

    resolver = CachingStaleStatusResolver(instance, full.resolve_asset_graph(), LoadingContextForTest(instance))
    return resolver.get_status(dg.AssetKey(key), partition)


def test_materialize_partition_and_read_check_evaluations(workspace):
    from dagster._core.definitions.data_version import StaleStatus

    ad, defs, full, resources = _defs(workspace)
    with dg.instance_for_test() as instance:
        observe = full.resolve_job_def("observe_datasets")
        assert observe.execute_in_process(instance=instance).success
        result = dg.materialize([defs.get_assets_def("dataset_snapshot"), *defs.asset_checks],
                                partition_key="chairs", resources=resources, instance=instance,
                                raise_on_error=False)
        mat = result.asset_materializations_for_node("dataset_snapshot")[0]
        sid = mat.metadata["snapshot_id"].value
        assert mat.partition == "chairs"
        assert mat.tags["dagster/data_version"] == sid
        assert mat.metadata["images"].value == 11 and mat.metadata["orphan_captions"].value == 1
        assert Path(mat.metadata["manifest"].value).is_file()
        evals = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert set(evals) == set(ad.CHECK_DESCRIPTIONS)
        assert {e.partition for e in evals.values()} == {"chairs"}
        assert evals["pairing"].blocking and not evals["duplicates"].blocking
        failed = {n for n, e in evals.items() if not e.passed}
        assert failed == {"pairing", "duplicates"}
        pairing = evals["pairing"]
        assert pairing.severity == dg.AssetCheckSeverity.ERROR
        assert pairing.metadata["codes"].value == "DATASET.CAPTION_WITHOUT_IMAGE"
        assert pairing.metadata["examples"].value == ["orphan.txt"] and pairing.metadata["count"].value == 1
        assert evals["duplicates"].metadata["examples"].value == ["dup.png", "img_000.png"]
        assert evals["duplicates"].severity == dg.AssetCheckSeverity.WARN

        # The other partition reads its own snapshot: clean.
        other = dg.materialize([defs.get_assets_def("dataset_snapshot"), *defs.asset_checks],
                               partition_key="lamps", resources=resources, instance=instance)
        assert all(e.passed for e in other.get_asset_check_evaluations())

        # Source observed again: unchanged -> fresh; changed -> stale, and source_unchanged fails.
        assert observe.execute_in_process(instance=instance).success
        assert _status(full, instance, "dataset_snapshot", "chairs") == StaleStatus.FRESH
        (workspace / "data/chairs/img_003.txt").write_text("a photo of sks_chair, edited")
        assert observe.execute_in_process(instance=instance).success
        assert _status(full, instance, "dataset_snapshot", "chairs") == StaleStatus.STALE
        assert _status(full, instance, "dataset_snapshot", "lamps") == StaleStatus.FRESH
        check = ad.run_dataset_check("source_unchanged", "chairs", load_config(workspace / "lora_pipeline.yaml"))
        assert not check.passed and check.metadata["modified"].value == 1
        assert check.metadata["examples"].value == []
        assert check.metadata["findings"].value[0]["evidence"]["modified"] == ["img_003.txt"]


def test_unconfigured_or_empty_dataset_fails_with_one_line(workspace):
    _, defs, _, resources = _defs(workspace)
    for p in (workspace / "data/lamps").iterdir():
        p.unlink()
    with dg.instance_for_test() as instance:
        result = dg.materialize([defs.get_assets_def("dataset_snapshot")], partition_key="lamps",
                                resources=resources, instance=instance, raise_on_error=False)
        assert not result.success
        failure = result.get_step_failure_events()[0].step_failure_data.error
        assert "no images found" in failure.message and "\n" not in failure.message.strip()
