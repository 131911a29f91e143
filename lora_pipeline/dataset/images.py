"""Reading one image file in one pass: sha256 of its bytes, PIL decode, size, perceptual hash.

The perceptual hash is a 64-bit pHash (Zauner): the image in grayscale, resized to 32x32, a 2-D
DCT, the top-left 8x8 low frequencies without the DC term compared with their median. Two images
whose hashes differ in a few bits (Hamming distance) look alike even after resizing or re-encoding.
It is written as 16 lower-case hex digits. numpy + PIL only.

An image that cannot be decoded gets a reason instead of a size: `empty file (0 bytes)`,
`truncated`, `not an image`, `decompression-bomb size (W x H pixels)` or `cannot decode (...)`.
Memory is bounded: the declared size is checked against `max_pixels` before any pixel is decoded,
whatever PIL's global `Image.MAX_IMAGE_PIXELS` says (a library may have set it to None).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, UnidentifiedImageError

# PIL's own default (about 89.5 megapixels); above it an image is refused as a decompression bomb.
DEFAULT_MAX_PIXELS = 89_478_485


@dataclass(frozen=True)
class ImageInfo:
    sha256: str
    size: int
    width: int | None = None
    height: int | None = None
    phash: str | None = None
    error: str | None = None  # why the image is unreadable; None when it decoded


@lru_cache(maxsize=1)
def _dct_matrix(n: int = 32) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    m[0, :] = np.sqrt(1.0 / n)
    return m


def phash_of(image) -> str:
    """64-bit pHash of a decoded PIL image, as 16 hex digits."""
    g = image.convert("L").resize((32, 32), Image.Resampling.BOX)
    a = np.frombuffer(g.tobytes(), dtype=np.uint8).reshape(32, 32).astype(np.float64)  # (asarray is slower)
    d = _dct_matrix()
    low = (d @ a @ d.T)[:8, :8].ravel()[1:]  # 63 coefficients without DC
    bits = np.zeros(64, dtype=bool)  # 63 bits, left-aligned into 64
    bits[:63] = low > np.partition(low, 31)[31]  # above the median of the 63
    return np.packbits(bits).tobytes().hex()


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def _reason(exc: BaseException) -> str:
    text = str(exc).lower()
    if "truncated" in text or "broken data stream" in text or "unexpected end" in text \
            or isinstance(exc, EOFError):
        return "truncated"
    return f"cannot decode ({exc.__class__.__name__}: {str(exc)[:120]})"


def probe_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """sha256 + decode of an image file's bytes (the one pass every snapshot makes)."""
    sha = hashlib.sha256(data).hexdigest()
    if not data:
        return ImageInfo(sha, 0, error="empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                return ImageInfo(sha, len(data), w, h, error=f"decompression-bomb size ({w} x {h} pixels)")
            im.load()
            return ImageInfo(sha, len(data), w, h, phash=phash_of(im))
    except Image.DecompressionBombError as e:
        return ImageInfo(sha, len(data), error=f"decompression-bomb size ({_bomb_size(e)})")
    except UnidentifiedImageError:
        return ImageInfo(sha, len(data), error="not an image")
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        return ImageInfo(sha, len(data), error=_reason(e))
    except Exception as e:  # noqa: BLE001 - a hostile file may trip any decoder; it is a finding, not a crash
        return ImageInfo(sha, len(data), error=f"cannot decode ({e.__class__.__name__}: {str(e)[:120]})")


def _bomb_size(e: BaseException) -> str:
    import re

    m = re.search(r"\((\d+) pixels\)", str(e))
    return f"{m.group(1)} pixels" if m else "too many pixels"


def probe_file(path, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int | None = None) -> tuple[ImageInfo, bytes]:
    """Read (at most `max_bytes`, never blocking on a FIFO) and probe one file. Raises
    lora_pipeline.dataset.guard.Refused when it is not a regular file or is too large."""
    from lora_pipeline.dataset.guard import DEFAULT_MAX_FILE_BYTES, read_capped

    data = read_capped(path, DEFAULT_MAX_FILE_BYTES if max_bytes is None else max_bytes)
    return probe_bytes(data, max_pixels), data
