"""Files diffusers cannot load as they are, carried by peft's own tuners:

- LyCORIS LoHa and LoKr files, which diffusers' `load_lora_weights` refuses (`inject_lycoris`);
- LoRA files in the original FLUX.1 layout (kohya `lora_unet_double_blocks_*`, BFL/ComfyUI
  `diffusion_model.*`) whose fused projections (qkv, linear1) the model splits into several modules
  (`inject_split_lora`): diffusers' converter hard-codes FLUX.1-dev's widths (3072 / 12288) and knows
  no `diffusion_model.` LoRA keys, so we split each fused B along its output by the model's own widths
  (every part keeps the file's A) and give each module the file's alpha/rank.

peft's tuners compute the same update as the LyCORIS module's forward (and as ComfyUI and A1111):
LoHa (w1a·w1b) ⊙ (w2a·w2b) · scale, LoKr kron(w1, w2) · scale. peft picks its own factor shapes
from the layer and rank, so after injecting we put the file's factors in place as they are (a full
`lokr_w1` where the file has one, a decomposed `lokr_w2_a/b` where it has those, Tucker cores where
present) and set the layer's alpha so that peft's scale formula gives the file's scale. The result is
then verified by value like every other load (lora/verify.py).
"""

from __future__ import annotations

import re
from typing import Any

from lora_pipeline.fsutil import first_line
from lora_pipeline.lora.formats import FileModule, ParsedFile
from lora_pipeline.lora.safetensors_file import SafetensorsFile
from lora_pipeline.lora.verify import LYCORIS_PARAMS


class InjectionError(RuntimeError):
    """A module of the file cannot be carried by peft's tuner; the message names algorithm and layer."""


def inject_lycoris(pipe: Any, sf: SafetensorsFile, parsed: ParsedFile,
                   located: dict[str, tuple[str, tuple[str, ...]] | None], adapter: str) -> int:
    """Inject the file's LoHa or LoKr modules as peft adapter `adapter`; returns the modules injected.
    Modules with no model counterpart are left out (the verification counts them as missing)."""
    import torch
    from peft import LoHaConfig, LoKrConfig, inject_adapter_in_model

    algo = next(iter(parsed.algorithms & {"loha", "lokr"}))
    by_comp: dict[str, list[tuple[FileModule, str]]] = {}
    for fm in parsed.modules:
        if fm.algorithm == algo and located.get(fm.key):
            comp, names = located[fm.key]
            if len(names) != 1:  # a fused projection: no LoHa/LoKr layer can be split across modules
                raise InjectionError(f"{fm.key}: a {algo} module on a fused projection ({'+'.join(names)}) "
                                     "cannot be split across the model's modules")
            by_comp.setdefault(comp, []).append((fm, names[0]))
    n = 0
    for comp, items in by_comp.items():
        model = getattr(pipe, comp)
        tucker = any(("hada_t1" in fm.parts or "lokr_t2" in fm.parts) for fm, _ in items)
        rank = max((fm.rank or 1) for fm, _ in items)
        cls = LoHaConfig if algo == "loha" else LoKrConfig
        cfg = cls(r=rank, alpha=rank, target_modules=[name for _, name in items], use_effective_conv2d=tucker)
        try:
            inject_adapter_in_model(cfg, model, adapter_name=adapter)
        except Exception as e:  # noqa: BLE001 - peft names the layer type it cannot carry
            raise InjectionError(f"peft's {algo} tuner cannot carry a layer of {comp}: "
                                 f"{type(e).__name__}: {first_line(e)[:200]}") from e
        for fm, name in items:
            layer = model.get_submodule(name)
            if not hasattr(layer, "get_base_layer"):
                raise InjectionError(f"{fm.key}: {comp}.{name} ({type(layer).__name__}) got no {algo} layer")
            weight = layer.get_base_layer().weight
            for attr in LYCORIS_PARAMS[algo]:
                holder = getattr(layer, attr)
                if attr in fm.parts:
                    t = torch.from_numpy(sf.tensor(fm.parts[attr]).copy()).to(weight.device, weight.dtype)
                    holder[adapter] = torch.nn.Parameter(t, requires_grad=False)
                elif adapter in holder:
                    del holder[adapter]
            r = fm.rank or 1
            layer.r[adapter] = r
            layer.alpha[adapter] = fm.scale * r
            layer.scaling[adapter] = fm.scale
            n += 1
    return n


def inject_split_lora(pipe: Any, sf: SafetensorsFile, parsed: ParsedFile,
                      located: dict[str, tuple[str, tuple[str, ...]] | None], adapter: str) -> int:
    """Inject the file's LoRA modules as peft LoRA layers, splitting fused projections; returns the
    modules injected (file modules with no model counterpart are left to the verification)."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    by_comp: dict[str, list[tuple[FileModule, tuple[str, ...]]]] = {}
    for fm in parsed.modules:
        if fm.algorithm == "lora" and located.get(fm.key) and "mid" not in fm.parts:
            comp, names = located[fm.key]
            by_comp.setdefault(comp, []).append((fm, names))
    n = 0
    for comp, items in by_comp.items():
        model = getattr(pipe, comp)
        ranks = {name: fm.rank or 1 for fm, names in items for name in names}
        top = max(ranks.values())
        # exact module names, anchored: peft matches pattern keys as `(.*\.)?key$`
        cfg = LoraConfig(r=top, lora_alpha=top, target_modules=list(ranks),
                         rank_pattern={f"^{re.escape(k)}": v for k, v in ranks.items()})
        try:
            inject_adapter_in_model(cfg, model, adapter_name=adapter)
        except Exception as e:  # noqa: BLE001 - peft names what it cannot carry
            raise InjectionError(f"peft cannot carry the LoRA on {comp}: {type(e).__name__}: "
                                 f"{first_line(e)[:200]}") from e
        with torch.no_grad():
            for fm, names in items:
                down = torch.from_numpy(sf.tensor(fm.parts["down"]).copy())
                up = torch.from_numpy(sf.tensor(fm.parts["up"]).copy())
                up = up.reshape(up.shape[0], -1)
                row = 0
                for name in names:
                    layer = model.get_submodule(name)
                    a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
                    a.copy_(down.reshape(a.shape).to(a.dtype))
                    b.copy_(up[row:row + b.shape[0]].reshape(b.shape).to(b.dtype))
                    row += b.shape[0]
                    layer.lora_alpha[adapter] = fm.scale * layer.r[adapter]
                    layer.set_scale(adapter, 1.0)
                if row != up.shape[0]:
                    raise InjectionError(f"{fm.key}: its up weight has {up.shape[0]} rows, the modules it splits "
                                         f"into ({'+'.join(names)}) take {row}: another model's widths")
                n += 1
    return n
