"""The README's commands, run as written, for real (issue 14, item 4).

The "Using it on your own runs" section is executed: its ```yaml block becomes the workspace's
`lora_pipeline.yaml`, and every line of its ```sh block runs, in order, in ONE bash process started in
the workspace folder (so `eval "$(lora-pipeline env)"` holds for the lines after it), with the venv's
`bin` first on PATH and no DAGSTER_HOME / LORA_PIPELINE_CONFIG set, as on a fresh clone. The workspace
is the README's own: `data/chairs` (the toy dataset, trigger `sks_chair`, plus one orphan caption so a
blocking dataset check fails for real), `runs/chairs-r32` (a toy LoRA trained in kohya's format, named
`chairs`), storage `.lora_pipeline/storage`.

The only substitutions, all checked to still be in the README (so the README cannot drift from here):
- config: `base_models` -> the toy SD1 base; `eval` -> one README prompt, seed 11, 64 px, 2 steps;
  `runtime` -> cpu / float32; plus `checks` for a 64 px toy dataset (storage, datasets and
  training_runs stay the README's);
- `step-00000500` -> the toy run's checkpoint id; `chairs-000005.safetensors` -> its checkpoint file;
- `lora-pipeline ui` -> started with `--port <free port>`, waited for (/server_info answers), stopped.
The Quick start's `make` targets are checked with `make -n` (CI runs `make test`; `make demo` is the
slow demo build that tests/ui runs).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
README = REPO / "README.md"
TRIGGER = "sks_chair"


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 3)
    return text[start:end if end > 0 else None]


def _blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", section, flags=re.S | re.M)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(ws: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "LORA_PIPELINE_CONFIG")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["LORA_PIPELINE_DEMO_DIR"] = str(ws.parent / "no-demo-here")  # never the user's demo workspace
    return env


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory, toy_base, toy_dataset):
    """(workspace, env, {command line: its output}, the substituted sh lines) after the README's sh block
    (all but `ui`) ran in one bash process; asserts it ran to the end."""
    from lora_pipeline.toy.train import TrainSpec, train

    section = _section(README.read_text("utf-8"), "Using it on your own runs")
    [config_text] = _blocks(section, "yaml")
    [commands] = _blocks(section, "sh")
    ws = tmp_path_factory.mktemp("readme") / "ws"
    data = ws / "data" / "chairs"
    shutil.copytree(toy_dataset, data)
    (data / "zz_orphan.txt").write_text(f"a photo of {TRIGGER}, no image beside it")
    run = ws / "runs" / "chairs-r32"
    train(TrainSpec(base=toy_base, dataset=data, out=run, trigger=TRIGGER, steps=2, save_every=2, rank=4,
                    alpha=8.0, lr=5e-3, resolution=64, format="kohya", name="chairs"))
    cfg = yaml.safe_load(config_text)
    assert set(cfg) == {"storage", "datasets", "training_runs", "base_models", "eval", "runtime"}, sorted(cfg)
    assert cfg["datasets"] == {"chairs": {"path": "data/chairs", "trigger": TRIGGER}}
    assert cfg["training_runs"] == "runs" and cfg["storage"] == ".lora_pipeline/storage"
    cfg.update(base_models={"sd15": str(toy_base)}, runtime={"device": "cpu", "dtype": "float32"},
               eval={**cfg["eval"], "prompts": cfg["eval"]["prompts"][:1], "seeds": [11], "width": 64,
                     "height": 64, "steps": 2},
               checks={"resolution": 64, "min_images": 4})
    (ws / "lora_pipeline.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    ckpt_file = min(p.name for p in run.glob("chairs-*.safetensors"))
    ckpt_id = "step-00000002"
    lines = [ln for ln in commands.splitlines() if ln.strip()]
    subs = {"step-00000500": ckpt_id, "chairs-000005.safetensors": ckpt_file}
    for old in subs:
        assert any(old in ln for ln in lines), f"the README no longer shows {old}: update this test's substitutions"
    for old, new in subs.items():
        lines = [ln.replace(old, new) for ln in lines]
    ui = [ln for ln in lines if ln.split("#")[0].split() == ["lora-pipeline", "ui"]]
    assert len(ui) == 1, "the README's block should end with `lora-pipeline ui`"
    body = [ln for ln in lines if ln not in ui]
    script = ["set -eo pipefail", "trap 'echo \"FAILED LINE: $BASH_COMMAND\" >&2' ERR"]
    for i, ln in enumerate(body):
        script += [f"echo '@@@ {i}' >&2; echo '@@@ {i}'", ln]
    proc = subprocess.run(["bash", "-c", "\n".join(script)], cwd=ws, env=_env(ws), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    outs = dict(zip(body, re.split(r"^@@@ \d+\n", proc.stdout, flags=re.M)[1:], strict=True))
    errs = dict(zip(body, re.split(r"^@@@ \d+\n", proc.stderr, flags=re.M)[1:], strict=True))
    return ws, {ln: outs[ln] + "\n--- stderr ---\n" + errs[ln] for ln in body}, ckpt_id


def _out(outputs: dict[str, str], start: str) -> str:
    found = [v for k, v in outputs.items() if k.startswith(start)]
    assert found, f"no README command starts with {start!r}"
    return found[0]


def test_readme_commands_run_as_written(readme_run):
    ws, outputs, ck = readme_run
    first = _out(outputs, "lora-pipeline evaluate  ")
    # evaluate says what it did, per checkpoint and run, and the one next command
    assert re.search(rf"chairs-r32\s+{ck}\s+new\s+dataset_problem\s+DATASET\.CAPTION_WITHOUT_IMAGE\(e\)", first), first
    assert "dataset_snapshot[chairs]: blocking check pairing failed (DATASET.CAPTION_WITHOUT_IMAGE)" in first
    assert "run chairs-r32: run verdict dataset_problem; best checkpoint: none" in first
    assert f"report {ws / '.lora_pipeline/storage/reports/chairs-r32/report.html'}" in first
    assert "next: lora-pipeline diagnose --run chairs-r32" in first and "a run's by its run-wide findings" in first
    assert "0 failed" in first and "Traceback" not in first
    again = _out(outputs, "lora-pipeline evaluate --run chairs-r32 --all")
    assert re.search(rf"{ck}\s+\S.*dataset_problem", again) and "0 render(s)" in again  # all from the cache
    assert f"{ck}: dataset_problem" in _out(outputs, "lora-pipeline diagnose --run chairs-r32")
    assert "--fail-on invalid: 0 of 1 checkpoint(s) reach it" in _out(outputs, "lora-pipeline diagnose --fail-on")
    trace = _out(outputs, "lora-pipeline trace ")
    assert "checks: " in trace and " 0 mismatch, 0 unverifiable" in trace
    review = _out(outputs, "lora-pipeline review ")
    assert f"recorded: reject chairs-r32/{ck}" in review and "reports updated" in review
    assert "DATASET.CAPTION_WITHOUT_IMAGE" in _out(outputs, "lora-pipeline check-dataset ")
    assert "kohya" in _out(outputs, "lora-pipeline inspect ").lower()
    backfill = _out(outputs, "lora-pipeline backfill ")
    assert "queued: Launched backfill job" in backfill and "dagster job backfill" in backfill
    assert "checkpoint_job" in _out(outputs, "dagster run list")  # the backfill's queued run, same instance
    import dagster as dg

    with dg.DagsterInstance.from_config(str(ws / ".dagster")) as inst:
        [bf] = inst.get_backfills()
        runs = inst.get_runs(dg.RunsFilter(tags={"dagster/backfill": bf.backfill_id}))
    from lora_pipeline.storage import checkpoint_partition_key

    assert [r.tags.get("dagster/partition") for r in runs] == [checkpoint_partition_key("chairs-r32", ck)]
    assert {r.status for r in runs} == {dg.DagsterRunStatus.QUEUED}


def test_evaluate_again_is_up_to_date_and_shows_the_rejection(readme_run):
    ws, _, ck = readme_run
    proc = subprocess.run([str(BIN / "lora-pipeline"), "evaluate"], cwd=ws, env=_env(ws), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(rf"{ck}\s+up to date\s+dataset_problem, REJECTED by \S+", proc.stdout), proc.stdout
    # the instance still shows the dataset's failed blocking check: so does the summary of a later launch
    assert "dataset_snapshot[chairs]: blocking check pairing failed (DATASET.CAPTION_WITHOUT_IMAGE)" in proc.stdout
    diag = subprocess.run([str(BIN / "lora-pipeline"), "diagnose", "--fail-on", "warn"], cwd=ws, env=_env(ws),
                          capture_output=True, text=True, timeout=120)
    assert diag.returncode == 1 and f"{ck}: dataset_problem, REJECTED by" in diag.stdout
    assert diag.stderr.strip().splitlines()[-1].startswith("error: --fail-on warn: 1 of 1 checkpoint(s) reach it")


def test_trace_of_a_copied_render_finds_its_workspace_from_anywhere(readme_run, tmp_path):
    ws, _, ck = readme_run
    copy = tmp_path / "copied.png"
    shutil.copy(ws / ".lora_pipeline/storage/renders/chairs-r32" / ck / "lora_trigger/0-11.png", copy)
    proc = subprocess.run([str(BIN / "lora-pipeline"), "trace", str(copy)], cwd=tmp_path, env=_env(ws),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"trace: config {ws / 'lora_pipeline.yaml'}, found in a folder holding the LoRA file" in proc.stderr
    assert "training run      chairs-r32 (kohya)" in proc.stdout and " 0 mismatch, 0 unverifiable" in proc.stdout


def test_trace_of_a_render_no_config_holds_says_which_config_it_needs(readme_run, tmp_path):
    import json

    from PIL import Image, PngImagePlugin

    ws, _, ck = readme_run
    src = Image.open(ws / ".lora_pipeline/storage/renders/chairs-r32" / ck / "lora_trigger/0-11.png")
    m = json.loads(src.text["lora_pipeline"])
    m.update(run_id="someone-elses-run", lora={**m["lora"], "path": str(tmp_path / "gone" / "x.safetensors")})
    info = PngImagePlugin.PngInfo()
    info.add_text("lora_pipeline", json.dumps(m))
    src.save(tmp_path / "foreign.png", pnginfo=info)
    proc = subprocess.run([str(BIN / "lora-pipeline"), "trace", str(tmp_path / "foreign.png")], cwd=tmp_path,
                          env=_env(ws), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert "its manifest names run 'someone-elses-run', which the storage of no config found holds" in line
    assert "--config FILE" in line and "Traceback" not in proc.stderr


def test_readme_ui_serves_the_same_instance(readme_run):
    ws, _, _ = readme_run
    port = _free_port()
    proc = subprocess.Popen([str(BIN / "lora-pipeline"), "ui", "--port", str(port)], cwd=ws, env=_env(ws),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "lora-pipeline ui did not start"
                time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the UI, its daemon and code server: the whole session
        out = proc.communicate(timeout=30)[0]
    assert f"DAGSTER_HOME={ws / '.dagster'}" in out.splitlines()[0]


def test_quick_start_make_targets_exist():
    section = _section(README.read_text("utf-8"), "Quick start")
    [block] = _blocks(section, "sh")
    targets = [ln.split()[1] for ln in block.splitlines() if ln.startswith("make ")]
    assert targets == ["demo", "test"]
    for target in [*targets, "ui"]:
        proc = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr


def test_demo_summary_agrees_with_the_instance(readme_run, capsys):
    """The demo's closing summary (lora_pipeline/demo_report.py) over this workspace and its instance:
    the failed blocking check as Dagster records it, the rejection beside the verdict, the verdicts note."""
    from assets.launch import LaunchSummary, Outcome
    from lora_pipeline.demo_report import print_summary

    ws, _, ck = readme_run
    summary = LaunchSummary(dagster_home=ws / ".dagster", outcomes=[Outcome("dataset_snapshot", "chairs", "up_to_date")])
    assert print_summary(ws / ".lora_pipeline" / "storage", summary) == 1
    out = capsys.readouterr().out
    assert re.search(rf"chairs-r32\s+{ck}\s+dataset_problem, REJECTED by \S+", out), out
    assert "chairs-r32: run verdict dataset_problem; best checkpoint: none" in out
    assert "  dataset_snapshot[chairs]: blocking check pairing failed (DATASET.CAPTION_WITHOUT_IMAGE): " in out
    assert "a run's by its run-wide findings only" in out
