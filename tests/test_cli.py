"""The command line's shape and its small commands: `--help` stays light, every command answers
`--help`, `env` prints what the dagster CLI needs, `backfill` refuses what it cannot queue with one
line, and evaluate's summary says what the launch did per partition (assets/launch.py outcomes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "peft", "dagster")


def _light_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "LORA_PIPELINE_CONFIG")}


def test_help_imports_nothing_heavy_and_lists_every_command():
    code = ("import sys; from lora_pipeline.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_light_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    for name in ("evaluate", "backfill", "diagnose", "trace", "review", "env", "ui"):
        assert f"    {name} " in proc.stdout


@pytest.mark.parametrize("command", ["demo", "evaluate", "backfill", "diagnose", "trace", "review", "check-dataset",
                                     "inspect", "toy-base", "toy-train", "ui", "env"])
def test_every_command_answers_help(command, capsys):
    from lora_pipeline.cli import main

    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert f"usage: lora-pipeline {command}" in capsys.readouterr().out


def _workspace(root: Path, toy_base: Path, toy_dataset: Path, run: Path | None = None) -> Path:
    (root / "runs").mkdir(parents=True)
    if run is not None:
        shutil.copytree(run, root / "runs" / "chairs-r32")
    cfg = root / "lora_pipeline.yaml"
    cfg.write_text(f"storage: storage\ntraining_runs: runs\ndatasets:\n  chairs: {{path: {toy_dataset}, "
                   f"trigger: sks_chair}}\nbase_models:\n  toy: {toy_base}\n")
    return cfg


def test_env_prints_what_the_dagster_cli_needs(tmp_path, toy_base, toy_dataset):
    cfg = _workspace(tmp_path / "ws", toy_base, toy_dataset)
    script = (f"eval \"$({sys.executable} -m lora_pipeline env)\" && "
              "echo \"H=$DAGSTER_HOME C=$LORA_PIPELINE_CONFIG W=$LORA_PIPELINE_WORKSPACE\" && cat \"$LORA_PIPELINE_WORKSPACE\"")
    proc = subprocess.run(["bash", "-c", script], cwd=cfg.parent, env=_light_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    ws = cfg.parent.resolve()
    assert f"H={ws / '.dagster'} C={cfg.resolve()} W={ws / '.dagster' / 'workspace.yaml'}" in proc.stdout
    assert "module_name: lora_pipeline.definitions" in proc.stdout and f"working_directory: {REPO}" in proc.stdout
    assert (ws / ".dagster" / "dagster.yaml").is_file()  # the instance is prepared, as the CLI would use it


def test_env_of_the_demo_config_names_the_demo_workspace(tmp_path, capsys, monkeypatch):
    from lora_pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LORA_PIPELINE_DEMO_DIR", str(tmp_path / "demo"))
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert f"export LORA_PIPELINE_DEMO_DIR={tmp_path / 'demo'}" in out and "LORA_PIPELINE_CONFIG" not in out
    assert f"export DAGSTER_HOME={tmp_path / 'demo' / '.dagster'}" in out
    assert main(["env", "--config", str(tmp_path / "nope.yaml")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == f"error: {tmp_path / 'nope.yaml'}: config file not found (--config)"


def test_backfill_refuses_what_it_cannot_queue_with_one_line(tmp_path, toy_base, toy_dataset, native_run, capsys):
    from lora_pipeline.cli import main
    from lora_pipeline.config import load_config
    from lora_pipeline.training.ingest import ingest_run, write_run_record

    cfg = _workspace(tmp_path / "ws", toy_base, toy_dataset, native_run)
    args = ["backfill", "--config", str(cfg)]

    def one_line(code: int) -> str:
        out, err = capsys.readouterr()
        assert code == 2 and "Traceback" not in err, err
        [line] = err.strip().splitlines()
        return line

    assert "--run nope: no such run under" in one_line(main([*args, "--run", "nope"]))
    line = one_line(main([*args, "--run", "chairs-r32"]))
    assert "run chairs-r32: not ingested yet" in line and "lora-pipeline evaluate --run chairs-r32" in line
    config = load_config(cfg)
    write_run_record(config, ingest_run(cfg.parent / "runs" / "chairs-r32", config))
    line = one_line(main([*args, "--checkpoint", "step-00000099"]))
    assert "--checkpoint step-00000099: no such complete checkpoint" in line and "step-00000006" in line
    from lora_pipeline.storage import checkpoint_partition_key

    assert main([*args, "--checkpoint", "step-00000006", "--dry-run"]) == 0
    out = capsys.readouterr().out
    key = checkpoint_partition_key("chairs-r32", "step-00000006")
    assert out.startswith(f"1 checkpoint partition(s): {key}\n")
    assert "dagster job backfill -w \"$LORA_PIPELINE_WORKSPACE\" -j checkpoint_job --partitions" in out
    assert not (cfg.parent / ".dagster" / "history").exists()  # a dry run queues nothing


def test_what_the_launch_did_per_partition():
    from assets.launch import Outcome
    from lora_pipeline.commands._summary import what_was

    def o(status: str, reason: str = "", asset: str = "eval_renders") -> Outcome:
        return Outcome(asset, "k", status, reason)

    assert what_was([o("up_to_date", asset="lora_checkpoint"), o("up_to_date")]) == "up to date"
    assert what_was([o("up_to_date", asset="lora_checkpoint"), o("materialized", "stale: eval spec changed"),
                     o("materialized", "stale: upstream", "checkpoint_report")]) == "stale: eval spec changed"
    assert what_was([o("materialized", "new", "lora_checkpoint"), o("materialized", "new")]) == "new"
    assert what_was([o("materialized")]) == "materialized"  # a launcher that gives no reason
    assert what_was([o("materialized", "new", "lora_checkpoint"),
                     o("failed", "OOM while\nrendering")]) == "FAILED eval_renders: OOM while rendering"
    assert what_was([]) == "not launched"
    assert what_was([Outcome("lora_checkpoint", "k", "materialized", "stale: lora_checkpoint[k] has a new data version"),
                     o("materialized", "stale: eval_renders[k] follows")]) == "stale: lora_checkpoint has a new data version"
