import pytest

from lora_pipeline.cli import main
from lora_pipeline.config import ConfigError, demo_dir, load_config

GOOD = """
storage: store
datasets:
  chairs:
    path: data/chairs
    trigger: sks_chair
training_runs: runs
base_models:
  sd15: /models/stable-diffusion-v1-5
  local: models/toy
eval:
  prompts: ["a photo of {trigger}"]
  seeds: [1, 2]
  width: 64
  height: 64
  steps: 3
runtime:
  device: cpu
  dtype: float32
"""


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    f = tmp_path / "sub" / "lora_pipeline.yaml"
    f.parent.mkdir()
    f.write_text(GOOD)
    cfg = load_config(f)
    root = f.parent.resolve()
    assert cfg.storage == root / "store"
    assert cfg.datasets["chairs"].path == root / "data/chairs"
    assert cfg.training_runs == root / "runs"
    assert cfg.base_models["sd15"].as_posix() == "/models/stable-diffusion-v1-5"
    assert cfg.base_models["local"] == root / "models/toy"
    assert cfg.eval.seeds == [1, 2] and cfg.runtime.device == "cpu"
    assert cfg.source == f.resolve() and cfg.dagster_home == root / ".dagster"


@pytest.mark.parametrize("text, key", [
    (GOOD.replace("  seeds:", "  seedz:"), "eval.seedz"),
    (GOOD.replace("storage:", "storag:"), "storag"),
    (GOOD.replace("    trigger: sks_chair", "    triger: sks_chair"), "datasets.chairs.triger"),
])
def test_unknown_key_is_named_with_the_file(tmp_path, text, key):
    f = tmp_path / "lora_pipeline.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert "\n" not in msg and str(f) in msg and f"unknown key '{key}'" in msg


@pytest.mark.parametrize("text, key", [
    (GOOD.replace("steps: 3", "steps: many"), "eval.steps"),
    (GOOD.replace("device: cpu", "device: tpu"), "runtime.device"),
    (GOOD.replace("dtype: float32", "dtype: fp8"), "runtime.dtype"),
])
def test_mistyped_value_is_named(tmp_path, text, key):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_config(f)


def test_cli_exits_2_with_one_line_naming_key_and_file(tmp_path, capsys, kohya_run):
    f = tmp_path / "bad.yaml"
    f.write_text(GOOD.replace("  steps:", "  stepz:"))
    assert main(["inspect", str(kohya_run / "run-kohya.safetensors"), "--config", str(f)]) == 0  # inspect needs no config
    capsys.readouterr()
    assert main(["demo", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval.stepz" in err and str(f) in err


def test_invalid_yaml_is_one_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("storage: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "invalid YAML" in str(e.value) and "\n" not in str(e.value)


def test_yaml_tags_are_not_executed(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("storage: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError):
        load_config(f)


def test_precedence_cli_then_env_then_cwd_then_embedded(tmp_path, monkeypatch):
    a, b, c = (tmp_path / n for n in "abc")
    for d, name in ((a, "cli"), (b, "env"), (c, "cwd")):
        d.mkdir()
        (d / "lora_pipeline.yaml").write_text(f"storage: {name}\n")
    monkeypatch.chdir(c)
    monkeypatch.setenv("LORA_PIPELINE_CONFIG", str(b / "lora_pipeline.yaml"))
    assert load_config(a / "lora_pipeline.yaml").storage.name == "cli"
    assert load_config().storage.name == "env"
    monkeypatch.delenv("LORA_PIPELINE_CONFIG")
    assert load_config().storage.name == "cwd"
    monkeypatch.chdir(tmp_path)
    embedded = load_config()
    assert embedded.source is None and embedded.root == demo_dir()
    assert embedded.storage == demo_dir() / "storage" and "products" in embedded.datasets


def test_missing_config_file_is_named(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    monkeypatch.setenv("LORA_PIPELINE_CONFIG", str(tmp_path / "gone.yaml"))
    with pytest.raises(ConfigError, match="LORA_PIPELINE_CONFIG"):
        load_config()


def test_json_round_trip_keeps_root_source_and_in_memory_changes(tmp_path):
    from lora_pipeline.config import Config

    f = tmp_path / "lora_pipeline.yaml"
    f.write_text(GOOD)
    cfg = load_config(f)
    changed = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"steps": 9})})
    back = Config.from_json(changed.to_json())
    assert back == changed and back.eval.steps == 9
    assert back.root == cfg.root and back.source == f.resolve() and back.dagster_home == cfg.dagster_home
    embedded = load_config()
    assert Config.from_json(embedded.to_json()).source is None
