"""Small real files for the dataset tests."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageDraw


def png(path: Path, seed: int = 0, size: int = 32) -> Path:
    """A small PNG with random rectangles (distinct pHash per seed)."""
    rng = random.Random(seed)
    im = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    d = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = rng.randrange(size), rng.randrange(size)
        d.rectangle([x0, y0, x0 + rng.randrange(4, size // 2), y0 + rng.randrange(4, size // 2)],
                    fill=tuple(rng.randrange(256) for _ in range(3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}.get(path.suffix.lower(), "PNG")
    im.save(path, format=fmt)
    return path


def pair(root: Path, stem: str, caption: str, seed: int, ext: str = ".png", size: int = 32) -> Path:
    img = png(root / f"{stem}{ext}", seed, size)
    (root / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")
    return img


def plain_dataset(root: Path, n: int = 12, trigger: str = "sks_chair", size: int = 32) -> Path:
    for i in range(n):
        pair(root, f"img_{i:03d}", f"a photo of {trigger}, object number {i} on a table", seed=100 + i, size=size)
    return root


def bomb_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A tiny file that declares a huge image (a decompression bomb by size)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def to_legacy_layout(storage: Path) -> None:
    """Rewrite a storage as a workspace written before packs: every object a read-only loose file
    `objects/<sha[:2]>/<sha>`, no `objects.parquet` in any snapshot folder, no `objects/packs`."""
    import os
    import shutil

    import polars as pl

    for index in sorted(storage.glob("snapshots/*/*/objects.parquet")):
        for sha, pack, off, length in pl.read_parquet(index).iter_rows():
            dest = storage / "objects" / sha[:2] / sha
            if pack is not None and not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open(storage / "objects" / "packs" / pack, "rb") as f:
                    f.seek(off)
                    dest.write_bytes(f.read(length))
                dest.chmod(0o444)
        os.chmod(index, 0o644)
        index.unlink()
    shutil.rmtree(storage / "objects" / "packs", ignore_errors=True)


def overwrite_stored(storage: Path, sha: str, snapshot, change=None) -> object:
    """Change a stored object's bytes in place, same size (packed or loose); its StoredObject."""
    import os

    from lora_pipeline.dataset.snapshot import object_location

    loc = object_location(storage, sha, snapshot)
    os.chmod(loc.file, 0o644)
    with open(loc.file, "r+b") as f:
        f.seek(loc.offset)
        data = f.read(loc.length) if loc.length >= 0 else f.read()
        new = change(data) if change else bytes(b ^ 0xFF for b in data[:16]) + data[16:]
        assert len(new) == len(data)
        f.seek(loc.offset)
        f.write(new)
    os.chmod(loc.file, 0o444)
    return loc
