"""The demo world holds a FLUX.1 run next to the SD1 runs, and the graph evaluated its checkpoints."""

from __future__ import annotations

import json


def test_demo_has_an_evaluated_flux1_run(demo_world):
    root, _, stdout = demo_world
    storage = root / "storage"
    records = {p.parent.name: json.loads(p.read_text()) for p in (storage / "runs").glob("*/run.json")}
    flux = [name for name, r in records.items() if (r.get("base_model") or {}).get("architecture") == "flux1"]
    assert flux == ["products-flux1"], records.keys()
    assert records["products-flux1"]["base_model"]["name"] == "toy-flux1"
    assert any((r.get("base_model") or {}).get("architecture") == "sd1" for r in records.values())
    reports = sorted((storage / "reports" / "products-flux1").glob("step-*/report.json"))
    assert len(reports) == 3
    for p in reports:
        assert json.loads(p.read_text())["verdict"]
    assert (storage / "reports" / "products-flux1" / "report.json").is_file()
    assert "products-flux1" in stdout
