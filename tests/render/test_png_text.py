"""One PNG encode per image: the checkpoint's copy takes the render cache file's pixels and gets its
own text chunks (manifest.png_with_text); PIL, our chunk reader and the pixels agree with a fresh encode."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lora_pipeline.render.manifest import (
    MANIFEST_CHUNK,
    PARAMETERS_CHUNK,
    png_with_text,
    read_png_chunks,
)


def _chunk_types(data: bytes) -> list[bytes]:
    out, pos = [], 8
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        out.append(data[pos + 4:pos + 8])
        pos += 12 + n
    return out


def _encoded(image: Image.Image, text: str) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(MANIFEST_CHUNK, text)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def test_text_chunks_replaced_pixels_kept(tmp_path):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    cached = _encoded(image, '{"render_key": "abc"}')
    texts = {PARAMETERS_CHUNK: "a photo of sks_chair, café ☕\nSteps: 2, Seed: 5", MANIFEST_CHUNK: '{"x": 1}'}
    spliced = png_with_text(cached, texts)
    types = _chunk_types(spliced)
    assert types[0] == b"IHDR" and types[-1] == b"IEND"
    assert types.index(b"IDAT") > max(i for i, t in enumerate(types) if t in (b"tEXt", b"iTXt"))
    assert types.count(b"tEXt") + types.count(b"iTXt") == 2  # the cache's own chunk is gone
    with Image.open(io.BytesIO(spliced)) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(image))
        assert im.text[PARAMETERS_CHUNK] == texts[PARAMETERS_CHUNK]  # non-Latin-1: iTXt, read back as UTF-8
    # Against a fresh PIL encode with the same texts: the same chunks read back, the same pixels.
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in texts.items():
        info.add_itxt(k, v) if not v.isascii() else info.add_text(k, v)
    fresh = io.BytesIO()
    image.save(fresh, format="PNG", pnginfo=info)
    (tmp_path / "a.png").write_bytes(spliced)
    (tmp_path / "b.png").write_bytes(fresh.getvalue())
    assert read_png_chunks(tmp_path / "a.png") == read_png_chunks(tmp_path / "b.png")
    assert spliced.count(b"IDAT") == fresh.getvalue().count(b"IDAT")


@pytest.mark.parametrize("bad", [b"not a png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"])
def test_not_a_png_is_refused(bad):
    with pytest.raises(ValueError):
        png_with_text(bad, {"k": "v"})
