"""The real Dagster UI over the demo instance: lineage through GraphQL, pages in headless Chromium."""

from __future__ import annotations

import json
import urllib.request

from .browser import rendered_dom, screenshot

ASSETS = ("dataset_snapshot", "training_run", "lora_checkpoint", "eval_renders", "checkpoint_report", "run_report")


def graphql(url: str, query: str) -> dict:
    req = urllib.request.Request(url + "/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    doc = json.loads(urllib.request.urlopen(req, timeout=60).read())
    assert "errors" not in doc, doc["errors"]
    return doc["data"]


def test_lineage_edges_dataset_to_training_to_evaluation_to_reports(webserver):
    nodes = graphql(webserver, "{assetNodes{assetKey{path} groupName dependencyKeys{path}}}")["assetNodes"]
    deps = {n["assetKey"]["path"][-1]: {d["path"][-1] for d in n["dependencyKeys"]} for n in nodes}
    groups = {n["assetKey"]["path"][-1]: n["groupName"] for n in nodes}
    assert "dataset_snapshot" in deps["training_run"]
    assert "training_run" in deps["lora_checkpoint"]
    assert "lora_checkpoint" in deps["eval_renders"]
    assert "eval_renders" in deps["checkpoint_report"]
    assert "checkpoint_report" in deps["run_report"]
    assert {groups[a] for a in ASSETS} == {"dataset", "training", "evaluation", "reports"}


def test_demo_materialized_the_graph_in_the_ui_instance(webserver):
    data = graphql(webserver, '{assetNodes{assetKey{path} assetMaterializations(limit: 1){runId}}}')
    done = {n["assetKey"]["path"][-1] for n in data["assetNodes"] if n["assetMaterializations"]}
    assert set(ASSETS) <= done


def test_asset_graph_and_catalog_pages_show_the_assets(webserver):
    # The community pop-up is a one-off for new instances; dismiss it as a user would (server side).
    graphql(webserver, "mutation { setNuxSeen }")
    dom = rendered_dom(webserver + "/assets")
    for name in ASSETS:
        assert name in dom, f"{name} not on the asset catalog page"
    shot = screenshot(webserver + "/locations/lora_pipeline/asset-groups/training", "ui-training-group.png")
    assert shot.stat().st_size > 20_000
    group_dom = rendered_dom(webserver + "/locations/lora_pipeline/asset-groups/training")
    assert "training_run" in group_dom and "lora_checkpoint" in group_dom


def test_run_report_opens_in_chromium(demo_world):
    root, _, _ = demo_world
    reports = sorted((root / "storage" / "reports").glob("*/report.html"))
    assert reports, "the demo wrote no run report"
    shot = screenshot(reports[0].as_uri(), "demo-run-report.png", size="1400,1600")
    assert shot.stat().st_size > 20_000


def test_trace_names_the_dagster_runs_of_the_demo(demo_world, tmp_path):
    """trace on a copied demo render walks back with the Dagster run id of each step."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root, env, _ = demo_world
    from lora_pipeline.storage import checkpoint_partition_key

    render = sorted((root / "storage" / "renders").glob("*/*/lora_trigger/*.png"))[-1]  # any run's render
    run, cid = render.parts[-4], render.parts[-3]
    copy = shutil.copy(render, tmp_path / "copied.png")
    exe = Path(sys.executable).parent / "lora-pipeline"
    out = subprocess.run([str(exe), "trace", str(copy), "--json"], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    t = json.loads(out.stdout)
    assert t["run"]["dagster"]["run_id"] and t["render"]["dagster"]["partition"] == checkpoint_partition_key(run, cid)
    assert t["checkpoint"]["check"]["status"] == "ok"
