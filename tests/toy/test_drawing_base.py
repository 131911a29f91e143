"""The drawing toy base on real diffusers: the shipped weights match the code's recipe, the folder loads
as StableDiffusionPipeline, a prompt's colours show in the picture and its words change it more than a
change of seed does, the training script runs from a seed and reproduces itself, and the CLI writes it."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest

from lora_pipeline.cli import main
from lora_pipeline.toy import drawing_base, scenes
from lora_pipeline.toy.train_base import RECIPE, train_drawing_base


@pytest.fixture(scope="module")
def draw_base(tmp_path_factory):
    return drawing_base.write_drawing_base(tmp_path_factory.mktemp("models") / "toy-draw")


@pytest.fixture(scope="module")
def draw_pipe(draw_base):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(draw_base, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _render(pipe, prompt: str, seed: int) -> np.ndarray:
    import torch

    img = pipe(prompt, num_inference_steps=12, guidance_scale=5.0, height=64, width=64,
               generator=torch.Generator().manual_seed(seed)).images[0]
    return np.asarray(img, dtype=np.float64)


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    return min(palette, key=lambda k: float(np.abs(np.asarray(palette[k]) - rgb).sum()))


def test_shipped_weights_match_the_code_recipe_and_are_small():
    meta = drawing_base.read_meta()
    assert meta["recipe_id"] == drawing_base.recipe_id(), \
        "the architecture, scene grammar or recipe changed: rebuild lora_pipeline/toy/weights with " \
        "`lora-pipeline toy-base /tmp/toy-draw --drawing --train --weights lora_pipeline/toy/weights/drawing-base.safetensors`"
    assert meta["recipe"] == RECIPE
    assert drawing_base.WEIGHTS.stat().st_size < 5_000_000
    assert meta["vae_scaling_factor"] > 0


def test_folder_is_an_sd1_pipeline_with_the_scene_tokenizer(draw_base, draw_pipe):
    import json

    index = json.loads((draw_base / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    marker = json.loads((draw_base / "toy_model.json").read_text())
    assert marker["family"] == "sd1" and marker["recipe_id"] == drawing_base.recipe_id()
    # Every word of the grammar is known: no unknown token, and the pieces spell the prompt back.
    prompt = "a purple diamond on a pink background"
    ids = draw_pipe.tokenizer(prompt).input_ids
    assert draw_pipe.tokenizer.unk_token_id not in ids[1:-1]
    assert draw_pipe.tokenizer.decode(ids, skip_special_tokens=True).strip() == prompt
    assert draw_pipe.vae.config.scaling_factor == pytest.approx(drawing_base.read_meta()["vae_scaling_factor"])
    assert draw_pipe.vae_scale_factor == 4 and draw_pipe.unet.config.sample_size == 16


@pytest.mark.parametrize(("colour", "shape", "background"), [
    ("red", "circle", "white"), ("yellow", "square", "blue"), ("white", "cross", "green"),
    ("orange", "circle", "gray"), ("green", "triangle", "black")])
def test_the_prompt_sets_the_background_and_the_object_colour(draw_pipe, colour, shape, background):
    """Border pixels take the prompted background, the object's pixels the prompted colour, on every seed."""
    for seed in (1, 2):
        img = _render(draw_pipe, f"a {colour} {shape} on a {background} background", seed)
        border = np.concatenate([img[:3].reshape(-1, 3), img[-3:].reshape(-1, 3)]).mean(axis=0)
        assert _nearest(border, scenes.BACKGROUNDS) == background, (seed, border)
        far = np.abs(img - border).sum(axis=2) > 120  # pixels clearly unlike the background: the object
        assert far.mean() > 0.05, (seed, far.mean())
        obj = np.median(img[far], axis=0)
        assert _nearest(obj, scenes.COLOURS) == colour, (seed, obj)


def test_the_prompt_changes_the_picture_more_than_the_seed(draw_pipe):
    """Another colour word moves the picture far more than another seed does."""
    red = [_render(draw_pipe, "a red circle on a white background", s) for s in (1, 2)]
    blue = [_render(draw_pipe, "a blue circle on a white background", s) for s in (1, 2)]
    seed_change = np.abs(red[0] - red[1]).mean()
    colour_change = np.mean([np.abs(red[i] - blue[i]).mean() for i in (0, 1)])
    assert colour_change > 2 * seed_change, (colour_change, seed_change)


def test_scenes_are_seeded_and_the_base_world_has_no_chair():
    a = [scenes.base_scene(random.Random(3)) for _ in range(3)]
    assert a == [scenes.base_scene(random.Random(3)) for _ in range(3)]
    rng = random.Random(0)
    drawn = {scenes.base_scene(rng).shape for _ in range(500)}
    assert drawn == set(scenes.SHAPES) and scenes.CONCEPT not in drawn
    chair = scenes.concept_scene(random.Random(0))
    assert chair.shape == "chair" and chair.caption("sks_chair").startswith(f"a {chair.colour} sks_chair on a ")
    assert chair.colour != chair.background


def test_concept_dataset_with_planted_faults(tmp_path):
    from lora_pipeline.dataset.layout import list_dataset

    out = scenes.write_concept_dataset(tmp_path / "d", "sks_chair", n=5, faults=("orphan_caption",
                                                                                 "respelled_trigger"))
    assert len(list(out.glob("img_0*.png"))) == 5 and (out / "img_orphan.txt").is_file()
    assert "SKS CHAIR" in (out / "img_002.txt").read_text()
    assert (out / "img_000.txt").read_text().strip().endswith("background")
    assert len(list_dataset(out).pairs) >= 5
    with pytest.raises(ValueError):
        scenes.write_concept_dataset(tmp_path / "e", "sks_chair", n=3, faults=("nonsense",))


def test_training_script_runs_from_a_seed_and_reproduces_itself(tmp_path):
    import torch
    from safetensors.torch import load_file

    tiny = copy.deepcopy(RECIPE)
    tiny["vae"]["steps"], tiny["unet"]["steps"], tiny["pool"] = 2, 3, 64
    threads = torch.get_num_threads()
    metas = [train_drawing_base(tmp_path / f"w{i}.safetensors", tiny) for i in (0, 1)]
    assert torch.get_num_threads() == threads  # restored
    w0, w1 = (load_file(str(tmp_path / f"w{i}.safetensors")) for i in (0, 1))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)  # same seed, same weights
    assert {k: v for k, v in metas[0].items() if k != "training"} == \
        {k: v for k, v in metas[1].items() if k != "training"}  # "training" holds the timings
    assert metas[0]["recipe_id"] == drawing_base.recipe_id(tiny) != drawing_base.recipe_id()
    out = drawing_base.write_drawing_base(tmp_path / "tiny-draw", tmp_path / "w0.safetensors")
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    with pytest.raises(FileExistsError):
        drawing_base.write_drawing_base(out, tmp_path / "w0.safetensors")


def test_cli_writes_the_drawing_base_and_refuses_bad_combinations(tmp_path, capsys):
    assert main(["toy-base", str(tmp_path / "d"), "--drawing"]) == 0
    assert "drawing base" in capsys.readouterr().out
    assert (tmp_path / "d" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert main(["toy-base", str(tmp_path / "d"), "--drawing"]) == 2  # not empty
    assert main(["toy-base", str(tmp_path / "e"), "--drawing", "--family", "sdxl"]) == 2
    assert main(["toy-base", str(tmp_path / "e"), "--drawing", "--train"]) == 2  # --train needs --weights
    assert main(["toy-base", str(tmp_path / "e"), "--drawing", "--seed", "3"]) == 2
    assert main(["toy-base", str(tmp_path / "e"), "--train"]) == 2  # --train goes with --drawing
    assert main(["toy-base", str(tmp_path / "e"), "--drawing", "--weights", str(tmp_path / "none")]) == 2
    assert not (tmp_path / "e").exists()
