"""A procedurally generated product-image dataset: simple objects on plain backgrounds with
literal captions carrying the trigger. Deterministic for a given seed. Optional planted faults
(an orphan caption, a vague caption, a respelled trigger) for the demo and tests."""

from __future__ import annotations

import random
from pathlib import Path

from lora_pipeline.fsutil import atomic_path

OBJECTS = ("chair", "lamp", "vase", "mug", "stool", "box")
COLOURS = {"red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (220, 200, 40),
           "orange": (230, 130, 30), "purple": (130, 50, 160), "black": (25, 25, 25)}
BACKGROUNDS = {"white background": (245, 245, 245), "gray background": (128, 128, 128),
               "living room": (190, 160, 120), "kitchen": (170, 200, 210), "garden": (90, 150, 80)}
FAULTS = ("orphan_caption", "vague_caption", "respelled_trigger")


def _draw(obj: str, colour: tuple[int, int, int], bg: tuple[int, int, int], size: int, rng: random.Random):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    # A floor line and a little texture so images are not trivially flat.
    d.rectangle([0, int(size * 0.75), size, size], fill=tuple(max(0, c - 30) for c in bg))
    cx, cy = size // 2 + rng.randint(-size // 8, size // 8), int(size * 0.55)
    s = size // 4 + rng.randint(-size // 16, size // 16)
    if obj == "chair":
        d.rectangle([cx - s // 2, cy - s, cx - s // 2 + s // 5, cy + s // 2], fill=colour)
        d.rectangle([cx - s // 2, cy, cx + s // 2, cy + s // 6], fill=colour)
        d.rectangle([cx + s // 2 - s // 6, cy, cx + s // 2, cy + s // 2], fill=colour)
    elif obj == "lamp":
        d.polygon([(cx - s // 2, cy - s // 3), (cx + s // 2, cy - s // 3), (cx, cy - s)], fill=colour)
        d.rectangle([cx - 2, cy - s // 3, cx + 2, cy + s // 2], fill=(60, 60, 60))
    elif obj == "vase":
        d.ellipse([cx - s // 2, cy - s // 2, cx + s // 2, cy + s // 2], fill=colour)
        d.rectangle([cx - s // 6, cy - s, cx + s // 6, cy - s // 3], fill=colour)
    elif obj == "mug":
        d.rectangle([cx - s // 2, cy - s // 2, cx + s // 3, cy + s // 2], fill=colour)
        d.ellipse([cx + s // 4, cy - s // 4, cx + s // 2 + 4, cy + s // 4], outline=colour, width=3)
    elif obj == "stool":
        d.ellipse([cx - s // 2, cy - s // 2, cx + s // 2, cy - s // 4], fill=colour)
        d.line([cx - s // 3, cy - s // 3, cx - s // 2, cy + s // 2], fill=colour, width=3)
        d.line([cx + s // 3, cy - s // 3, cx + s // 2, cy + s // 2], fill=colour, width=3)
    else:
        d.rectangle([cx - s // 2, cy - s // 2, cx + s // 2, cy + s // 2], fill=colour, outline=(0, 0, 0))
    return im


def write_toy_dataset(out_dir: str | Path, trigger: str = "sks_chair", n: int = 12, size: int = 96,
                      seed: int = 0, faults: tuple[str, ...] = ()) -> Path:
    """Write `n` image/caption pairs (`img_000.png` + `img_000.txt`) and the requested faults."""
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    colours, bgs = list(COLOURS), list(BACKGROUNDS)
    for i in range(n):
        obj = OBJECTS[i % len(OBJECTS)]
        colour, bg = colours[rng.randrange(len(colours))], bgs[rng.randrange(len(bgs))]
        im = _draw(obj, COLOURS[colour], BACKGROUNDS[bg], size, rng)
        with atomic_path(out / f"img_{i:03d}.png") as tmp:
            im.save(tmp, format="PNG")
        caption = f"a photo of {trigger}, a {colour} {obj} on a {bg}" if "background" in bg else \
            f"a photo of {trigger}, a {colour} {obj} in a {bg}"
        (out / f"img_{i:03d}.txt").write_text(caption + "\n", encoding="utf-8")
    return plant_faults(out, trigger, faults)


def plant_faults(out: Path, trigger: str, faults: tuple[str, ...]) -> Path:
    """Plant `faults` in a written dataset of `img_NNN.png` + `img_NNN.txt` pairs (at least 3):
    orphan_caption adds `img_orphan.txt` with no image, vague_caption rewrites img_001's caption as
    tags, respelled_trigger respells the trigger in img_002's caption."""
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
    if "orphan_caption" in faults:
        (out / "img_orphan.txt").write_text(f"a photo of {trigger}, a red chair\n", encoding="utf-8")
    if "vague_caption" in faults:
        (out / "img_001.txt").write_text(f"{trigger}, masterpiece, best quality, 8k, beautiful\n",
                                         encoding="utf-8")
    if "respelled_trigger" in faults:
        respelled = trigger.replace("_", " ").upper() if "_" in trigger else trigger.upper()
        text = (out / "img_002.txt").read_text(encoding="utf-8").replace(trigger, respelled)
        (out / "img_002.txt").write_text(text, encoding="utf-8")
    return out
