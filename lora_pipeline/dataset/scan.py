"""One pass over a dataset folder: list it, hash every dataset file, decode every image once, and
(optionally) copy what is new into the content-addressed store.

A `StatCache` from an earlier scan lets a re-scan trust the stored sha256 of a file whose size and
mtime are unchanged (and whose mtime was not too close to that scan, the "racy" case git knows);
`full_verify=True` re-reads everything. The content id of a scan is the sha256 of its sorted
(relative path, sha256) list of dataset files: the same content gives the same id, whatever the
mtimes, the machine or the folder's location.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import operator
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import polars as pl

from lora_pipeline.dataset.guard import (
    DEFAULT_MAX_FILE_BYTES,
    Refused,
    display_path,
    parse_refusal,
    read_capped,
    refusal,
)
from lora_pipeline.dataset.images import DEFAULT_MAX_PIXELS, ImageInfo, phashes, probe_image
from lora_pipeline.dataset.layout import (
    CAPTION_EXTENSIONS,
    IMAGE_EXTENSIONS,
    METADATA_FILES,
    DatasetError,
    DatasetListing,
    Walked,
    is_dataset_file,
    list_dataset,
    walk_dataset,
)
from lora_pipeline.dataset.schema import manifest_frame_from_columns

if TYPE_CHECKING:
    from lora_pipeline.dataset.pack import ObjectStore

ID_VERSION = "lora-pipeline-snapshot-v1"
RACY_MARGIN_NS = 2_000_000_000  # a file modified within 2 s of the last scan is re-hashed


class FileStat(NamedTuple):  # a tuple: 40,000 of them are built on every re-snapshot
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
    loader: Callable[[], pl.DataFrame | None] | None = None  # the last manifest, read on demand

    def load(self) -> None:
        """Fill `images` and `texts` from the last manifest (only when a new manifest is built)."""
        if self.loader is None:
            return
        frame, self.loader = self.loader(), None
        if frame is None:
            return
        for r in frame.select("sha256", "size", "width", "height", "phash", "image_error",
                              "caption", "caption_path", "caption_decode_error").iter_rows():
            sha, size, w, h, ph, err, cap, cap_path, bad = r
            self.images[sha] = ImageInfo(sha, size, w, h, ph, err)
            st = self.files.get(cap_path) if cap_path else None
            # Only a whole, valid UTF-8 caption file's text is reused (metadata rows are re-read).
            if st is not None and cap is not None and not bad \
                    and cap_path.rsplit("/", 1)[-1] not in METADATA_FILES:
                self.texts.setdefault(st.sha256, cap)

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
    listing: DatasetListing | None  # None when an existing snapshot already holds this content
    files: dict[str, FileStat]  # every dataset file (images, captions, metadata), relative path -> stat
    scanned_at_ns: int
    frame: pl.DataFrame | None = None  # the manifest (None for a fingerprint-only scan)
    hashed: int = 0  # files read and hashed in this scan
    reused: int = 0  # files whose stored hash was reused (size + mtime unchanged)
    stored: int = 0  # objects newly written to the store

    refused: list[str] = field(default_factory=list)  # entries not read, with why (part of the id)
    excluded: list[str] = field(default_factory=list)  # lora-pipeline's own folders inside (not part of it)

    @property
    def content_id(self) -> str:
        return content_id(self.files, self.refused)


def content_id(files: dict[str, FileStat], refused: list[str] = ()) -> str:
    """sha256 of the sorted (relative path, sha256) list, plus the refused entries; 20 hex digits. The
    lines `{rel}\\0{sha256}\\n` are joined in C, 1,000 at a time (half the cost of an f-string each)."""
    rels = sorted(files)
    parts = [None, "\0", None, "\n"] * len(rels)
    parts[0::4], parts[2::4] = rels, map(_SHA256, map(files.__getitem__, rels))
    h = hashlib.sha256((ID_VERSION + "\n").encode())
    for i in range(0, len(parts), 4000):
        h.update("".join(parts[i:i + 4000]).encode())
    for entry in sorted(refused):
        rel, reason = parse_refusal(entry)
        h.update((f"{rel}\0refused-symlink\n" if entry == rel else f"{rel}\0refused\0{reason}\n").encode())
    return h.hexdigest()[:20]


_MTIME, _SHA256 = operator.itemgetter(1), operator.itemgetter(2)  # FileStat.mtime_ns, .sha256


def _unchanged(entries: list[tuple[str, int, int]], cached: dict[str, FileStat], limit: int) -> bool:
    """Whether the walk found every cached file with its cached size and mtime, none modified after
    `limit` (racy), and no other dataset file: the stat cache test of `scan_dataset` for all at once."""
    if len(entries) < len(cached) or max(map(_MTIME, cached.values()), default=limit) >= limit:
        return False
    listing = [(rel, st[0], st[1]) for rel, st in cached.items()]
    if entries == listing:
        return True
    others = set(entries).difference(listing)  # then the walk's other files, none a dataset file
    return len(others) == len(entries) - len(listing) and not any(is_dataset_file(e[0]) for e in others)


def _read_text_file(path: str, cap: int) -> bytes:
    try:
        return read_capped(path, cap)
    except Refused as e:
        raise DatasetError(f"{display_path(path)}: {e}") from None


def _decode(data: bytes) -> tuple[str, bool]:
    try:
        return data.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), True


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused for a scan. A scan keeps about ten objects per file
    alive until it ends (stats, probes, listing, manifest rows: 400,000 for 20,000 pairs), and the
    collector's passes over them cost a fifth of a snapshot's CPU; reference counting still frees
    everything else at once. Restored as it was, also on an error."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


THREADS_MIN_PIXELS = 12_288  # ~110 x 110: the mean image size from which decoding threads pay off


def threads_pay_off(done: list[tuple]) -> bool:
    """Whether the scanned sample's images are large enough for decoding threads to beat one thread.
    Measured with bench/dataset_bench.py on 2 cores (first snapshot, 1 thread vs 2): 64 px 3.48 vs
    4.67 s (two threads contend for the GIL on per-file work), 96 px about even, 128 px 1.26 vs
    0.95 s, 512 px 4.24 vs 2.19 s."""
    pixels = [r[2].width * r[2].height for r in done if r[2] is not None]
    return bool(pixels) and sum(pixels) / len(pixels) >= THREADS_MIN_PIXELS


@gc_paused()
def scan_dataset(root: str | os.PathLike, *, cache: StatCache | None = None, full_verify: bool = False,
                 store: ObjectStore | None = None, probe_images: bool = True,
                 max_pixels: int = DEFAULT_MAX_PIXELS, known_id: Callable[[str], bool] | None = None,
                 workers: int | None = None, exclude: Iterable = (),
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Scan:
    """List, hash and (with `probe_images`) decode the dataset; copy new files into `store`.

    Without `probe_images` only the file hashes are computed (the source fingerprint), and no
    manifest is built. When `known_id(content_id)` says a snapshot of exactly this content exists,
    the listing and manifest are not rebuilt (`frame` and `listing` stay None): they are a function
    of the content. Files are read, hashed, decoded and stored by `workers` threads (default: up to 4
    when the first 256 files show images large enough for threads to pay off, `threads_pay_off`).
    What the walk refuses (lora_pipeline.dataset.layout.walk_dataset), and files that turn out not to
    be regular or to exceed `max_file_bytes` when read, are listed in `refused`, never stored; the
    folders in `exclude`, the storage root of `store` and lora-pipeline's own folders are left out.
    Raises DatasetError (one line) for a missing folder or one without images.
    """
    root_p = Path(root).expanduser()
    if not root_p.is_dir():
        raise DatasetError(f"{display_path(str(root_p))}: dataset folder not found")
    root_p = root_p.resolve()
    root_s = str(root_p) + os.sep
    cache = cache or StatCache()
    started = time.time_ns()
    if store is not None:
        exclude = (*exclude, (store.root.parent, "the storage folder of this snapshot"))
    walked = walk_dataset(root_p, exclude=exclude, max_file_bytes=max_file_bytes)
    entries = walked.files
    refused = list(walked.refused)
    probes: dict[str, ImageInfo] = {}
    texts: dict[str, tuple[str, bool]] = {}
    todo: list[tuple[str, int, bool]] = []
    # The stat cache test (StatCache.trusted) and the dataset-file test (is_dataset_file) inline: this
    # loop runs once per file on every re-snapshot. Only dataset files are ever in the cache.
    cached = {} if full_verify else cache.files
    limit = cache.scanned_at_ns - RACY_MARGIN_NS
    # ... and the store's `has`, with its everyday case (the previous snapshot's pack) inline
    has = store.has if store is not None else None
    view = store.held_view() if store is not None and entries and cached else None
    held, pack_sizes = view if view is not None else ({}, {})
    splitext = os.path.splitext
    # Every file unchanged (the everyday re-snapshot): all trusted at once, only the store is asked.
    files: dict[str, FileStat] = dict(cached) if cached and _unchanged(entries, cached, limit) else {}
    for size, _, sha in files.values():
        loc = held.get(sha)
        if (loc is None or loc[0] is None or loc[2] != size or pack_sizes.get(loc[0], -1) < loc[1] + size) \
                and has is not None and not has(sha, size):
            files = {}  # an object to store again: file by file below
            break
    for rel, size, mtime_ns in () if files else entries:
        old = cached.get(rel)
        if old is not None and old.size == size and old.mtime_ns == mtime_ns and mtime_ns < limit:
            if has is None:
                files[rel] = old
                continue
            loc = held.get(old.sha256)
            if loc is not None and loc[0] is not None and loc[2] == size \
                    and pack_sizes.get(loc[0], -1) >= loc[1] + size or has(old.sha256, size):
                files[rel] = old
                continue
        name = rel.rsplit("/", 1)[-1]
        ext = splitext(name)[1].lower()
        is_image = ext in IMAGE_EXTENSIONS
        if is_image or ext in CAPTION_EXTENSIONS or name in METADATA_FILES:
            todo.append((rel, mtime_ns, is_image))
    reused = len(files)

    put = store.put_function() if store is not None else None

    def work(item: tuple[str, int, bool]) -> tuple:
        rel, mtime_ns, is_image = item
        try:
            data = read_capped(root_s + rel, max_file_bytes)
        except Refused as e:  # changed since the walk: a FIFO now, grown past the cap, unreadable
            return rel, None, None, None, False, refusal(rel, str(e)), None
        info = text = thumb = None
        if is_image and probe_images:
            info, thumb = probe_image(data, max_pixels)  # the pHash is computed per batch (phashes)
            sha = info.sha256
        else:
            sha = hashlib.sha256(data).hexdigest()
            if not is_image:
                text = _decode(data)
        stored = put(sha, data) if put is not None else False
        return rel, FileStat(len(data), mtime_ns, sha), info, text, stored, None, thumb

    def work_batch(items: list[tuple[str, int, bool]]) -> list[tuple]:
        done = [work(item) for item in items]
        thumbs = [r[6] for r in done if r[6] is not None]
        if thumbs:  # one stacked DCT for the batch's images
            hashes = iter(phashes(thumbs))
            done = [r if r[6] is None else
                    (r[0], r[1], ImageInfo(r[2].sha256, r[2].size, r[2].width, r[2].height, next(hashes)), *r[3:6])
                    for r in done]
        return done

    def run(items: list[tuple[str, int, bool]]) -> int:
        n_workers = workers or default_workers()
        # By default the first batch runs on this thread and decides: threads pay off only when the
        # decoding (which releases the GIL) outweighs the per-file Python work (which holds it).
        done = work_batch(items[:256]) if workers is None and n_workers > 1 else []
        rest = items[len(done):]
        if n_workers > 1 and len(rest) > 64 and (workers is not None or threads_pay_off(done)):
            from concurrent.futures import ThreadPoolExecutor

            # batches, not one future per file: 40,000 futures cost more than the small files' work
            size = max(8, min(256, len(rest) // (8 * n_workers)))
            with ThreadPoolExecutor(n_workers) as pool:
                done += [r for batch in pool.map(work_batch, (rest[i:i + size] for i in range(0, len(rest), size)))
                         for r in batch]
        else:
            done += [r for i in range(0, len(rest), 256) for r in work_batch(rest[i:i + 256])]
        n_stored = 0
        for rel, st, info, text, was_stored, why, *_ in done:
            if why is not None:
                refused.append(why)
                continue
            files[rel] = st
            if info is not None:
                probes[rel] = info
            if text is not None:
                texts[rel] = text
            n_stored += was_stored
        return n_stored

    stored = run(todo)
    if todo:  # reused files come in the walk's (sorted) order
        files = dict(sorted(files.items()))
    refused.sort()
    if not any(_is_image(rel) for rel in files) and not any(_is_image(parse_refusal(r)[0]) for r in refused):
        raise DatasetError(f"{display_path(str(root_p))}: no images found (png, jpg, jpeg, webp, bmp, any depth)")
    scan = Scan(root_p, None, files, started, hashed=len(todo), reused=reused, stored=stored,
                refused=list(refused), excluded=list(walked.excluded))
    if not probe_images:
        kept = [e for e in entries if e[0] in files or not is_dataset_file(e[0])]
        scan.listing = DatasetListing(root=root_p, refused_symlinks=refused, files=[e[0] for e in kept],
                                      excluded=scan.excluded)
        return scan
    if known_id is not None and known_id(scan.content_id):
        return scan
    kept = [e for e in entries if e[0] in files or not is_dataset_file(e[0])]
    # A manifest is needed: reused images take their probe from the last manifest (by sha256);
    # one it does not hold is read again.
    cache.load()
    again = []
    for rel, mtime_ns in [(r, st.mtime_ns) for r, st in files.items() if r not in probes and _is_image(r)]:
        info = cache.images.get(files[rel].sha256)
        if info is None:
            again.append((rel, mtime_ns, True))
        else:
            probes[rel] = info
    scan.stored += run(again)
    scan.hashed += len(again)
    scan.reused -= len(again)
    if len(refused) != len(scan.refused):  # an image refused on this second read
        files = scan.files = {k: v for k, v in files.items() if k in probes or not _is_image(k)}
        scan.refused = sorted(refused)
        kept = [e for e in entries if e[0] in files or not is_dataset_file(e[0])]
    for rel, st in files.items():
        if rel not in texts and st.sha256 in cache.texts:
            texts[rel] = (cache.texts[st.sha256], False)

    def read_text(rel: str) -> tuple[str, bool]:
        if rel not in texts:
            texts[rel] = _decode(_read_text_file(root_s + rel, max_file_bytes))
        return texts[rel]

    scan.listing = list_dataset(root_p, read_text=read_text,
                                walked=Walked(kept, scan.refused, scan.excluded))
    scan.frame = _manifest(scan.listing, files, probes)
    return scan


def _is_image(rel: str) -> bool:
    return os.path.splitext(rel)[1].lower() in IMAGE_EXTENSIONS


def _manifest(listing: DatasetListing, files: dict[str, FileStat], probes: dict[str, ImageInfo]) -> pl.DataFrame:
    pairs = listing.pairs
    infos = [probes[p.image] for p in pairs]
    sha256 = hashlib.sha256
    captions = [p.caption for p in pairs]
    return manifest_frame_from_columns({
        "path": [p.image for p in pairs], "sha256": [i.sha256 for i in infos],
        "size": [files[p.image].size for p in pairs],
        "width": [i.width for i in infos], "height": [i.height for i in infos], "caption": captions,
        "caption_sha256": [sha256(c.encode("utf-8")).hexdigest() if c is not None else None for c in captions],
        "phash": [i.phash for i in infos], "caption_path": [p.caption_source for p in pairs],
        "repeats": [p.repeats for p in pairs],
        "caption_decode_error": [bool(p.caption_decode_error) for p in pairs],
        "image_error": [i.error for i in infos],
    })


def cache_from(files: dict[str, FileStat], scanned_at_ns: int,
               manifest: Callable[[], pl.DataFrame | None] | None) -> StatCache:
    """A StatCache from a stored file list; `manifest()` gives the last manifest when needed."""
    return StatCache(files=dict(files), scanned_at_ns=scanned_at_ns, loader=manifest)
