"""checkpoint_report and run_report materialized through real Dagster (in-process, a test instance),
with their partition-aware checks; definitions validate with the reports group."""

from __future__ import annotations

import base64
import re

import dagster as dg

CLEAN, LAST = "clean", "step-00000006"


def test_materialize_checkpoint_and_run_reports(world):
    from assets import build_definitions
    from assets.reports import (
        CHECKPOINT_CHECKS,
        _checkpoint_check,
        checkpoint_report,
        run_findings_ok,
        run_report,
    )
    from resources.settings import PipelineSettings

    full = build_definitions(str(world.config_path))
    dg.Definitions.validate_loadable(full)
    assert full.resolve_assets_def("run_report").specs_by_key[dg.AssetKey("run_report")].group_name == "reports"
    resources = {"settings": PipelineSettings(config_path=str(world.config_path))}
    checks = [_checkpoint_check(n) for n in CHECKPOINT_CHECKS]
    with dg.instance_for_test() as instance:
        keys = [f"{CLEAN}~step-00000003", f"{CLEAN}~{LAST}", f"fault-prefix~{LAST}"]
        instance.add_dynamic_partitions("checkpoints", keys)
        instance.add_dynamic_partitions("training_runs", [CLEAN])
        for key in keys:
            r = dg.materialize([checkpoint_report, *checks], partition_key=key, resources=resources, instance=instance)
            assert r.success
            meta = r.asset_materializations_for_node("checkpoint_report")[0].metadata
            evals = {e.check_name: e for e in r.get_asset_check_evaluations()}
            assert set(evals) == set(CHECKPOINT_CHECKS)
            if key.startswith("fault-prefix"):
                assert meta["verdict"].value == "evaluation_invalid" and meta["error_findings"].value >= 1
                assert not evals["evaluation_valid"].passed
                assert "RUNTIME.LORA_NOT_APPLIED" in evals["evaluation_valid"].metadata["codes"].value
                assert evals["evaluation_valid"].severity == dg.AssetCheckSeverity.ERROR
            else:
                assert meta["verdict"].value == "ok" and all(e.passed for e in evals.values())
            codes = {row.data["code"] for row in meta["findings"].value.records}
            assert codes >= {"TRAINING.AGGRESSIVE_SETTINGS"}
            assert meta["report_html"].value.endswith("report.html")
            md = meta["comparison_grid"].value
            b64 = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", md).group(1)
            assert len(base64.b64decode(b64)) < 200_000 and len(md) < 270_000
        r = dg.materialize([run_report, run_findings_ok], partition_key=CLEAN, resources=resources, instance=instance)
        assert r.success
        meta = r.asset_materializations_for_node("run_report")[0].metadata
        assert meta["checkpoint_verdicts"].value == {"step-00000003": "ok", LAST: "ok"}
        assert meta["best_checkpoint"].value in {"step-00000003", LAST}
        assert r.get_asset_check_evaluations()[0].passed
