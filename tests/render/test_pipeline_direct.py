"""A base folder loads through its own pipeline class when diffusers' auto pipeline would pick that
same class (lora_pipeline/render/pipeline.py: DIRECT_CLASSES), skipping the auto pipeline's import."""

from __future__ import annotations

import json


def test_direct_classes_are_what_the_auto_pipeline_resolves_them_to():
    from diffusers.pipelines.auto_pipeline import AUTO_TEXT2IMAGE_PIPELINES_MAPPING, _get_task_class

    from lora_pipeline.render.pipeline import DIRECT_CLASSES

    for name in DIRECT_CLASSES:
        assert _get_task_class(AUTO_TEXT2IMAGE_PIPELINES_MAPPING, name).__name__ == name


def test_direct_class_of_a_folder(tmp_path):
    from lora_pipeline.render.pipeline import _direct_class

    assert _direct_class(tmp_path) is None  # no model_index.json: the auto pipeline decides (and reports)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    assert _direct_class(tmp_path) == "StableDiffusionPipeline"
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionImg2ImgPipeline"}))
    assert _direct_class(tmp_path) is None  # mapped to another class by the auto pipeline
    (tmp_path / "model_index.json").write_text("not json")
    assert _direct_class(tmp_path) is None
