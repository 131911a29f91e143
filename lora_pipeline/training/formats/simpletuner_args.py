"""SimpleTuner's training arguments (`--model_family`, `--lora_rank`, `--flux_guidance_value`, ...) as
run facts, from any dump of them: the full argument set (`simpletuner_config.json`, accelerate's
`hparams.yml`, the user's `config.json` with or without the leading `--`) or the subset the
`training_metrics.json` manifest keeps. Defaults and overrides are SimpleTuner's own
(helpers/models/{flux,flux2,sd3}/model.py, helpers/models/common.py at bc8e6ab)."""

from __future__ import annotations

import math
from typing import Any

from lora_pipeline.training.common import ParsedRun, architecture, as_bool, as_float, as_int, resolution

# The model each family loads for a flavour when pretrained_model_name_or_path is unset, and the
# flavour it picks when that is unset too (HUGGINGFACE_PATHS, DEFAULT_MODEL_FLAVOUR).
HUGGINGFACE_PATHS = {
    "flux": {"dev": "black-forest-labs/flux.1-dev", "krea": "black-forest-labs/flux.1-krea-dev",
             "schnell": "black-forest-labs/flux.1-schnell", "kontext": "black-forest-labs/flux.1-kontext-dev"},
    "flux2": {"dev": "black-forest-labs/FLUX.2-dev", "klein-4b": "black-forest-labs/FLUX.2-klein-base-4B",
              "klein-9b": "black-forest-labs/FLUX.2-klein-base-9B"},
    "sd3": {"medium": "stabilityai/stable-diffusion-3.5-medium", "large": "stabilityai/stable-diffusion-3.5-large"},
}
DEFAULT_FLAVOUR = {"flux": "krea", "flux2": "klein-9b", "sd3": "medium"}
SD3_T5_MAX = 154  # sd3 check_user_config caps --tokenizer_max_length here
# --resolution_type=area: megapixels, the round values remapped to these edges (training_sample.py)
_AREA_EDGES = {0.25: 512, 0.5: 768, 1.0: 1024, 2.0: 1536, 4.0: 2048}


def _str(v: Any) -> str | None:
    """A string argument; null, "None" and non-strings (a hand-edited config) are no value."""
    return v.strip() if isinstance(v, str) and v.strip() not in ("", "None") else None


def _resolution(args: dict[str, Any]) -> int | None:
    res = as_float(args.get("resolution"))
    # --resolution_type=area gives megapixels; the manifest drops resolution_type, but no pixel edge is < 16
    area = str(args.get("resolution_type") or "").lower() == "area" or (res is not None and res < 16)
    if area and res is not None and 0 < res < 100:
        edge = next((e for mp, e in _AREA_EDGES.items() if abs(res - mp) < 0.05), None)
        return edge or int(round(math.sqrt(res * 1e6) / 64) * 64)
    return resolution(args.get("resolution"))


def args_facts(args: dict[str, Any], run: ParsedRun, src: str, *, full: bool) -> None:
    """`full`: the whole argument set, where an absent or null argument means SimpleTuner's default."""
    family = (_str(args.get("model_family")) or "").lower()
    flavour = _str(args.get("model_flavour")) or _str(args.get("model_flavor"))
    base = _str(args.get("pretrained_model_name_or_path"))
    if not base and full and family in DEFAULT_FLAVOUR:  # SimpleTuner then loads the flavour's model
        if not flavour:
            flavour = DEFAULT_FLAVOUR[family]
            run.training_fact("model_variant", flavour, f"{src} (model_flavour unset: SimpleTuner's default)")
        run.fact("base_model.name", HUGGINGFACE_PATHS[family].get(str(flavour)),
                 f"{src} (pretrained_model_name_or_path unset: the model of flavour {flavour})")
    run.training_fact("model_variant", flavour, src)
    run.fact("base_model.name", base, src)
    run.fact("base_model.architecture", architecture(family), src)
    run.fact("learning_rate", as_float(args.get("learning_rate", args.get("lr"))), src)
    run.fact("resolution", _resolution(args), src)
    rank = as_int(args.get("lora_rank"))
    run.fact("rank", rank, src)
    alpha = as_float(args.get("lora_alpha"))
    if alpha is None and rank and full and str(args.get("lora_type") or "standard").lower() == "standard":
        run.fact("alpha", float(rank), f"{src} (lora_alpha unset: SimpleTuner uses the rank)")
    run.fact("alpha", alpha, src)
    run.fact("optimizer", _str(args.get("optimizer")), src)
    run.fact("steps", as_int(args.get("max_train_steps")), src)
    run.fact("epochs", as_int(args.get("num_train_epochs")) or None, src)  # 0: steps decide
    run.fact("dataset.path", _str(args.get("instance_data_dir")) or _str(args.get("data_dir")), src)
    run.fact("trigger", _str(args.get("instance_prompt")), src)
    run.training_fact("validation_prompt", _str(args.get("validation_prompt")), src)
    run.training_fact("sample_guidance_scale", as_float(args.get("validation_guidance")), src)
    run.training_fact("sample_steps", as_int(args.get("validation_num_inference_steps")), src)
    run.training_fact("flow_shift", as_float(args.get("flow_schedule_shift")), src)
    _guidance(args, run, src, family, str(flavour or ""), full)
    _text_length(args, run, src, family, str(flavour or ""), full)
    if _str(args.get("data_backend_config")):
        run.extra.setdefault("data_backend_config", args["data_backend_config"])


def _guidance(args: dict, run: ParsedRun, src: str, family: str, flavour: str, full: bool) -> None:
    """The distilled-guidance value FLUX trains with (--flux_guidance_mode/value/min/max); FLUX.2
    klein has no guidance embedding, so none applies there."""
    if family not in ("flux", "flux2") or flavour.startswith("klein"):
        return
    mode = _str(args.get("flux_guidance_mode")) or ("constant" if full else None)
    run.training_fact("guidance_mode", mode, src)
    if mode == "constant":
        value = as_float(args.get("flux_guidance_value"))
        run.training_fact("guidance_scale", value if value is not None or not full else 1.0, src)
    elif mode == "random-range":
        lo, hi = as_float(args.get("flux_guidance_min")), as_float(args.get("flux_guidance_max"))
        run.training_fact("guidance_min", lo if lo is not None or not full else 0.0, src)
        run.training_fact("guidance_max", hi if hi is not None or not full else 4.0, src)


def _text_length(args: dict, run: ParsedRun, src: str, family: str, flavour: str, full: bool) -> None:
    """T5 tokens per prompt: FLUX.1 ignores --tokenizer_max_length (512, schnell 256); SD3 defaults to
    and caps at 154 unless --i_know_what_i_am_doing."""
    if family == "flux":
        run.training_fact("t5_max_tokens", 256 if flavour == "schnell" else 512,
                          f"{src} (model_family flux: SimpleTuner fixes the T5 length)")
    elif family == "sd3":
        n = as_int(args.get("tokenizer_max_length"))
        if n is None and not full:
            return
        if n is None or (n > SD3_T5_MAX and not as_bool(args.get("i_know_what_i_am_doing"))):
            n = SD3_T5_MAX
        run.training_fact("t5_max_tokens", n, src)
    if family == "flux":
        mask = as_bool(args.get("flux_attention_masked_training"))
        run.training_fact("t5_attn_mask", False if mask is None and full else mask, src)
