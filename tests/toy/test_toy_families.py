"""The SD3, FLUX.1 and FLUX.2 toy models on real diffusers: they load as their family's pipeline,
render deterministically, rebuild byte for byte, come out of the CLI, and take a peft LoRA."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from lora_pipeline.cli import main
from lora_pipeline.toy.base import resolve_family, write_toy_base

FAMILIES = ["sd3", "flux1", "flux2"]
PIPELINE = {"sd3": "StableDiffusion3Pipeline", "flux1": "FluxPipeline", "flux2": "Flux2KleinPipeline"}
PROMPT = "a photo of sks_chair on a white background"


def _base(request, family):
    return request.getfixturevalue(f"toy_{family}_base")


def _load(folder):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(folder)


def _render(pipe, seed: int = 1) -> np.ndarray:
    import torch

    # prompt= by keyword: Flux2KleinPipeline's first positional parameter is `image`.
    img = pipe(prompt=PROMPT, num_inference_steps=2, height=64, width=64,
               generator=torch.Generator().manual_seed(seed)).images[0]
    return np.asarray(img)


def _hashes(folder) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_loads_as_the_family_pipeline(request, family):
    import diffusers

    folder = _base(request, family)
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == PIPELINE[family]
    marker = json.loads((folder / "toy_model.json").read_text())
    assert (marker["family"], marker["pipeline"], marker["seed"]) == (family, PIPELINE[family], 0)
    pipe = _load(folder)
    assert type(pipe).__name__ == PIPELINE[family]
    assert type(getattr(diffusers, PIPELINE[family]).from_pretrained(folder)) is type(pipe)
    assert not list(folder.glob(".*")), "no scratch folders left behind"


def test_token_limits_as_configured(toy_sd3_base, toy_flux1_base, toy_flux2_base):
    from transformers import CLIPTokenizer, Qwen2TokenizerFast, T5TokenizerFast

    for folder, sub in ((toy_sd3_base, "tokenizer"), (toy_sd3_base, "tokenizer_2"), (toy_flux1_base, "tokenizer")):
        assert (folder / sub / "merges.txt").is_file()  # CLIP's own file format, as real folders ship it
        assert CLIPTokenizer.from_pretrained(folder / sub).model_max_length == 77
    for folder, sub in ((toy_sd3_base, "tokenizer_3"), (toy_flux1_base, "tokenizer_2")):
        t5 = T5TokenizerFast.from_pretrained(folder / sub)
        assert t5.model_max_length == 512
        ids = t5(PROMPT).input_ids
        assert ids[-1] == t5.eos_token_id and t5.unk_token_id not in ids
        assert t5.decode(ids, skip_special_tokens=True) == PROMPT
    qwen = Qwen2TokenizerFast.from_pretrained(toy_flux2_base / "tokenizer")
    assert qwen.model_max_length == 512
    text = qwen.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                    add_generation_prompt=True, enable_thinking=False)
    assert text == f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert qwen.decode(qwen(text).input_ids) == text


def test_flux2_prompt_embeds_stack_three_qwen_layers(toy_flux2_base):
    pipe = _load(toy_flux2_base)
    embeds, text_ids = pipe.encode_prompt(PROMPT)  # default layers (9, 18, 27), 512 tokens
    width = pipe.text_encoder.config.hidden_size
    assert tuple(embeds.shape) == (1, 512, 3 * width) == (1, 512, pipe.transformer.config.joint_attention_dim)
    assert tuple(text_ids.shape) == (1, 512, 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_render_64px_is_deterministic(request, family):
    pipe = _load(_base(request, family))
    a, b, c = _render(pipe, 1), _render(pipe, 1), _render(pipe, 2)
    assert a.shape == (64, 64, 3) and a.std() > 0
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_rebuild_with_the_same_seed_is_byte_identical(request, tmp_path, capsys, family):
    out = tmp_path / family
    assert main(["toy-base", str(out), "--family", family]) == 0
    assert str(out) in capsys.readouterr().out
    assert _hashes(out) == _hashes(_base(request, family))


def test_another_seed_gives_other_weights(tmp_path, toy_flux1_base):
    other = write_toy_base(tmp_path / "other", seed=1, family="flux1")
    ours, theirs = _hashes(toy_flux1_base), _hashes(other)
    for part in ("transformer/diffusion_pytorch_model.safetensors", "text_encoder_2/model.safetensors"):
        assert ours[part] != theirs[part]
    assert ours["tokenizer_2/tokenizer.json"] == theirs["tokenizer_2/tokenizer.json"]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_peft_lora_on_the_transformer_changes_the_render(request, family):
    from peft import LoraConfig

    pipe = _load(_base(request, family))
    base = _render(pipe)
    # Random lora_B (init_lora_weights=False): a freshly initialised LoRA is a no-op by design.
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False)
    pipe.transformer.add_adapter(config, adapter_name="probe")
    wrapped = [n for n, m in pipe.transformer.named_modules() if hasattr(m, "lora_A") and "probe" in m.lora_A]
    assert wrapped and all(n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") for n in wrapped)
    assert not np.array_equal(_render(pipe), base)
    pipe.transformer.disable_adapters()
    assert np.array_equal(_render(pipe), base)


def test_unknown_family_is_exit_2_with_one_line(tmp_path, capsys):
    assert main(["toy-base", str(tmp_path / "x"), "--family", "flux3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--family" in err and "flux3" in err
    assert main(["toy-base", str(tmp_path / "x"), "--family", "sd3", "--sdxl"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="flux3"):
        write_toy_base(tmp_path / "y", family="flux3")
    with pytest.raises(ValueError):
        write_toy_base(tmp_path / "y", sdxl=True, family="flux1")


def test_sdxl_flag_is_an_alias_of_family_sdxl():
    assert resolve_family(None, sdxl=True) == resolve_family("sdxl") == "sdxl"
    assert resolve_family(None) == "sd1"


def test_help_lists_the_families_without_importing_torch():
    probe = ("import sys\nfrom lora_pipeline.cli import main\ntry:\n    main(['toy-base', '--help'])\n"
             "except SystemExit:\n    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().endswith("False")
    assert "sd1,sdxl,sd3,flux1,flux2" in out.stdout
