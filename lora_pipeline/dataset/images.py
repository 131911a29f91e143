"""Reading one image file in one pass: sha256 of its bytes, PIL decode, size, perceptual hash.

The perceptual hash is a 64-bit pHash (Zauner): the image in grayscale, resized to 32x32, a 2-D
DCT, the top-left 8x8 low frequencies without the DC term compared with their median. Two images
whose hashes differ in a few bits (Hamming distance) look alike even after resizing or re-encoding.
It is written as 16 lower-case hex digits. numpy + PIL only.

A snapshot hashes many small images: `probe_image` keeps each image's 32x32 thumbnail
(`thumbnail_of`, taken from the decode the snapshot makes anyway) and `phashes` runs the DCT of a
whole batch as one stacked numpy product; the hashes are bit for bit those of `phash_of` on each.

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
from PIL import Image, ImageFile, UnidentifiedImageError

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


_BOX = Image.Resampling.BOX
_FLOYDSTEINBERG = Image.Dither.FLOYDSTEINBERG
_THUMB = (32, 32)
PHASH_BATCH = 1024  # thumbnails per stacked DCT (8 MiB of float64)


def thumbnail_of(image) -> bytes:
    """The 32x32 greyscale pixels the pHash is computed from: exactly
    `image.convert("L").resize((32, 32), BOX).tobytes()` (1024 bytes). The image must be loaded."""
    mode = image.mode
    if mode in ("RGB", "RGBA"):  # what Image.convert("L") does to these modes' pixels, without its checks
        core = image.im.convert("L", _FLOYDSTEINBERG)
    elif mode == "L":  # Image.convert("L") of an "L" image is a copy
        core = image.im
    else:  # palette, transparency, 16-bit, CMYK ...: Pillow's own conversion
        return image.convert("L").resize(_THUMB, _BOX).tobytes()
    w, h = core.size
    if (w, h) != _THUMB:  # Image.resize on an "L" image: the core resize over the whole box
        core = core.resize(_THUMB, _BOX, (0, 0, w, h))
    enc = Image.core.raw_encoder("L", "L")  # Image.tobytes of an "L" image, in one call
    try:
        enc.setimage(core, (0, 0, *_THUMB))
        _, err, data = enc.encode(max(ImageFile.MAXBLOCK, _THUMB[0] * 4))
    finally:
        enc.cleanup()
    if err <= 0 or len(data) != _THUMB[0] * _THUMB[1]:  # not the whole thumbnail in one call: Pillow's way
        return image.convert("L").resize(_THUMB, _BOX).tobytes()
    return data


def phashes(thumbnails: list[bytes]) -> list[str]:
    """The pHash of each 32x32 thumbnail (`thumbnail_of`), as 16 hex digits: one stacked DCT for all
    (numpy applies the same 32x32 matrix products to each, so the bits are those of one at a time)."""
    out: list[str] = []
    d = _dct_matrix()
    dt = d.T
    for i in range(0, len(thumbnails), PHASH_BATCH):
        chunk = thumbnails[i:i + PHASH_BATCH]
        n = len(chunk)
        a = np.frombuffer(b"".join(chunk), dtype=np.uint8).reshape(n, 32, 32).astype(np.float64)
        low = ((d @ a) @ dt)[:, :8, :8].reshape(n, 64)[:, 1:]  # 63 coefficients without DC
        bits = np.zeros((n, 64), dtype=bool)  # 63 bits, left-aligned into 64
        bits[:, :63] = low > np.partition(low, 31, axis=1)[:, 31:32]  # above the median of the 63
        text = np.packbits(bits, axis=1).tobytes().hex()
        out.extend(text[16 * k:16 * k + 16] for k in range(n))
    return out


def phash_of(image) -> str:
    """64-bit pHash of a decoded PIL image, as 16 hex digits."""
    image.load()
    return phashes([thumbnail_of(image)])[0]


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
    info, thumb = probe_image(data, max_pixels)
    if thumb is None:
        return info
    return ImageInfo(info.sha256, info.size, info.width, info.height, phashes([thumb])[0])


def probe_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[ImageInfo, bytes | None]:
    """`probe_bytes` without the pHash, for many images at once: the info (`phash` None) and the
    image's pHash thumbnail (`thumbnail_of`; None when the image is unreadable). `phashes` of the
    thumbnails gives the pHashes `probe_bytes` would."""
    sha = hashlib.sha256(data).hexdigest()
    if not data:
        return ImageInfo(sha, 0, error="empty file (0 bytes)"), None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                return ImageInfo(sha, len(data), w, h, error=f"decompression-bomb size ({w} x {h} pixels)"), None
            im.load()
            return ImageInfo(sha, len(data), w, h), thumbnail_of(im)
    except Image.DecompressionBombError as e:
        return ImageInfo(sha, len(data), error=f"decompression-bomb size ({_bomb_size(e)})"), None
    except UnidentifiedImageError:
        return ImageInfo(sha, len(data), error="not an image"), None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        return ImageInfo(sha, len(data), error=_reason(e)), None
    except Exception as e:  # noqa: BLE001 - a hostile file may trip any decoder; it is a finding, not a crash
        return ImageInfo(sha, len(data), error=f"cannot decode ({e.__class__.__name__}: {str(e)[:120]})"), None


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
