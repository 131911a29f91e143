"""Reading a dataset folder in every layout of CONTRACT section 1, without judging it.

- same-stem `.txt` / `.caption` files beside the images, at any depth;
- kohya `<repeats>_<name>` folders (the repeat count is recorded per image);
- `metadata.jsonl` / `metadata.csv` with `file_name` + `text` (imagefolder style), in any folder,
  `file_name` relative to that file's folder.

Hidden and system files are ignored. What the walk refuses (symlinks leaving the root, symlink
loops, special files, names that are not UTF-8, files over the size cap) is listed with the reason
and never read; lora-pipeline's own folders (storage, runs, Dagster home) are excluded
(lora_pipeline.dataset.guard).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import operator
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lora_pipeline.dataset.guard import (
    CONFIG_FILENAME,
    DEFAULT_MAX_FILE_BYTES,
    SYMLINK_OUT,
    Refused,
    config_roots,
    dir_key,
    display_path,
        is_utf8,
    os_reason,
    pipeline_folder,
    protected,
    read_capped,
    refusal,
    special_file,
    too_large,
)

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
    refused_symlinks: list[str] = field(default_factory=list)  # every refused entry (guard.refusal)
    files: list[str] = field(default_factory=list)  # every regular file considered (relative)
    metadata_decode_errors: list[str] = field(default_factory=list)  # metadata files read with replacement
    excluded: list[str] = field(default_factory=list)  # "<folder>\t<why>": lora-pipeline's own folders

    @property
    def images(self) -> list[str]:
        return [p.image for p in self.pairs]


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in SYSTEM_FILES


def read_text_lenient(path: Path, cap: int = DEFAULT_MAX_FILE_BYTES) -> tuple[str, bool]:
    """Read a caption; non-UTF-8 bytes become replacement characters and are flagged."""
    try:
        data = read_capped(path, cap)
    except Refused as e:
        raise DatasetError(f"{display_path(str(path))}: {e}") from None
    try:
        return data.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), True


def _repeats_in(folder: str) -> int:
    """The repeat count of the innermost kohya `<repeats>_<name>` folder of a relative folder path."""
    if not folder or folder == ".":
        return 1
    for part in reversed(folder.split("/")):
        m = _REPEAT_DIR.match(part)
        if m:
            return max(1, int(m.group(1)))
    return 1


def _suffix(name: str) -> str:
    """pathlib's `PurePath.suffix` of a file name: from its last dot, unless that is the first or
    last character."""
    i = name.rfind(".")
    return name[i:] if 0 < i < len(name) - 1 else ""


def _inside(root: Path, path: Path) -> bool:
    """Whether `path`, with every symlink followed, is under `root` (already resolved)."""
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):
        return False
    return real == str(root) or real.startswith(str(root).rstrip(os.sep) + os.sep)


@dataclass
class Walked:
    """One pass over a dataset folder."""

    files: list[tuple[str, int, int]] = field(default_factory=list)  # (relative path, size, mtime_ns), sorted
    refused: list[str] = field(default_factory=list)  # `refusal()` entries, sorted
    excluded: list[str] = field(default_factory=list)  # "<folder>\t<why>": lora-pipeline's own folders


def walk_dataset(root: Path, *, exclude: Iterable[str | os.PathLike | tuple[str | os.PathLike, str]] = (),
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Walked:
    """Every regular file under root, in one scandir pass (no extra stat per file), without ever
    opening one. Refused (listed, not followed or read): symlinks leaving the root, symlink loops,
    broken symlinks; dataset files that are FIFOs, sockets or devices, have a name that is not
    UTF-8, or are larger than `max_file_bytes`. Excluded (listed, not walked): the folders in
    `exclude`, the workspaces' folders registered with `guard.protect_workspace`, `$DAGSTER_HOME`,
    the storage and runs folders a lora_pipeline.yaml inside names, and folders that are a
    lora-pipeline storage or Dagster home by their content."""
    out = Walked()
    root_key = dir_key(str(root))
    excluded: dict[tuple[int, int], str] = {}

    def add_exclusion(path: str | os.PathLike, why: str) -> None:
        key = dir_key(os.fspath(path))
        if key is not None and key != root_key:
            excluded.setdefault(key, why)

    for p in exclude:  # a folder, or (folder, why)
        add_exclusion(*(p if isinstance(p, tuple) else (p, "a folder excluded by the caller")))
    for p, why in protected().items():
        add_exclusion(p, why)
    if os.environ.get("DAGSTER_HOME"):
        add_exclusion(os.environ["DAGSTER_HOME"], "the Dagster home")
    seen: set = {root_key}
    stack: list[tuple[str, str, bool, tuple[int, int] | None]] = [("", str(root), False, root_key)]
    while stack:
        prefix, folder, bad_name, key = stack.pop()
        try:
            listed = _Listed(folder)
        except OSError as e:
            if not prefix:
                raise DatasetError(f"{root}: cannot list the dataset folder ({e.strerror})") from None
            out.refused.append(refusal(prefix[:-1], f"folder cannot be listed ({e.strerror})"))
            continue
        with listed:  # the folder's fd stays open while its entries are looked at
            _walk_folder(root, listed.entries, folder, prefix, bad_name, key, max_file_bytes, out, seen,
                         stack, excluded, add_exclusion)
    out.files.sort()
    out.refused.sort()
    out.excluded.sort()
    return out


def _walk_folder(root: Path, entries: list[os.DirEntry], folder: str, prefix: str, bad_name: bool, key: tuple | None,
                 cap: int, out: Walked, seen: set, stack: list, excluded: dict, add_exclusion: Callable) -> None:
    """One folder of `walk_dataset`: its files into `out`, its sub-folders onto `stack`."""
    names = set(map(_entry_name, entries))
    why = excluded.get(key) if key else None
    if why is None and prefix:
        why = pipeline_folder(folder, names)
    if why:
        out.excluded.append(f"{display_path(prefix[:-1])}\t{why}")
        return
    if CONFIG_FILENAME in names:
        for path, reason in config_roots(os.path.join(folder, CONFIG_FILENAME)):
            add_exclusion(path, reason)
    append = out.files.append
    for e in entries:  # once per file on every scan: its usual case (a regular file) inline
        name = e.name
        if name[0] == "." or name.lower() in SYSTEM_FILES:
            continue
        try:
            st = e.stat(follow_symlinks=False)  # lstat, relative to the folder's fd (_Listed)
        except OSError:
            st = None
        if st is not None and S_ISREG(st.st_mode) and st.st_size <= cap and not bad_name \
                and name.isascii():
            append((prefix + name, st.st_size, st.st_mtime_ns))
        else:
            _entry(root, e, folder, prefix, bad_name, cap, out, seen, stack)


_entry_name = operator.attrgetter("name")
S_ISREG = stat.S_ISREG
_SCANDIR_FD = os.scandir in os.supports_fd
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


class _Listed:
    """A folder's entries, sorted by name, listed from an fd where the platform allows: each lstat is
    then relative to it (fstatat), not a walk of the whole path (a fifth of a re-snapshot's walk). The
    entries' `path` is their bare name; the fd stays open while they are used (`with`)."""

    def __init__(self, folder: str):
        self.fd: int | None = os.open(folder, _DIR_FLAGS) if _SCANDIR_FD else None
        try:
            with os.scandir(folder if self.fd is None else self.fd) as it:
                self.entries = sorted(it, key=_entry_name)
        except BaseException:
            self.__exit__()
            raise

    def __enter__(self) -> _Listed:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _entry(root: Path, e: os.DirEntry, folder: str, prefix: str, bad_name: bool, cap: int, out: Walked,
           seen: set, stack: list) -> None:
    """Any other entry: a folder, symlink, special file, file over the cap, non-ASCII name, failed lstat."""
    name = e.name
    rel = prefix + name
    path = os.path.join(folder, name)
    dot = name.rfind(".")  # os.path.splitext of a name that does not start with a dot
    ext = name[dot:].lower() if dot > 0 else ""
    dataset_named = ext in IMAGE_EXTENSIONS or ext in CAPTION_EXTENSIONS or name in METADATA_FILES
    name_bad = bad_name or not (name.isascii() or is_utf8(name))
    try:
        if e.is_symlink():
            _symlink(root, path, rel, dataset_named, name_bad, cap, out)
            return
        if e.is_dir(follow_symlinks=False):
            sub = (e.stat(follow_symlinks=False).st_dev, e.inode())
            if sub not in seen:  # a bind mount looping back is walked once
                seen.add(sub)
                stack.append((rel + "/", path, name_bad, sub))
            return
        if not dataset_named:
            if e.is_file(follow_symlinks=False) and not name_bad:
                st = e.stat(follow_symlinks=False)
                out.files.append((rel, st.st_size, st.st_mtime_ns))
            return
        st = e.stat(follow_symlinks=False)
    except OSError as err:
        out.refused.append(refusal(rel, os_reason(err)))
        return
    _regular(rel, st, name_bad, cap, out)


def _regular(rel: str, st: os.stat_result, name_bad: bool, cap: int, out: Walked) -> None:
    if not stat.S_ISREG(st.st_mode):
        out.refused.append(refusal(rel, special_file(st.st_mode)))
    elif name_bad:
        out.refused.append(refusal(rel, "file name is not valid UTF-8"))
    elif st.st_size > cap:
        out.refused.append(refusal(rel, too_large(st.st_size, cap)))
    else:
        out.files.append((rel, st.st_size, st.st_mtime_ns))


def _symlink(root: Path, path: str, rel: str, dataset_named: bool, name_bad: bool, cap: int,
             out: Walked) -> None:
    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            out.refused.append(refusal(rel, "symlink loop"))
        elif dataset_named:
            out.refused.append(refusal(rel, "broken symlink" if err.errno == errno.ENOENT else os_reason(err)))
        return
    if not _inside(root, Path(path)):
        out.refused.append(refusal(rel, SYMLINK_OUT))
    elif stat.S_ISDIR(st.st_mode):
        return  # a linked folder inside the root is walked where it really is
    elif dataset_named:
        _regular(rel, st, name_bad, cap, out)
    elif stat.S_ISREG(st.st_mode) and not name_bad:
        out.files.append((rel, st.st_size, st.st_mtime_ns))


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
                 walked: Walked | None = None) -> DatasetListing:
    """Pair every image with its caption; list orphans, refused entries and excluded folders.

    `read_text(rel)` reads a caption or metadata file (default: from disk, leniently); the snapshot
    passes one that reuses cached text. `walked` is a `walk_dataset(root)` result already at hand.
    """
    root_p = Path(root).expanduser()
    if not root_p.is_dir():
        raise DatasetError(f"{root_p}: dataset folder not found")
    root_p = root_p.resolve()
    if read_text is None:
        def read_text(rel: str) -> tuple[str, bool]:
            return read_text_lenient(root_p / rel)
    walked = walked if walked is not None else walk_dataset(root_p)
    # Relative paths as strings (the walk's, already POSIX and normalised): one pathlib.Path per
    # file costs more than the pairing itself. `_suffix` is pathlib's `suffix`.
    files = [f[0] for f in walked.files]
    listing = DatasetListing(root=root_p, refused_symlinks=list(walked.refused),
                             files=list(files), excluded=list(walked.excluded))
    metadata: dict[str, tuple[str, str]] = {}
    images: list[tuple[str, str]] = []  # (path, suffix)
    captions: dict[str, str] = {}  # path without suffix + lower-case suffix -> caption file
    for f in files:
        name = f.rpartition("/")[2]
        if name in METADATA_FILES:
            rows, bad = _read_metadata(root_p / f, root_p, read_text)
            metadata.update(rows)
            if bad:
                listing.metadata_decode_errors.append(f)
            continue
        suffix = _suffix(name)
        low = suffix.lower()
        if low in IMAGE_EXTENSIONS:
            images.append((f, suffix))
        elif low in CAPTION_EXTENSIONS:
            captions[f[:len(f) - len(suffix)] + low] = f
    used: set[str] = set()
    repeats: dict[str, int] = {}
    for rel, suffix in images:
        folder = rel.rpartition("/")[0]
        n = repeats.get(folder)
        if n is None:
            n = repeats[folder] = _repeats_in(folder)
        pair = Pair(image=rel, caption_source=None, caption=None, repeats=n)
        stem = rel[:len(rel) - len(suffix)]
        for ext in CAPTION_EXTENSIONS:
            cap = captions.get(stem + ext)
            if cap is not None:
                text, pair.caption_decode_error = read_text(cap)
                pair.caption = text.strip()
                pair.caption_source = cap
                used.add(cap)
                break
        if pair.caption is None and rel in metadata:
            pair.caption, pair.caption_source = metadata[rel][0].strip(), metadata[rel][1]
            pair.caption_decode_error = metadata[rel][1] in listing.metadata_decode_errors
        listing.pairs.append(pair)
    image_set = {i for i, _ in images}
    listing.orphan_captions = sorted(
        [c for c in captions.values() if c not in used]
        + [f"{src}#{name}" for name, (_, src) in metadata.items() if name not in image_set]
    )
    return listing
