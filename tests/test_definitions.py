"""The Dagster code location loads light (no torch) and validates with Dagster's own CLI."""

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "peft")


def _imported_after(code: str, cwd: Path) -> list[str]:
    probe = f"import sys; {code}; import json; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_definitions_does_not_import_heavy_libraries():
    assert _imported_after("import lora_pipeline.definitions", REPO) == []


def test_cli_help_does_not_import_heavy_libraries(tmp_path):
    code = "from lora_pipeline.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit: pass"
    assert _imported_after(code, tmp_path) == []


def test_definitions_are_loadable():
    from lora_pipeline.definitions import defs

    dg.Definitions.validate_loadable(defs)


def test_dagster_definitions_validate_with_workspace(tmp_path):
    exe = Path(sys.executable).parent / "dagster"
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path)}
    out = subprocess.run([str(exe), "definitions", "validate", "-w", "workspace.yaml"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Validation successful" in out.stdout + out.stderr
