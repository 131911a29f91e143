"""One pass over a dataset folder: list it, hash every dataset file, decode every image once, and
(optionally) copy what is new into the content-addressed store.

A `StatCache` from an earlier scan lets a re-scan trust the stored sha256 of a file whose size and
mtime are unchanged (and whose mtime was not too close to that scan, the "racy" case git knows);
`full_verify=True` re-reads everything. The content id of a scan is the sha256 of its sorted
(relative path, sha256) list of dataset files: the same content gives the same id, whatever the
mtimes, the machine or the folder's location.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from lora_pipeline.dataset.images import DEFAULT_MAX_PIXELS, ImageInfo, probe_bytes
from lora_pipeline.dataset.layout import (
    IMAGE_EXTENSIONS,
    METADATA_FILES,
    DatasetError,
    DatasetListing,
    Pair,
    is_dataset_file,
    list_dataset,
    walk_files,
)
from lora_pipeline.dataset.schema import manifest_frame

ID_VERSION = "lora-pipeline-snapshot-v1"
RACY_MARGIN_NS = 2_000_000_000  # a file modified within 2 s of the last scan is re-hashed


@dataclass(frozen=True)
class FileStat:
    size: int
    mtime_ns: int
    sha256: str

    def to_list(self) -> list:
        return [self.size, self.mtime_ns, self.sha256]

    @classmethod
    def from_list(cls, v: list) -> FileStat:
        return cls(int(v[0]), int(v[1]), str(v[2]))


@dataclass
class StatCache:
    """What an earlier scan knew: file stats + hashes, image probes and caption texts by sha256."""

    files: dict[str, FileStat] = field(default_factory=dict)
    scanned_at_ns: int = 0
    images: dict[str, ImageInfo] = field(default_factory=dict)  # sha256 -> probe
    texts: dict[str, str] = field(default_factory=dict)  # caption file sha256 -> text (utf-8 files)

    def trusted(self, rel: str, size: int, mtime_ns: int) -> FileStat | None:
        old = self.files.get(rel)
        if old is None or old.size != size or old.mtime_ns != mtime_ns:
            return None
        if mtime_ns >= self.scanned_at_ns - RACY_MARGIN_NS:
            return None
        return old


@dataclass
class Scan:
    root: Path
    listing: DatasetListing
    files: dict[str, FileStat]  # every dataset file (images, captions, metadata), relative path -> stat
    scanned_at_ns: int
    frame: pl.DataFrame | None = None  # the manifest (None for a fingerprint-only scan)
    hashed: int = 0  # files read and hashed in this scan
    reused: int = 0  # files whose stored hash was reused (size + mtime unchanged)
    stored: int = 0  # objects newly written to the store

    @property
    def content_id(self) -> str:
        return content_id(self.files)


def content_id(files: dict[str, FileStat]) -> str:
    h = hashlib.sha256(ID_VERSION.encode() + b"\n")
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel].sha256}\n".encode())
    return h.hexdigest()[:20]


class ObjectStore:
    """objects/<sha[:2]>/<sha>: files written under a temporary name, made read-only, then renamed."""

    def __init__(self, root: Path):
        self.root = Path(root) / "objects"
        self._dirs: set[str] = set()
        self._lock = threading.Lock()

    def path(self, sha: str) -> Path:
        return self.root / sha[:2] / sha

    def has(self, sha: str, size: int) -> bool:
        try:
            return os.stat(self.path(sha)).st_size == size
        except OSError:
            return False

    def put(self, sha: str, data: bytes) -> bool:
        """Store `data` (whose sha256 is `sha`); False when an intact copy is already there."""
        if self.has(sha, len(data)):
            return False
        d = self.root / sha[:2]
        if sha[:2] not in self._dirs:
            d.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._dirs.add(sha[:2])
        tmp = d / f".{sha}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o444)
            os.replace(tmp, d / sha)
        finally:
            if tmp.exists():
                tmp.unlink()
        return True


def _stat(root: Path, rel: str) -> os.stat_result:
    try:
        return os.stat(root / rel)
    except OSError as e:
        raise DatasetError(f"{root / rel}: cannot read ({e.strerror})") from None


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror})") from None


def _decode(data: bytes) -> tuple[str, bool]:
    try:
        return data.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), True


def scan_dataset(root: str | os.PathLike, *, cache: StatCache | None = None, full_verify: bool = False,
                 store: ObjectStore | None = None, probe_images: bool = True,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Scan:
    """List, hash and (with `probe_images`) decode the dataset; copy new files into `store`.

    Without `probe_images` only the file hashes are computed (the source fingerprint), and no
    manifest is built. Raises DatasetError (one line) for a missing folder or one without images.
    """
    root_p = Path(root).expanduser()
    if not root_p.is_dir():
        raise DatasetError(f"{root_p}: dataset folder not found")
    root_p = root_p.resolve()
    cache = cache or StatCache()
    started = _now_ns()
    walked = walk_files(root_p)
    files: dict[str, FileStat] = {}
    probes: dict[str, ImageInfo] = {}
    texts: dict[str, tuple[str, bool]] = {}
    hashed = reused = stored = 0
    for relp in walked[0]:
        rel = relp.as_posix()
        if not is_dataset_file(rel):
            continue
        st = _stat(root_p, rel)
        is_image = relp.suffix.lower() in IMAGE_EXTENSIONS
        old = None if full_verify else cache.trusted(rel, st.st_size, st.st_mtime_ns)
        if old is not None and (store is None or store.has(old.sha256, old.size)) and (
                not is_image or not probe_images or old.sha256 in cache.images):
            files[rel] = old
            if is_image and probe_images:
                probes[rel] = cache.images[old.sha256]
            elif not is_image and old.sha256 in cache.texts:
                texts[rel] = (cache.texts[old.sha256], False)
            reused += 1
            continue
        data = _read(root_p / rel)
        hashed += 1
        if is_image and probe_images:
            info = probe_bytes(data, max_pixels)
            probes[rel] = info
            sha = info.sha256
        else:
            sha = hashlib.sha256(data).hexdigest()
            if not is_image:
                texts[rel] = _decode(data)
        files[rel] = FileStat(len(data), st.st_mtime_ns, sha)
        if store is not None and store.put(sha, data):
            stored += 1

    def read_text(rel: str) -> tuple[str, bool]:
        if rel not in texts:
            texts[rel] = _decode(_read(root_p / rel))
        return texts[rel]

    if probe_images:
        listing = list_dataset(root_p, read_text=read_text, walked=walked)
    else:  # a fingerprint: the hashes are all it needs
        listing = DatasetListing(root=root_p, refused_symlinks=walked[1], files=sorted(files))
        listing.pairs = [Pair(rel, None, None) for rel in files
                         if os.path.splitext(rel)[1].lower() in IMAGE_EXTENSIONS]
    if not listing.pairs:
        raise DatasetError(f"{root_p}: no images found (png, jpg, jpeg, webp, bmp, any depth)")
    scan = Scan(root_p, listing, files, started, hashed=hashed, reused=reused, stored=stored)
    if probe_images:
        scan.frame = _manifest(listing, files, probes)
    return scan


def _manifest(listing: DatasetListing, files: dict[str, FileStat], probes: dict[str, ImageInfo]) -> pl.DataFrame:
    rows = []
    for p in listing.pairs:
        info = probes[p.image]
        cap = p.caption
        rows.append({
            "path": p.image, "sha256": info.sha256, "size": files[p.image].size,
            "width": info.width, "height": info.height, "caption": cap,
            "caption_sha256": hashlib.sha256(cap.encode("utf-8")).hexdigest() if cap is not None else None,
            "phash": info.phash, "caption_path": p.caption_source, "repeats": p.repeats,
            "caption_decode_error": bool(p.caption_decode_error), "image_error": info.error,
        })
    return manifest_frame(rows)


def cache_from(files: dict[str, FileStat], scanned_at_ns: int, frame: pl.DataFrame | None) -> StatCache:
    """A StatCache from a stored file list and manifest (image probes and caption texts by sha)."""
    cache = StatCache(files=dict(files), scanned_at_ns=scanned_at_ns)
    if frame is not None:
        for r in frame.select("sha256", "size", "width", "height", "phash", "image_error",
                              "caption", "caption_path", "caption_decode_error").iter_rows():
            sha, size, w, h, ph, err, cap, cap_path, bad = r
            cache.images[sha] = ImageInfo(sha, size, w, h, ph, err)
            st = files.get(cap_path) if cap_path else None
            # Only a whole, valid UTF-8 caption file's text is reused (metadata rows are re-read).
            if st is not None and cap is not None and not bad \
                    and cap_path.rsplit("/", 1)[-1] not in METADATA_FILES:
                cache.texts.setdefault(st.sha256, cap)
    return cache


def _now_ns() -> int:
    import time

    return time.time_ns()
