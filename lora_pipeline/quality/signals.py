"""The per-image quality measures (numpy + PIL; formulas in docs/quality.md).

Images are compared as float arrays in [0, 1]. `arm_difference` is the mean absolute difference over
RGB; `hf_energy` the mean squared 4-neighbour Laplacian of the grayscale image (energy at the highest
spatial frequencies: noise and texture raise it, smooth images keep it near 0); `seed_diversity` the
mean `arm_difference` over all pairs of seeds of one prompt; `nearest_training` the smallest Hamming
distance between the render's perceptual hash and the training images' (the dataset snapshot's own
pHash, lora_pipeline.dataset.images.phash_of).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

EPS = 1e-6


def rgb(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def gray(image: Any) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float64) / 255.0


def arm_difference(a: Any, b: Any) -> float:
    x, y = rgb(a), rgb(b)
    if x.shape != y.shape:
        return 1.0
    return float(np.abs(x - y).mean())


def hf_energy(image: Any) -> float:
    x = gray(image)
    if min(x.shape) < 3:
        return 0.0
    lap = x[1:-1, :-2] + x[1:-1, 2:] + x[:-2, 1:-1] + x[2:, 1:-1] - 4.0 * x[1:-1, 1:-1]
    return float((lap ** 2).mean())


def hf_ratio(lora: Any, base: Any) -> float:
    return hf_energy(lora) / max(hf_energy(base), EPS)


def seed_diversity(images: list[Any]) -> float | None:
    """Mean pairwise arm_difference between the images of different seeds (None with < 2 seeds)."""
    if len(images) < 2:
        return None
    vals = [arm_difference(a, b) for a, b in itertools.combinations(images, 2)]
    return float(sum(vals) / len(vals))


def nearest_training(image: Any, training: dict[str, str]) -> tuple[str | None, int | None]:
    """(training image path, Hamming distance) of the training image whose pHash is nearest."""
    from lora_pipeline.dataset.images import hamming, phash_of

    if not training:
        return None, None
    h = phash_of(image)
    path, ph = min(training.items(), key=lambda kv: (hamming(h, kv[1]), kv[0]))
    return path, hamming(h, ph)


def distance_to(image: Any, phash: str) -> int:
    from lora_pipeline.dataset.images import hamming, phash_of

    return hamming(phash_of(image), phash)
