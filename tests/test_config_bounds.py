"""Config parsing is bounded: an alias bomb, an oversized or deeply nested file, a huge bad value all
fail at once with one short line naming the file (never the input's repr); trainer YAML configs go
through the same loader. The alias bomb runs in a subprocess with a timeout, so a regression fails
instead of hanging the suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_pipeline import bounded_yaml
from lora_pipeline.cli import main
from lora_pipeline.config import ConfigError, load_config
from lora_pipeline.training.common import ParsedRun, read_config

REPO = Path(__file__).resolve().parents[1]

LOL = ", ".join(['"lol"'] * 9)
# ~400 bytes whose value under `storage` expands to 9^9 strings (a repr of ~3 GB).
ALIAS_BOMB = f"storage:\n  - &a [{LOL}]\n" + "".join(
    f"  - &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))

# The real CLI under a 1 GiB address-space limit: a regression fails fast instead of eating the machine.
LIMITED_CLI = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from lora_pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _short_line(msg: str, path: Path) -> None:
    assert "\n" not in msg.strip() and len(msg.strip()) < 200 and str(path) in msg, msg


def test_alias_bomb_config_fails_at_once_with_a_short_line(tmp_path):
    f = tmp_path / "bomb.yaml"
    f.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 500
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", LIMITED_CLI, "diagnose", "--config", str(f)],
                         capture_output=True, text=True, timeout=20, env=env, cwd=tmp_path)
    assert res.returncode == 2
    _short_line(res.stderr, f)
    assert "YAML aliases expand to more than" in res.stderr.split(str(f))[1] and res.stdout == ""


def test_benign_anchors_and_merge_keys_still_load(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("datasets:\n  a: &d {path: data/a, trigger: sks}\n  b: *d\n"
                 "eval:\n  prompts: &p [\"{trigger}\"]\n  seeds: [1]\n"
                 "checks:\n  max_learning_rate: &lr {adam: 0.001}\n")
    cfg = load_config(f)
    assert cfg.datasets["b"].trigger == "sks" and cfg.datasets["b"].path == tmp_path.resolve() / "data/a"
    assert bounded_yaml.load("base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n")["other"] == {"x": 1, "y": 2}


def test_oversized_config_is_refused_by_size(tmp_path):
    f = tmp_path / "big.yaml"
    f.write_bytes(b"storage: store\n" + b"#" * bounded_yaml.MAX_BYTES)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    _short_line(str(e.value), f)
    assert "larger than" in str(e.value).split(str(f))[1]


@pytest.mark.parametrize("depth", [bounded_yaml.MAX_DEPTH + 1, 100_000])
def test_deeply_nested_config_is_one_line(tmp_path, depth):
    f = tmp_path / "deep.yaml"
    f.write_text("storage: " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    _short_line(str(e.value), f)
    assert "nest" in str(e.value).split(str(f))[1]


def test_recursive_alias_is_refused(tmp_path):
    f = tmp_path / "loop.yaml"
    f.write_text("eval:\n  prompts: &p [*p]\n")
    with pytest.raises(ConfigError, match="recursive YAML alias"):
        load_config(f)


@pytest.mark.parametrize("body, key", [
    ("eval:\n  steps: '" + "many " * 20000 + "'\n", "eval.steps"),
    ("runtime:\n  device: [" + ", ".join(["cpu"] * 20000) + "]\n", "runtime.device"),
    ("datasets:\n  " + "n" * 1000 + ": {path: 3, trigger: [1]}\n", "datasets.nnnn"),
    ("eval:\n  " + "k" * 1000 + ": 1\n", "eval.kkkk"),
])
def test_bad_value_error_is_one_short_line(tmp_path, capsys, body, key):
    f = tmp_path / "bad.yaml"
    f.write_text(body)
    assert main(["diagnose", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    _short_line(err, f)
    assert key in err.split(str(f))[1]


def test_invalid_yaml_message_does_not_quote_the_input(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("storage: [" + "x" * 5000 + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    _short_line(str(e.value), f)
    assert "xxxxx" not in str(e.value)


def test_trainer_yaml_config_goes_through_the_bounded_loader(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(ALIAS_BOMB.replace("storage:", "config:"))
    run = ParsedRun(format="ai-toolkit")
    assert read_config(cfg, run, tmp_path) is None
    [finding] = run.findings
    assert finding.code == "TRAINING.CONFIG_UNKNOWN" and "YAML aliases expand" in finding.message
