"""The dataset checks run as ONE Dagster step per snapshot (a multi-asset check), and any one of
them can still run alone, as the UI's "execute check" does."""

import warnings
from pathlib import Path

import dagster as dg

from lora_pipeline.config import load_config
from resources.settings import PipelineSettings
from tests.dataset.helpers import plain_dataset

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def _defs(tmp_path: Path):
    import assets.dataset as ad

    plain_dataset(tmp_path / "data/chairs", n=6)
    (tmp_path / "data/chairs/orphan.txt").write_text("a photo of sks_chair, no image")
    cfg = tmp_path / "lora_pipeline.yaml"
    cfg.write_text("storage: st\ndatasets:\n  chairs: {path: data/chairs, trigger: sks_chair}\n"
                   "checks: {resolution: 32, min_images: 5}\n")
    defs = ad.definitions(load_config(cfg))
    return ad, defs, {"settings": PipelineSettings(config_path=str(cfg))}


def test_all_checks_in_one_step_and_one_alone(tmp_path):
    ad, defs, resources = _defs(tmp_path)
    snapshot = defs.get_assets_def("dataset_snapshot")
    with dg.instance_for_test() as instance:
        result = dg.materialize([snapshot, *defs.asset_checks], partition_key="chairs", resources=resources,
                                instance=instance, raise_on_error=False)
        steps = {e.step_key for e in result.all_events if e.is_step_success or e.is_step_failure}
        assert steps == {"dataset_snapshot", "dataset_checks"}
        evals = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert list(evals) == list(ad.CHECK_DESCRIPTIONS)  # every check, in the catalogue's order
        assert not evals["pairing"].passed and evals["pairing"].blocking
        assert evals["trigger"].passed and evals["source_unchanged"].passed

        # One check alone (the UI's "execute" on a check): only it runs, on the latest snapshot.
        one = dg.AssetCheckKey(ad.SNAPSHOT_KEY, "pairing")
        job = dg.Definitions(assets=[snapshot], asset_checks=list(defs.asset_checks), resources=resources
                             ).resolve_implicit_global_asset_job_def()
        alone = job.get_subset(asset_check_selection={one}, asset_selection=set()).execute_in_process(
            instance=instance, partition_key="chairs", raise_on_error=False)
        got = alone.get_asset_check_evaluations()
        assert [(e.check_name, e.passed) for e in got] == [("pairing", False)]
        assert got[0].metadata["examples"].value == ["orphan.txt"]


def test_a_check_that_cannot_run_costs_only_itself(tmp_path):
    """The dataset folder gone after its snapshot: `source_unchanged` cannot run (one line naming it),
    the ten checks of the stored snapshot still report, as when each check was its own step."""
    ad, defs, resources = _defs(tmp_path)
    snapshot = defs.get_assets_def("dataset_snapshot")
    with dg.instance_for_test() as instance:
        assert dg.materialize([snapshot], partition_key="chairs", resources=resources, instance=instance).success
        (tmp_path / "data/chairs").rename(tmp_path / "data/moved")
        job = dg.Definitions(assets=[snapshot], asset_checks=list(defs.asset_checks), resources=resources
                             ).resolve_implicit_global_asset_job_def()
        run = job.get_subset(asset_check_selection=set(defs.asset_checks[0].check_keys), asset_selection=set()
                             ).execute_in_process(instance=instance, partition_key="chairs", raise_on_error=False)
        names = [e.check_name for e in run.get_asset_check_evaluations()]
        assert names == [n for n in ad.CHECK_DESCRIPTIONS if n != "source_unchanged"]
        failure = next(e for e in run.all_events if e.is_step_failure).step_failure_data
        assert failure.user_failure_data.description.startswith("source_unchanged: ")
        assert "data/chairs" in failure.user_failure_data.description


def test_checks_after_one_that_raised_still_run(tmp_path):
    """The stored manifest damaged: every check that reads it fails with its own line, and the one
    that does not (`source_unchanged`, last) still reports."""
    ad, defs, resources = _defs(tmp_path)
    snapshot = defs.get_assets_def("dataset_snapshot")
    with dg.instance_for_test() as instance:
        mat = dg.materialize([snapshot], partition_key="chairs", resources=resources, instance=instance)
        manifest = Path(mat.asset_materializations_for_node("dataset_snapshot")[0].metadata["manifest"].value)
        manifest.chmod(0o644)
        manifest.write_bytes(b"not parquet")
        job = dg.Definitions(assets=[snapshot], asset_checks=list(defs.asset_checks), resources=resources
                             ).resolve_implicit_global_asset_job_def()
        run = job.get_subset(asset_check_selection=set(defs.asset_checks[0].check_keys), asset_selection=set()
                             ).execute_in_process(instance=instance, partition_key="chairs", raise_on_error=False)
        assert [(e.check_name, e.passed) for e in run.get_asset_check_evaluations()] == [("source_unchanged", True)]
        why = next(e for e in run.all_events if e.is_step_failure).step_failure_data.user_failure_data.description
        assert why.startswith("pairing: ") and "; caption_length: " in why
