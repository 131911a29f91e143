"""Procedural, captioned scenes for the drawing toy base and the demo's LoRA datasets.

One flat-coloured shape on a flat background, drawn with PIL, captioned in one fixed grammar:

    "a red circle on a blue background"

The base model learns SHAPES x COLOURS x BACKGROUNDS (`base_scene`); the chair is kept out of the
base's world on purpose: it is the concept the demo LoRAs teach, bound to a trigger
(`concept_scene`: "a red sks_chair on a blue background"). Everything is drawn from a
`random.Random`, so a seed fixes every image and caption.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

SIZE = 64  # pixels; the drawing base renders 64x64
SHAPES = ("circle", "square", "triangle", "cross", "diamond")
COLOURS = {"red": (210, 40, 40), "green": (40, 170, 70), "blue": (40, 80, 210), "yellow": (235, 205, 40),
           "orange": (240, 130, 30), "purple": (140, 60, 170), "white": (245, 245, 245), "black": (25, 25, 25)}
BACKGROUNDS = {"white": (245, 245, 245), "black": (25, 25, 25), "gray": (128, 128, 128),
               "blue": (60, 100, 200), "green": (60, 150, 80), "yellow": (230, 210, 90), "pink": (235, 160, 190)}
CONCEPT = "chair"  # drawn only by concept_scene: never in the base's training world
BASE_JITTER, CONCEPT_JITTER = 0.1, 0.05  # how far (fraction of the size) a shape's centre may move
DISTINCT_PHASH = 5  # concept datasets keep no two images within this many pHash bits


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    cx: int  # centre, pixels
    cy: int
    r: int  # half the shape's extent, pixels

    def caption(self, noun: str | None = None) -> str:
        """The grammar's caption; `noun` replaces the shape's name (a trigger for concept scenes)."""
        return f"a {self.colour} {noun or self.shape} on a {self.background} background"


def _pick(rng: random.Random, shape: str, size: int, jitter: float) -> Scene:
    colour = rng.choice(list(COLOURS))
    background = rng.choice([b for b in BACKGROUNDS if b != colour])
    r = round(size * rng.uniform(0.24, 0.34))
    jitter = round(size * jitter)
    return Scene(shape, colour, background, size // 2 + rng.randint(-jitter, jitter),
                 size // 2 + rng.randint(-jitter, jitter), r)


def base_scene(rng: random.Random, size: int = SIZE) -> Scene:
    """A random scene of the base's world (no chairs), the shape's centre within 10% of the middle."""
    return _pick(rng, rng.choice(SHAPES), size, BASE_JITTER)


def concept_scene(rng: random.Random, size: int = SIZE) -> Scene:
    """A random chair scene: the concept the demo LoRAs learn, centred as product shots are."""
    return _pick(rng, CONCEPT, size, CONCEPT_JITTER)


def draw(scene: Scene, size: int = SIZE):
    """The scene as a PIL RGB image of `size` x `size`."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    d = ImageDraw.Draw(im)
    fill = COLOURS[scene.colour]
    x, y, r = scene.cx, scene.cy, scene.r
    if scene.shape == "circle":
        d.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif scene.shape == "square":
        s = round(r * 0.85)
        d.rectangle([x - s, y - s, x + s, y + s], fill=fill)
    elif scene.shape == "triangle":
        d.polygon([(x, y - r), (x + r, y + r * 0.8), (x - r, y + r * 0.8)], fill=fill)
    elif scene.shape == "diamond":
        d.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
    elif scene.shape == "cross":
        w = max(3, round(r * 0.35))
        d.rectangle([x - r, y - w, x + r, y + w], fill=fill)
        d.rectangle([x - w, y - r, x + w, y + r], fill=fill)
    elif scene.shape == CONCEPT:
        _chair(d, x, y, r, fill)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}")
    return im


def _chair(d, x: int, y: int, r: int, fill) -> None:
    """A side-view chair: a tall back on the left, a seat, two legs; chunky enough for 64 px."""
    t = max(4, round(r * 0.32))  # stroke thickness
    left, right, top, bottom = x - r * 0.75, x + r * 0.75, y - r, y + r
    seat = y + r * 0.05
    d.rectangle([left, top, left + t, bottom], fill=fill)  # back + back leg
    d.rectangle([left, seat, right, seat + t], fill=fill)  # seat
    d.rectangle([right - t, seat, right, bottom], fill=fill)  # front leg


def write_concept_dataset(out_dir: str | Path, trigger: str, n: int, seed: int = 0, size: int = SIZE,
                          faults: tuple[str, ...] = ()) -> Path:
    """`n` chair scenes (`img_000.png` + `img_000.txt`, kohya style) captioned with the trigger as the
    object's noun ("a red sks_chair on a blue background"), and the requested planted faults
    (toy/dataset.py FAULTS: orphan_caption, vague_caption, respelled_trigger). Curated as a real set
    would be: a scene whose perceptual hash is within `DISTINCT_PHASH` bits of a kept one is drawn
    again, so the dataset checks find no near-duplicates (their default threshold is 4 bits)."""
    from lora_pipeline.dataset.images import hamming, phash_of
    from lora_pipeline.fsutil import atomic_path
    from lora_pipeline.toy.dataset import plant_faults

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    kept: list[str] = []
    for i in range(n):
        for _ in range(100):
            scene = concept_scene(rng, size)
            im = draw(scene, size)
            h = phash_of(im)
            if all(hamming(h, k) > DISTINCT_PHASH for k in kept):
                break
        kept.append(h)
        with atomic_path(out / f"img_{i:03d}.png") as tmp:
            im.save(tmp, format="PNG")
        (out / f"img_{i:03d}.txt").write_text(scene.caption(trigger) + "\n", encoding="utf-8")
    return plant_faults(out, trigger, faults)
