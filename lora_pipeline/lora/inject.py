"""LyCORIS LoHa and LoKr files, which diffusers' `load_lora_weights` refuses, carried by peft's own
LoHa / LoKr tuners.

peft's tuners compute the same update as the LyCORIS module's forward (and as ComfyUI and A1111):
LoHa (w1a·w1b) ⊙ (w2a·w2b) · scale, LoKr kron(w1, w2) · scale. peft picks its own factor shapes
from the layer and rank, so after injecting we put the file's factors in place as they are (a full
`lokr_w1` where the file has one, a decomposed `lokr_w2_a/b` where it has those, Tucker cores where
present) and set the layer's alpha so that peft's scale formula gives the file's scale. The result is
then verified by value like every other load (lora/verify.py).
"""

from __future__ import annotations

from typing import Any

from lora_pipeline.lora.formats import FileModule, ParsedFile
from lora_pipeline.lora.safetensors_file import SafetensorsFile
from lora_pipeline.lora.verify import LYCORIS_PARAMS


class InjectionError(RuntimeError):
    """A module of the file cannot be carried by peft's tuner; the message names algorithm and layer."""


def inject_lycoris(pipe: Any, sf: SafetensorsFile, parsed: ParsedFile,
                   located: dict[str, tuple[str, str] | None], adapter: str) -> int:
    """Inject the file's LoHa or LoKr modules as peft adapter `adapter`; returns the modules injected.
    Modules with no model counterpart are left out (the verification counts them as missing)."""
    import torch
    from peft import LoHaConfig, LoKrConfig, inject_adapter_in_model

    algo = next(iter(parsed.algorithms & {"loha", "lokr"}))
    by_comp: dict[str, list[tuple[FileModule, str]]] = {}
    for fm in parsed.modules:
        if fm.algorithm == algo and located.get(fm.key):
            comp, name = located[fm.key]
            by_comp.setdefault(comp, []).append((fm, name))
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
                                 f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
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
