"""Our renders read like A1111's own: sd-parsers (what the ecosystem's tools use) and A1111's infotext
grammar recover every field from the PNGs of every arm; sampler names, LoRA short hash, no empty
negative line."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from PIL import Image

from lora_pipeline.render import infotext, manifest


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, toy_base):
    from tests.evaluation_helpers import evaluate, tiny_spec
    from tests.render.conftest import make_lora

    d = tmp_path_factory.mktemp("infotext")
    lora = make_lora(toy_base, d / "chairs-000010.safetensors")
    out = {}
    for name, neg in (("with_negative", "blurry, lowres"), ("no_negative", "")):
        r = evaluate(toy_base, "sd1", lora, d / name, spec=tiny_spec(negative_prompt=neg))
        assert {x["arm"] for x in r.renders} == {"base", "lora_no_trigger", "lora_trigger"}
        out[name] = [(d / name / x["path"], json.loads((d / name / x["manifest"]).read_text())) for x in r.renders]
    return lora, out


def _addnet(path) -> str:
    data = path.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()[:12]


def test_sd_parsers_reads_every_field_of_every_arm(rendered):
    from sd_parsers import ParserManager

    lora, runs = rendered
    for png, side in runs["with_negative"]:
        with Image.open(png) as im:
            info = ParserManager().parse(im)
        assert info is not None and info.generator.name == "AUTOMATIC1111", png
        (sampler,) = info.samplers
        assert sampler.name == "DDIM"
        params = sampler.parameters
        assert (params["steps"], params["seed"], params["cfg_scale"]) == (str(side["steps"]), str(side["seed"]), "5")
        assert sampler.model.hash == side["base_model"]["sha256"][:10] and sampler.model.name == side["base_model"]["name"]
        prompt = sampler.prompts[0].value
        negative = sampler.negative_prompts[0].value
        assert negative == side["negative_prompt"]
        if side["arm"] == "base":
            assert prompt == side["prompt"]
        else:
            assert prompt == f"{side['prompt']} <lora:{lora.stem}:1>"
        assert info.metadata["Size"] == "64x64"


def test_a1111_grammar_gets_every_field_back(rendered):
    """A1111's parse_generation_parameters: prompt lines, `Negative prompt:` lines, and the last line's
    `Key: value` pairs (quoted values JSON-decoded)."""
    lora, runs = rendered
    pair = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
    for png, side in runs["with_negative"] + runs["no_negative"]:
        text = manifest.read_png_chunks(png)["parameters"]
        *body, last = text.split("\n")
        params = {k.strip(): (json.loads(v) if v.startswith('"') else v.strip()) for k, v in pair.findall(last)}
        neg_lines = [ln for ln in body if ln.startswith("Negative prompt: ")]
        if side["negative_prompt"]:
            assert neg_lines == [f"Negative prompt: {side['negative_prompt']}"]
        else:
            assert neg_lines == [] and "Negative prompt" not in text  # no bare, empty line
        assert params["Steps"] == str(side["steps"]) and params["Sampler"] == "DDIM" and "Schedule type" not in params
        assert params["CFG scale"] == "5" and params["Seed"] == str(side["seed"]) and params["Size"] == "64x64"
        assert params["Model hash"] == side["base_model"]["sha256"][:10] and params["Model"] == side["base_model"]["name"]
        if side["arm"] == "base":
            assert "Lora hashes" not in params
        else:
            assert params["Lora hashes"] == f"{lora.stem}: {_addnet(lora)}"
            assert side["lora"]["short_hash"] == _addnet(lora)
        assert side["sampler_a1111"] == {"sampler": "DDIM", "schedule_type": None, "known": True}


def test_lora_short_hash_ignores_header_edits_and_prefers_sshs_model_hash(rendered, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    lora, _ = rendered
    with safe_open(str(lora), "pt") as fh:
        meta = fh.metadata()
    edited = tmp_path / "edited.safetensors"
    save_file(load_file(str(lora)), str(edited), metadata={**meta, "modelspec.title": "renamed " * 20})
    assert hashlib.sha256(edited.read_bytes()).hexdigest() != hashlib.sha256(lora.read_bytes()).hexdigest()
    assert infotext.lora_short_hash(edited, meta) == infotext.lora_short_hash(lora, meta) == _addnet(lora)
    declared = "AB" * 32
    assert infotext.lora_short_hash(lora, {"sshs_model_hash": declared}) == declared[:12].lower()
    assert infotext.lora_short_hash(lora, {"sshs_model_hash": "not a hash"}) == _addnet(lora)


def test_kohya_toy_files_carry_the_hashes_sd_scripts_writes(kohya_run):
    from safetensors import safe_open

    f = kohya_run / "run-kohya.safetensors"
    with safe_open(str(f), "pt") as fh:
        meta = fh.metadata()
    assert meta["sshs_model_hash"][:12] == _addnet(f)  # the tensor bytes do not depend on the header
    assert re.fullmatch(r"[0-9a-f]{8}", meta["sshs_legacy_hash"])


@pytest.mark.parametrize(("cls", "config", "expected"), [
    ("EulerAncestralDiscreteScheduler", {}, ("Euler a", None, True)),
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True}, ("Euler", "Karras", True)),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, ("DPM++ 2M", "Karras", True)),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, ("DPM++ 2M SDE", None, True)),
    ("PNDMScheduler", {}, ("PLMS", None, True)),
    ("DDPMScheduler", {}, ("DDPMScheduler", None, False)),  # no A1111 name: as-is, flagged
])
def test_a1111_sampler_names_of_real_diffusers_schedulers(cls, config, expected):
    import diffusers

    sched = getattr(diffusers, cls)(**config)
    got = infotext.a1111_sampler(sched)
    assert (got["sampler"], got["schedule_type"], got["known"]) == expected
    text = infotext.infotext({"prompt": "p", "negative_prompt": "", "steps": 2, "scheduler": cls, "sampler_a1111": got,
                              "guidance_scale": 5.0, "seed": 1, "width": 8, "height": 8,
                              "base_model": {"sha256": "0" * 64, "name": "toy"}})
    params = infotext.parse_infotext(text)["params"]
    assert params["Sampler"] == expected[0] and params.get("Schedule type") == expected[1]
