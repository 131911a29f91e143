"""Tests of the reference itself (tests/lora_files/reference.py), without the production path: its
merge equals diffusers' own load + fuse where diffusers is known to be exact, its per-module delta
equals what the lycoris-lora module's forward adds, its SGM mapping is the SGM layout, and it refuses
what it cannot merge exactly."""

from __future__ import annotations

import pytest

from tests.lora_files import builders as B
from tests.lora_files import builders_peft as P
from tests.lora_files import reference as R

# Files diffusers 0.42.1 loads exactly (kohya per-module alphas are not: its alpha_pattern keys match
# no module, see /work/shared/notes/diffusers-lora-pitfalls.md section 5 K4).
DIFFUSERS_EXACT = ["native", "peft_sd1", "peft_sd1_tf5_names", "peft_sdxl", "peft_rank_alpha_pattern",
                   "kohya_sd1", "kohya_sd1_locon_conv", "kohya_sdxl_sgm"]
LYCORIS = ["lycoris_locon", "lycoris_loha", "lycoris_lokr", "lycoris_dora"]


@pytest.mark.parametrize("name", DIFFUSERS_EXACT)
def test_reference_merge_equals_diffusers_load_and_fuse(name, lora_files, bases):
    import torch

    built = lora_files[name]
    base = bases[built.arch]
    fused = B.fresh_pipe(base)
    fused.load_lora_weights(str(built.path), adapter_name="refcheck")
    fused.fuse_lora()
    fused.unload_lora_weights()
    ref = R.base_pipe(base)
    pristine = B.fresh_pipe(base)
    with R.merged(ref, built.path, 1.0) as updates:
        touched = {f"{u.component}.{u.module}.weight" for u in updates}
        changed, bad = set(), []
        for comp in ("unet", "text_encoder", "text_encoder_2"):
            if getattr(ref, comp, None) is None:
                continue
            mine, theirs = dict(getattr(ref, comp).named_parameters()), dict(getattr(fused, comp).named_parameters())
            orig = dict(getattr(pristine, comp).named_parameters())
            for k, v in mine.items():
                if not torch.equal(v, orig[k]):
                    changed.add(f"{comp}.{k}")
                if not torch.allclose(v, theirs[k], rtol=1e-5, atol=1e-6):
                    bad.append(f"{comp}.{k}: max diff {float((v - theirs[k]).abs().max()):.3g}")
    assert not bad, f"{name}: reference merge != diffusers fuse in {len(bad)} tensors: {bad[:5]}"
    assert changed == touched and len(touched) == len(updates)
    assert {u.component for u in updates} == set(built.components)


def _lycoris_network(built, base):
    from lycoris import kohya as lyco_kohya

    B.quiet_lycoris()
    pipe = B.fresh_pipe(base)
    te = B.TextModelWrapper(pipe.text_encoder)
    net, _ = lyco_kohya.create_network_from_weights(1.0, str(built.path), None, te, pipe.unet)
    net.apply_to(te, pipe.unet, apply_text_encoder=True, apply_unet=True)
    return net


@pytest.mark.parametrize("name", LYCORIS)
def test_reference_delta_equals_lycoris_module_forward(name, lora_files, bases):
    """For every module: forward(x) - original forward(x) of the lycoris-lora module loaded from the
    file == x through (reference merged weight - base weight). LoHa/LoKr: alpha/r applied once (the
    forward), LoKr with both factors full: scale 1, DoRA: the magnitude rescale of W0 + dW."""
    import torch
    import torch.nn.functional as F

    built = lora_files[name]
    base = bases[built.arch]
    net = _lycoris_network(built, base)
    ref = R.base_pipe(base)
    idx = R.kohya_index(ref)
    updates = {(u.component, u.module): u for u in R.lora_updates(ref, built.path)}
    assert len(net.loras) == len(updates) > 0
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for m in net.loras:
        comp, module = idx[m.lora_name]
        w0 = R._weighted_modules(getattr(ref, comp))[module].weight.detach()
        dw = (R.merged_weight(w0, updates[(comp, module)], 1.0) - w0.double()).float()
        if m.module_type == "linear":
            x = torch.randn((3, w0.shape[1]), generator=g)
            expected = F.linear(x, dw)
        else:
            x = torch.randn((1, w0.shape[1], 8, 8), generator=g)
            expected = F.conv2d(x, dw, None, **m.kw_dict)
        with torch.no_grad():
            got = m(x) - m.org_forward(x)
        rel = float((got - expected).norm() / expected.norm())
        worst = max(worst, rel)
        assert rel < 1e-4, f"{name} {m.lora_name}: reference delta differs from the lycoris forward (rel {rel:.2e})"
    if name == "lycoris_lokr":
        kinds = {u.rank is None for u in updates.values()}
        assert kinds == {True, False}, "the LoKr file should hold both full/full (scale 1) and decomposed modules"
        assert all(u.scale == 1.0 for u in updates.values() if u.rank is None)
        assert all(u.scale == 0.5 for u in updates.values() if u.rank is not None)


def test_lycoris_merge_helpers_apply_alpha_twice_for_loha(lora_files, bases):
    """The fact the reference relies on: lycoris-lora 4.1.3's get_diff_weight for LoHa is the
    forward's delta x alpha/r again (so the reference follows the forward, not the helper)."""
    import torch

    built = lora_files["lycoris_loha"]
    net = _lycoris_network(built, bases["sd1"])
    m = net.loras[0]
    forward_delta = m.get_weight(m.shape)
    helper_delta, _ = m.get_diff_weight(multiplier=1, shape=m.shape)
    assert m.scale == 0.5
    torch.testing.assert_close(helper_delta, forward_delta * m.scale)


def test_sgm_map_of_toy_sdxl_is_the_builders_table_and_a_bijection(bases):
    import json

    cfg = json.loads((bases["sdxl"] / "unet" / "config.json").read_text())
    prefixes = R.sgm_map(cfg)
    for diffusers_prefix, sgm in B.TOY_SDXL_SGM.items():
        assert prefixes[diffusers_prefix] == sgm, diffusers_prefix
    pipe = R.base_pipe(bases["sdxl"])
    names = {n: R.to_sgm(n, prefixes) for n in R._weighted_modules(pipe.unet)}
    assert None not in names.values(), [n for n, s in names.items() if s is None]
    assert len(set(names.values())) == len(names)


def test_sgm_map_of_real_sdxl_layout():
    """Known SGM names of the real SDXL UNet (as in kohya SDXL LoRA keys)."""
    cfg = {"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
           "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "layers_per_block": 2}
    p = R.sgm_map(cfg)
    expected = {
        "down_blocks.0.resnets.1.conv1": "input_blocks.2.0.in_layers.2",
        "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
        "down_blocks.1.downsamplers.0.conv": "input_blocks.6.0.op",
        "down_blocks.2.attentions.1.proj_in": "input_blocks.8.1.proj_in",
        "mid_block.attentions.0.transformer_blocks.9.ff.net.2": "middle_block.1.transformer_blocks.9.ff.net.2",
        "mid_block.resnets.1.time_emb_proj": "middle_block.2.emb_layers.1",
        "up_blocks.0.attentions.2.proj_out": "output_blocks.2.1.proj_out",
        "up_blocks.0.upsamplers.0.conv": "output_blocks.2.2.conv",
        "up_blocks.1.resnets.0.conv_shortcut": "output_blocks.3.0.skip_connection",
        "up_blocks.1.upsamplers.0.conv": "output_blocks.5.2.conv",
        "up_blocks.2.resnets.2.conv2": "output_blocks.8.0.out_layers.3",
        "conv_in": "input_blocks.0.0", "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0", "conv_out": "out.2",
    }
    assert {k: R.to_sgm(k, p) for k in expected} == expected


def test_reference_refuses_what_it_cannot_merge(tmp_path, lora_files, bases):
    import torch
    from safetensors.torch import load_file, save_file

    pipe = R.base_pipe(bases["sd1"])
    sd = load_file(str(lora_files["kohya_sd1"].path))
    bad = dict(sd, **{"lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight": torch.ones(4, 32, 1, 1),
                      "lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight": torch.ones(32, 4, 1, 1)})
    save_file(bad, str(tmp_path / "unknown_module.safetensors"))
    with pytest.raises(R.MergeError, match="not in the base model"):
        R.lora_updates(pipe, tmp_path / "unknown_module.safetensors")
    key = next(k for k in sd if k.endswith(".lora_down.weight"))
    save_file(dict(sd, **{key.replace("lora_down.weight", "lora_mid.weight"): torch.ones(4, 4, 3, 3)}),
              str(tmp_path / "tucker.safetensors"))
    with pytest.raises(R.MergeError, match="unsupported tensors"):
        R.lora_updates(pipe, tmp_path / "tucker.safetensors")
    save_file({"unet.conv_in.weight": torch.ones(32, 4, 3, 3)}, str(tmp_path / "full.safetensors"))
    with pytest.raises(R.MergeError):
        R.lora_updates(pipe, tmp_path / "full.safetensors")


def test_pixel_match_tolerance():
    import numpy as np

    a = np.full((8, 8, 3), 100, np.uint8)
    assert R.pixel_match(a, a).ok
    b = a.copy()
    b[0, 0, 0] += R.MAX_ABS_LEVELS
    assert R.pixel_match(a, b).ok
    b[0, 0, 0] += 1
    assert not R.pixel_match(a, b).ok and R.pixel_match(a, b).max_abs == R.MAX_ABS_LEVELS + 1
    c = a.copy()
    c[:2] += 1  # max 1 level, mean 0.25 level
    assert not R.pixel_match(a, c).ok


def test_planted_pickle_payload_is_live(tmp_path, pickle_files):
    """The pickles' payload does create its marker when unpickled (so the by-value test's 'marker
    absent' proves the file was never unpickled): unpickle a copy with its own marker."""
    import torch

    for name, built in pickle_files.items():
        marker = tmp_path / f"{name}.marker"
        copy = P.pickle_renamed(tmp_path / f"{name}-copy.safetensors", marker, legacy="legacy" in name)
        assert copy.path.read_bytes()[:2] == built.path.read_bytes()[:2]
        as_pt = copy.path.with_suffix(".pt")  # torch 2.13's torch.load hands *.safetensors to safetensors
        copy.path.rename(as_pt)
        torch.load(str(as_pt), weights_only=False)
        assert marker.exists()
        assert not built.extra["marker"].exists()
