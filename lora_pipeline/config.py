"""The one configuration model (CONTRACT section 1).

Found in this order: `--config FILE`, the env var `LORA_PIPELINE_CONFIG`, `./lora_pipeline.yaml`;
with none of them the embedded demo workspace's config is used. Relative paths are resolved against
the config file's folder. Unknown or mistyped keys raise `ConfigError`, whose message is one line
naming the key and the file.

The file is parsed with bounded work (`lora_pipeline.bounded_yaml`: at most 1 MiB, limited nesting,
alias expansion counted), and no error message ever embeds the input: a bad value is named by its key
and, when it is a short scalar, shown clipped.
"""

from __future__ import annotations

import json
import os
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lora_pipeline import bounded_yaml

CONFIG_ENV = "LORA_PIPELINE_CONFIG"
DEMO_DIR_ENV = "LORA_PIPELINE_DEMO_DIR"
CONFIG_FILENAME = "lora_pipeline.yaml"


class ConfigError(Exception):
    """A bad or missing configuration; the message is one line naming the file and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetConfig(_Strict):
    path: Path
    trigger: str | None = None


class EvalConfig(_Strict):
    prompts: list[str] = Field(default_factory=lambda: ["a photo of {trigger} on a white background"])
    negative_prompt: str = ""
    seeds: list[int] = Field(default_factory=lambda: [11, 22])
    width: int = Field(512, ge=8)
    height: int = Field(512, ge=8)
    steps: int = Field(30, ge=1)
    guidance_scale: float = 7.0
    scheduler: str | None = None
    lora_scale: float = 1.0
    clip_model: Path | None = None  # optional local CLIP folder for a text-image score

    @field_validator("prompts", "seeds")
    @classmethod
    def _non_empty(cls, v: list) -> list:
        if not v:
            raise ValueError("must not be empty")
        return v


class RuntimeConfig(_Strict):
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("must be auto, cpu, cuda, cuda:N or mps")


class ChecksConfig(_Strict):
    """Thresholds of the dataset and training checks (documented in docs/findings.md)."""

    resolution: int = Field(512, ge=1)  # training resolution images are compared against
    min_images: int = Field(10, ge=1)
    min_distinct_caption_ratio: float = Field(0.5, ge=0, le=1)
    near_duplicate_distance: int = Field(4, ge=0, le=64)  # perceptual-hash Hamming distance
    full_verify: bool = False  # re-hash every file on re-snapshot, even when size+mtime are unchanged
    # Training checks (issue 4; docs/findings.md "Training thresholds").
    loss_ema_alpha: float = Field(0.1, gt=0, le=1)  # smoothing of the loss series (EMA weight of a new point)
    loss_diverged_ratio: float = Field(2.0, gt=1)  # smoothed loss sustained above ratio x its minimum
    loss_diverged_tail: float = Field(0.2, gt=0, le=1)  # ... over this last fraction of the series
    max_rank_per_image: float = Field(8.0, gt=0)  # rank above this x the image count is aggressive
    max_steps_per_image: float = Field(250.0, gt=0)  # optimizer steps per training image
    max_learning_rate: dict[str, float] = Field(default_factory=lambda: {
        "adam": 1e-3, "lion": 3e-4, "sgd": 0.1, "adafactor": 1e-3, "prodigy": 2.0, "dadapt": 2.0})
    weights_jump_ratio: float = Field(3.0, gt=1)  # total delta norm x this between checkpoints = exploding
    overtrain_steps_per_image: float = Field(150.0, gt=0)  # training half of OVERTRAINING_SUSPECTED
    overtrain_norm_growth: float = Field(1.25, gt=1)  # ... with delta norms still growing by this factor
    checkpoint_settle_seconds: float = Field(60.0, ge=0)  # unchanged this long = written completely
    checkpoint_recheck_seconds: float = Field(1.5, ge=0)  # `evaluate`: young files unchanged over this = complete
    # Quality signals (issue 6; docs/quality.md). Defaults = lora_pipeline.quality.DEFAULTS.
    quality_min_lora_effect: float = Field(0.01, ge=0)  # mean |base - lora_trigger| in 0..1
    quality_min_trigger_effect: float = Field(0.01, ge=0)  # mean |lora_no_trigger - lora_trigger| in 0..1
    quality_max_hf_ratio: float = Field(4.0, gt=0)  # HF energy lora_trigger / base (median)
    quality_min_seed_diversity_ratio: float = Field(0.25, ge=0)  # seed diversity lora_trigger / base
    quality_memorization_distance: int = Field(4, ge=0, le=64)  # pHash Hamming distance to a training image
    quality_worsening: float = Field(0.25, gt=0)  # run level: relative worsening across later checkpoints

    def quality_thresholds(self) -> dict[str, float]:
        return {k[len("quality_"):]: v for k, v in self.model_dump().items() if k.startswith("quality_")}


class Config(_Strict):
    storage: Path = Path(".lora_pipeline/storage")
    datasets: dict[str, DatasetConfig] = Field(default_factory=dict)
    training_runs: Path = Path("runs")
    base_models: dict[str, Path] = Field(default_factory=dict)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    # Where this config came from: the file, or None for the embedded demo default.
    source: Path | None = Field(default=None, exclude=True)
    root: Path = Field(default=Path("."), exclude=True)

    @property
    def dagster_home(self) -> Path:
        """The Dagster instance the CLI and the UI share: inside the workspace."""
        return self.root / ".dagster"

    @property
    def source_label(self) -> str:
        return str(self.source) if self.source else "<embedded demo config>"

    def to_json(self) -> str:
        """The resolved config (absolute paths, root and source included), for handing to a step
        exactly as the caller has it, even when it was changed in memory."""
        return json.dumps({"config": self.model_dump(mode="json"), "root": str(self.root),
                           "source": str(self.source) if self.source else None})

    @classmethod
    def from_json(cls, text: str) -> Config:
        d = json.loads(text)
        return cls.model_validate(d["config"]).model_copy(
            update={"root": Path(d["root"]), "source": Path(d["source"]) if d["source"] else None})


def demo_dir() -> Path:
    """The embedded demo workspace (built by `lora-pipeline demo`)."""
    env = os.environ.get(DEMO_DIR_ENV)
    return Path(env).expanduser().resolve() if env else Path.home() / ".lora_pipeline" / "demo"


def demo_config_text() -> str:
    return importlib_resources.files("lora_pipeline").joinpath("demo_config.yaml").read_text("utf-8")


def find_config_file(cli_path: str | os.PathLike | None = None) -> Path | None:
    """The config file by CONTRACT precedence, or None for the embedded default."""
    if cli_path:
        p = Path(cli_path).expanduser()
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found (--config)")
        return p.resolve()
    env = os.environ.get(CONFIG_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found ({CONFIG_ENV})")
        return p.resolve()
    local = Path.cwd() / CONFIG_FILENAME
    return local.resolve() if local.is_file() else None


def load_config(cli_path: str | os.PathLike | None = None) -> Config:
    path = find_config_file(cli_path)
    if path is None:
        return parse_config(demo_config_text(), root=demo_dir(), source=None)
    try:
        with open(path, "rb") as f:
            data = f.read(bounded_yaml.MAX_BYTES + 1)
        if len(data) > bounded_yaml.MAX_BYTES:
            raise ConfigError(f"{path}: config larger than {bounded_yaml.MAX_BYTES} bytes (refused)")
        text = data.decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror or e.__class__.__name__})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: config is not UTF-8 text (byte {e.start})") from None
    return parse_config(text, root=path.parent, source=path)


def parse_config(text: str, root: Path, source: Path | None) -> Config:
    label = str(source) if source else "<embedded demo config>"
    try:
        raw = bounded_yaml.load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{label}: invalid YAML ({bounded_yaml.describe_error(e)})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{label}: top level must be a mapping of keys, got {type(raw).__name__}")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{label}: {_describe(e)}") from None
    return _resolve_paths(cfg, root.resolve(), source)


def _describe(e: ValidationError) -> str:
    """The first error as `key 'a.b': problem, got VALUE (+N more)`, at most 100 characters: the key
    path and a scalar value clipped, a collection named by its type, never the input's repr."""
    err = e.errors(include_url=False, include_context=False)[0]
    key = _clip(".".join(str(p) for p in err["loc"]), 48) or "<top level>"
    more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}'{more}"
    msg = err["msg"].replace("Input should be", "should be").replace("Input is", "is")
    return _clip(f"key '{key}'{more}: {msg}{_value_of(err.get('input'))}", 100)


def _value_of(got: Any) -> str:
    if isinstance(got, str):
        got = got[:60]
    if isinstance(got, str | int | float | bool) or got is None:
        return f", got {_clip(repr(got), 24)}"
    return f", got a {type(got).__name__}"


def _clip(s: str, n: int) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


def _abs(root: Path, p: Path) -> Path:
    p = p.expanduser()
    return p if p.is_absolute() else (root / p)


def _resolve_paths(cfg: Config, root: Path, source: Path | None) -> Config:
    datasets = {
        name: d.model_copy(update={"path": _abs(root, d.path)}) for name, d in cfg.datasets.items()
    }
    update: dict[str, Any] = {
        "storage": _abs(root, cfg.storage),
        "training_runs": _abs(root, cfg.training_runs),
        "base_models": {k: _abs(root, v) for k, v in cfg.base_models.items()},
        "datasets": datasets,
        "source": source,
        "root": root,
    }
    if cfg.eval.clip_model is not None:
        update["eval"] = cfg.eval.model_copy(update={"clip_model": _abs(root, cfg.eval.clip_model)})
    return cfg.model_copy(update=update)
