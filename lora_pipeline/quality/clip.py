"""The optional CLIP text-image score: 100 x cosine similarity of the image and prompt embeddings of a
local CLIP folder (`eval.clip_model`: a transformers CLIPModel with its tokenizer and image
processor; never downloaded). The model is loaded once per process per folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_MODELS: dict[str, tuple[Any, Any, Any]] = {}


class ClipUnavailable(Exception):
    """The CLIP folder cannot be loaded; one line naming it."""


def _load(folder: Path) -> tuple[Any, Any, Any]:
    key = str(Path(folder).resolve())
    if key not in _MODELS:
        from lora_pipeline.quiet import quiet_libraries

        quiet_libraries()
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        try:
            model = CLIPModel.from_pretrained(key, local_files_only=True).eval()
            tok = AutoTokenizer.from_pretrained(key, local_files_only=True)
            proc = CLIPImageProcessor.from_pretrained(key, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ClipUnavailable(f"{folder}: not a loadable local CLIP folder ({type(e).__name__}: "
                                  f"{(str(e).splitlines() or [type(e).__name__])[0][:160]})") from None
        _MODELS[key] = (model, tok, proc)
    return _MODELS[key]


def clip_scores(folder: Path, images: list[Any], text: str) -> list[float]:
    import torch

    model, tok, proc = _load(folder)
    if not images:
        return []
    with torch.no_grad():
        t = tok([text], padding=True, truncation=True, max_length=model.config.text_config.max_position_embeddings,
                return_tensors="pt")
        pix = proc(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        out = model(input_ids=t["input_ids"], attention_mask=t.get("attention_mask"), pixel_values=pix)
        txt, img = out.text_embeds, out.image_embeds  # projected and L2-normalised by CLIPModel
        txt = txt / txt.norm(dim=-1, keepdim=True)
        img = img / img.norm(dim=-1, keepdim=True)
        return [float(100.0 * v) for v in (img @ txt.T).squeeze(-1)]
