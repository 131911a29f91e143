"""One parser per trainer format. Each module has `detect(folder) -> bool` and
`parse(folder) -> ParsedRun`; `FORMATS` lists them in detection order (most specific first).
`simpletuner_args` is no format: it reads SimpleTuner's arguments for the simpletuner parser."""

from __future__ import annotations

from lora_pipeline.training.formats import (
    aitoolkit,
    diffusers_examples,
    generic,
    kohya,
    native,
    onetrainer,
    simpletuner,
)

FORMATS = {
    "native": native,
    "ai-toolkit": aitoolkit,
    "simpletuner": simpletuner,
    "onetrainer": onetrainer,
    "diffusers": diffusers_examples,
    "kohya": kohya,
    "generic": generic,
}


def detect_format(folder) -> str:
    for name, module in FORMATS.items():
        if module.detect(folder):
            return name
    return "generic"
