"""The render cache: a content-addressed store of rendered images, so no render is ever done twice.

Key: sha256 of the canonical JSON of every input that determines a render's pixels (`key_fields`):
base model hash; LoRA sha256 and scale (null for the base arm); the resolved prompt; negative prompt;
seed; width; height; steps; guidance scale; scheduler class; dtype; device type (`cuda:1` -> `cuda`);
generator device; memory settings; library versions (torch, diffusers, peft, transformers, python).
Run, checkpoint and adapter names are not in the key: the base arm of every checkpoint and run with
the same base, spec and trigger shares one entry.

Layout (under the storage root): `render-cache/<key[:2]>/<key>.png` with a `lora_pipeline` text chunk
`{"render_key": key, ...}`, and `<key>.json` beside it (the entry: key, key_fields, pixels_sha256 and
what the original render observed: requested/observed settings, per-phase and per-step timings).
Both written atomically (temporary name, then rename), the sidecar last, without a disk sync each:
an entry a power cut left empty or torn fails the validation below and is rendered again, so the
two syncs per render (5-10 ms each on a busy shared disk) buy nothing here. An entry is valid only when the PNG decodes completely,
its chunk and sidecar name this key and the decoded pixels hash to the sidecar's `pixels_sha256`;
anything else (corrupt, half-written, mismatched) is deleted and rendered again.

`RENDERS` counts the renders actually done in this process, per arm (tests and the bench read it).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_pipeline.fsutil import atomic_write_bytes

CACHE_DIR = "render-cache"
KEY_VERSION = 2  # 2: the LoRA verified by value (`applied`); v1 renders of native files had half their alpha
RENDERS: Counter[str] = Counter()  # arm (or "determinism") -> renders actually done in this process
HITS: Counter[str] = Counter()  # arm -> renders reused from the cache in this process


def count_render(arm: str) -> None:
    RENDERS[arm] += 1


def renders_done() -> int:
    return sum(RENDERS.values())


def key_fields(*, base_sha256: str, lora: dict[str, Any] | None, prompt: str, negative_prompt: str, seed: int,
               width: int, height: int, steps: int, guidance_scale: float, scheduler: str, dtype: str,
               device: str, memory_settings: dict[str, Any], library_versions: dict[str, str]) -> dict[str, Any]:
    versions = {k: v for k, v in library_versions.items() if k != "lora_pipeline"}
    return {"key_version": KEY_VERSION, "base_sha256": base_sha256,
            "lora": None if lora is None else {"sha256": lora["sha256"], "scale": float(lora["scale"]),
                                               "applied": lora.get("applied")},
            "prompt": prompt, "negative_prompt": negative_prompt, "seed": int(seed), "width": int(width),
            "height": int(height), "steps": int(steps), "guidance_scale": float(guidance_scale),
            "scheduler": scheduler, "dtype": dtype, "device_type": device.split(":")[0], "generator": "cpu",
            "memory_settings": dict(memory_settings), "library_versions": versions}


def render_key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def keys_digest(keys: list[str]) -> str:
    """The data version of a set of renders: sha256 over the sorted keys."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


@dataclass
class CachedRender:
    key: str
    image: Any  # PIL image (decoded, RGB)
    entry: dict[str, Any]  # the sidecar
    encoded: bytes = b""  # the PNG file's bytes (its pixels are reused without encoding them again)


class RenderCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def png(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.png"

    def sidecar(self, key: str) -> Path:
        return self.png(key).with_suffix(".json")

    def get(self, key: str) -> CachedRender | None:
        """The valid entry for `key`, or None (an invalid entry is removed so it is rendered again)."""
        png, side = self.png(key), self.sidecar(key)
        if not png.exists() and not side.exists():
            return None
        loaded = self._load(key, png, side)
        if loaded is None:
            self.remove(key)
        return loaded

    def _load(self, key: str, png: Path, side: Path) -> CachedRender | None:
        from PIL import Image

        from lora_pipeline.render.manifest import MANIFEST_CHUNK
        from lora_pipeline.render.render_one import pixels_sha256

        try:
            entry = json.loads(side.read_text("utf-8"))
            encoded = png.read_bytes()
            with Image.open(io.BytesIO(encoded)) as im:
                im.load()  # decode every byte: a truncated file fails here
                chunk = json.loads((getattr(im, "text", {}) or {}).get(MANIFEST_CHUNK) or "{}")
                image = im.convert("RGB")
        except (OSError, ValueError, SyntaxError):
            return None
        if entry.get("render_key") != key or chunk.get("render_key") != key:
            return None
        if pixels_sha256(image) != entry.get("pixels_sha256"):
            return None
        return CachedRender(key, image, entry, encoded)

    def put(self, key: str, image: Any, entry: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """Store the render; returns (its sidecar, the encoded PNG) so the caller encodes it only once."""
        from PIL.PngImagePlugin import PngInfo

        from lora_pipeline.render.manifest import MANIFEST_CHUNK

        entry = {**entry, "render_key": key}
        info = PngInfo()
        info.add_text(MANIFEST_CHUNK, json.dumps({"render_key": key, "key_fields": entry.get("key_fields")},
                                                 sort_keys=True, ensure_ascii=True))
        buf = io.BytesIO()
        image.save(buf, format="PNG", pnginfo=info)
        # no disk sync (module docstring: a lost or torn entry is detected and rendered again)
        atomic_write_bytes(self.png(key), buf.getvalue(), sync=False)
        atomic_write_bytes(self.sidecar(key), (json.dumps(entry, indent=1, default=str) + "\n").encode(), sync=False)
        return entry, buf.getvalue()

    def remove(self, key: str) -> None:
        self.png(key).unlink(missing_ok=True)
        self.sidecar(key).unlink(missing_ok=True)
