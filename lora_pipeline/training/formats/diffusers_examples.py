"""The diffusers example scripts (train_text_to_image_lora.py, train_dreambooth_lora*.py):
`checkpoint-<step>/pytorch_lora_weights.safetensors` beside accelerate state, final
`pytorch_lora_weights.safetensors`, tensorboard logs under `logs/` where accelerate's tracker also
writes the arguments (`vars(args)`) as `hparams.yml`."""

from __future__ import annotations

from pathlib import Path

from lora_pipeline.training.common import ParsedRun, as_float, as_int, read_config, resolution
from lora_pipeline.training.formats.simpletuner import WEIGHTS, checkpoint_dirs
from lora_pipeline.training.tensorboard import loss_from_logs


def detect(folder: Path) -> bool:
    return (folder / WEIGHTS).is_file() or any(folder.glob(f"checkpoint-*/{WEIGHTS}"))


def parse(folder: Path) -> ParsedRun:
    run = ParsedRun(format="diffusers")
    checkpoint_dirs(folder, run)
    logs = folder / "logs"
    if logs.is_dir():
        for hp in sorted(logs.rglob("hparams.yml"))[-1:]:
            doc = read_config(hp, run, folder)
            if isinstance(doc, dict):
                src = hp.relative_to(folder).as_posix()
                run.fact("base_model.name", doc.get("pretrained_model_name_or_path"), src)
                run.fact("rank", as_int(doc.get("rank")), src)
                run.fact("alpha", as_float(doc.get("lora_alpha")), src)  # text_to_image_lora: alpha=rank, unstated
                run.fact("learning_rate", as_float(doc.get("learning_rate")), src)
                run.fact("steps", as_int(doc.get("max_train_steps")), src)
                run.fact("resolution", resolution(doc.get("resolution")), src)
                run.fact("dataset.path", doc.get("train_data_dir") or doc.get("instance_data_dir")
                         or doc.get("dataset_name"), src)
                run.fact("optimizer", "AdamW8bit" if doc.get("use_8bit_adam") else
                         ("prodigy" if str(doc.get("optimizer", "")).lower() == "prodigy" else "AdamW"), src)
                run.extra.update({k: doc[k] for k in ("instance_prompt", "validation_prompt", "seed") if k in doc})
        loss, tag = loss_from_logs(logs)
        run.loss, run.extra["loss_tag"] = loss, tag
    return run
