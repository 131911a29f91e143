"""Reading a dataset folder in every layout of CONTRACT section 1, without judging it.

- same-stem `.txt` / `.caption` files beside the images, at any depth;
- kohya `<repeats>_<name>` folders (the repeat count is recorded per image);
- `metadata.jsonl` / `metadata.csv` with `file_name` + `text` (imagefolder style), in any folder,
  `file_name` relative to that file's folder.

Hidden and system files are ignored. Symlinks that leave the dataset root are refused and listed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
CAPTION_EXTENSIONS = (".txt", ".caption")  # .txt wins when both exist
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "__macosx", "$recycle.bin"})
_REPEAT_DIR = re.compile(r"^(\d+)_(.+)$")


class DatasetError(Exception):
    """The dataset cannot be read at all (missing folder, empty); one line naming the path."""


@dataclass
class Pair:
    image: str  # path relative to the dataset root, POSIX separators
    caption_source: str | None  # caption file or metadata file (relative), None when uncaptioned
    caption: str | None  # caption text (None: no caption)
    repeats: int = 1
    caption_decode_error: bool = False  # caption was not UTF-8; read with replacement characters


@dataclass
class DatasetListing:
    root: Path
    pairs: list[Pair] = field(default_factory=list)
    orphan_captions: list[str] = field(default_factory=list)  # caption files / metadata rows without image
    refused_symlinks: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # every regular file considered (relative)
    metadata_decode_errors: list[str] = field(default_factory=list)  # metadata files read with replacement

    @property
    def images(self) -> list[str]:
        return [p.image for p in self.pairs]


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in SYSTEM_FILES


def read_text_lenient(path: Path) -> tuple[str, bool]:
    """Read a caption; non-UTF-8 bytes become replacement characters and are flagged."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), True


def _repeats_for(rel: Path) -> int:
    for part in reversed(rel.parts[:-1]):
        m = _REPEAT_DIR.match(part)
        if m:
            return max(1, int(m.group(1)))
    return 1


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except (ValueError, OSError):
        return False


def walk_stats(root: Path) -> tuple[list[tuple[str, int, int]], list[str]]:
    """(relative POSIX path, size, mtime_ns) of every regular file under root, sorted, and the
    symlinks refused because they leave the root. One scandir pass: no extra stat per file."""
    files: list[tuple[str, int, int]] = []
    refused: list[str] = []
    root_s = str(root)
    stack = [("", root_s)]
    while stack:
        prefix, folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if _ignored(e.name):
                continue
            rel = prefix + e.name
            if e.is_symlink():
                if not _inside(root, Path(e.path)):
                    refused.append(rel)
                    continue
                if e.is_dir():  # a linked folder inside the root is walked where it really is
                    continue
            if e.is_dir(follow_symlinks=False):
                stack.append((rel + "/", e.path))
            elif e.is_file():
                try:
                    st = e.stat()
                except OSError:
                    continue
                files.append((rel, st.st_size, st.st_mtime_ns))
    files.sort()
    return files, sorted(refused)


def walk_files(root: Path) -> tuple[list[Path], list[str]]:
    """Regular files under root (relative), and symlinks refused because they leave the root."""
    files, refused = walk_stats(root)
    return [Path(f[0]) for f in files], refused


def _read_metadata(path: Path, root: Path, read_text: CaptionReader) -> tuple[dict[str, tuple[str, str]], bool]:
    """file_name (relative to root) -> (caption text, metadata file relative); and the decode flag."""
    rel_meta = path.relative_to(root).as_posix()
    text, bad = read_text(rel_meta)
    rows: list[dict] = []
    if path.name.endswith(".jsonl"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}: line {n} is not valid JSON ({e.msg})") from None
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    out: dict[str, tuple[str, str]] = {}
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "file_name" not in row:
            raise DatasetError(f"{path}: row {n} has no 'file_name'")
        name = str(row["file_name"])
        if os.path.isabs(name):
            raise DatasetError(f"{path}: row {n} file_name must be relative")
        target = Path(os.path.normpath(path.parent.relative_to(root) / name))
        out[target.as_posix()] = (str(row.get("text") or ""), rel_meta)
    return out, bad


CaptionReader = Callable[[str], tuple[str, bool]]  # relative path -> (text, decode error)


def is_dataset_file(rel: str) -> bool:
    """Images, caption files and metadata files: what a snapshot stores and a fingerprint covers."""
    name = rel.rsplit("/", 1)[-1]
    ext = os.path.splitext(name)[1].lower()
    return ext in IMAGE_EXTENSIONS or ext in CAPTION_EXTENSIONS or name in METADATA_FILES


def list_dataset(root: str | os.PathLike, read_text: CaptionReader | None = None,
                 walked: tuple[list[Path], list[str]] | None = None) -> DatasetListing:
    """Pair every image with its caption; list orphans and refused symlinks.

    `read_text(rel)` reads a caption or metadata file (default: from disk, leniently); the snapshot
    passes one that reuses cached text. `walked` is a `walk_files(root)` result already at hand.
    """
    root_p = Path(root).expanduser()
    if not root_p.is_dir():
        raise DatasetError(f"{root_p}: dataset folder not found")
    root_p = root_p.resolve()
    if read_text is None:
        def read_text(rel: str) -> tuple[str, bool]:
            return read_text_lenient(root_p / rel)
    files, refused = walked if walked is not None else walk_files(root_p)
    listing = DatasetListing(root=root_p, refused_symlinks=refused,
                             files=[f.as_posix() for f in files])
    metadata: dict[str, tuple[str, str]] = {}
    for f in files:
        if f.name in METADATA_FILES:
            rows, bad = _read_metadata(root_p / f, root_p, read_text)
            metadata.update(rows)
            if bad:
                listing.metadata_decode_errors.append(f.as_posix())
    images = [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]
    captions = {f.with_suffix("").as_posix() + f.suffix.lower(): f for f in files
                if f.suffix.lower() in CAPTION_EXTENSIONS and f.name not in METADATA_FILES}
    used: set[str] = set()
    for img in images:
        rel = img.as_posix()
        pair = Pair(image=rel, caption_source=None, caption=None, repeats=_repeats_for(img))
        stem = img.with_suffix("").as_posix()
        for ext in CAPTION_EXTENSIONS:
            cap = captions.get(stem + ext)
            if cap is not None:
                pair.caption, pair.caption_decode_error = read_text(cap.as_posix())
                pair.caption = pair.caption.strip()
                pair.caption_source = cap.as_posix()
                used.add(cap.as_posix())
                break
        if pair.caption is None and rel in metadata:
            pair.caption, pair.caption_source = metadata[rel][0].strip(), metadata[rel][1]
            pair.caption_decode_error = metadata[rel][1] in listing.metadata_decode_errors
        listing.pairs.append(pair)
    image_set = {i.as_posix() for i in images}
    listing.orphan_captions = sorted(
        [c.as_posix() for c in captions.values() if c.as_posix() not in used]
        + [f"{src}#{name}" for name, (_, src) in metadata.items() if name not in image_set]
    )
    return listing
