"""checkpoint_report and run_report materialized through real Dagster (in-process, a test instance),
with their partition-aware checks; definitions validate with the reports group."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg

from assets.partitions import add_checkpoint_partitions
from lora_pipeline.storage import checkpoint_partition_key

CLEAN, LAST = "clean", "step-00000006"


def test_materialize_checkpoint_and_run_reports(world):
    from assets import build_definitions
    from assets.reports import (
        CHECKPOINT_CHECKS,
        checkpoint_report,
        run_report,
    )
    from resources.settings import PipelineSettings

    full = build_definitions(str(world.config_path))
    dg.Definitions.validate_loadable(full)
    assert full.resolve_assets_def("run_report").specs_by_key[dg.AssetKey("run_report")].group_name == "reports"
    resources = {"settings": PipelineSettings(config_path=str(world.config_path))}
    with dg.instance_for_test() as instance:
        keys = [checkpoint_partition_key(CLEAN, "step-00000003"), checkpoint_partition_key(CLEAN, LAST),
                checkpoint_partition_key("fault-prefix", LAST)]
        add_checkpoint_partitions(instance, keys)
        for key in keys:
            r = dg.materialize([checkpoint_report], partition_key=key, resources=resources, instance=instance)
            assert r.success
            meta = r.asset_materializations_for_node("checkpoint_report")[0].metadata
            evals = {e.check_name: e for e in r.get_asset_check_evaluations()}
            assert set(evals) == set(CHECKPOINT_CHECKS)
            if key.endswith("|fault-prefix"):
                assert meta["verdict"].value == "evaluation_invalid" and meta["error_findings"].value >= 1
                assert not evals["evaluation_valid"].passed
                assert "RUNTIME.LORA_NOT_APPLIED" in evals["evaluation_valid"].metadata["codes"].value
                assert evals["evaluation_valid"].severity == dg.AssetCheckSeverity.ERROR
            else:
                assert meta["verdict"].value == "ok" and all(e.passed for e in evals.values())
            codes = {row.data["code"] for row in meta["findings"].value.records}
            assert codes >= {"TRAINING.AGGRESSIVE_SETTINGS"}
            assert meta["report_html"].value.endswith("report.html")
            md = meta["comparison_grid"].value  # a short markdown image the UI shows inline (< 1,000 chars)
            url = re.fullmatch(r"!\[[^\]]*\]\((/logs/lora_pipeline/[^)]+)/png\)", md).group(1)
            served = Path(instance.compute_log_manager.get_captured_local_path(url.split("/")[2:], "png"))
            assert len(md) < 1000 and served.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert len(served.read_bytes()) < 200_000
        r = dg.materialize([run_report], partition_key=CLEAN, resources=resources, instance=instance)
        assert r.success
        meta = r.asset_materializations_for_node("run_report")[0].metadata
        assert meta["checkpoint_verdicts"].value == {"step-00000003": "ok", LAST: "ok"}
        assert meta["best_checkpoint"].value in {"step-00000003", LAST}
        assert meta["delta_norm_curve"].value.startswith("![")  # the norms are computed for the reports
        assert r.get_asset_check_evaluations()[0].passed
