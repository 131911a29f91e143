"""The object store of dataset snapshots: objects packed one pack file per snapshot (issue 16).

    objects/packs/<snapshot_id>-<16 hex>.pack           the objects a snapshot stored first, read-only
    snapshots/<dataset>/<snapshot_id>/objects.parquet   where every object of that snapshot lies
    objects/<sha[:2]>/<sha>                             loose objects: every object of a snapshot taken
                                                        before packs, and objects restored by full_verify

A pack starts with the 8 bytes `LPPACK1\\n`; each object in it is a 40-byte header (its raw sha256, its
length as 8 bytes little-endian) followed by its bytes, so a pack describes itself. `objects.parquet`
has one row per object the snapshot names: `sha256`, `pack` (the pack file's name; null for a loose
object), `offset` (of the object's bytes, after its header) and `length`. An object the store already
holds (in any snapshot's pack, or loose) is referenced where it lies, never stored twice: a snapshot
that adds one image to a dataset writes a pack of one image (and its caption).

Objects stay addressed by their sha256 and are checked against it when read
(lora_pipeline.dataset.integrity: `read_object`, `verify_object`). A pack is written by the scan's threads at reserved
offsets under a temporary name (`objects/packs/.<random>.tmp`, read-only from birth), fsynced and
renamed before the snapshot folder that names it is renamed into place. A pack whose snapshot was
never written (a crash between the two renames) is named by no index and never read.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import stat
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

MAGIC = b"LPPACK1\n"
HEADER = struct.Struct("<32sQ")  # raw sha256, length
INDEX_FILE = "objects.parquet"
INDEX_SCHEMA = {"sha256": pl.String(), "pack": pl.String(), "offset": pl.Int64(), "length": pl.Int64()}
PACK_NAME = r"^[0-9a-f]{20}-[0-9a-f]{16}\.pack$"
SHA_HEX = r"^[0-9a-f]{64}$"
MAX_INDEX_BYTES = 1 << 30

# Where an object lies: (pack file name, or None for a loose object; offset of its bytes; length, -1
# when not recorded: a loose object of a snapshot taken before packs).
Loc = tuple[str | None, int, int]


def packs_dir(storage_root: str | os.PathLike) -> Path:
    return Path(storage_root) / "objects" / "packs"


def loose_path(storage_root: str | os.PathLike, sha: str) -> Path:
    return Path(storage_root) / "objects" / sha[:2] / sha


def location_file(storage_root: str | os.PathLike, sha: str, loc: Loc) -> Path:
    """The file an object lies in: its pack, or its loose file."""
    return loose_path(storage_root, sha) if loc[0] is None else packs_dir(storage_root) / loc[0]


def describe(storage_root: str | os.PathLike, sha: str, loc: Loc) -> str:
    """`<pack>[start:end]` for a packed object, the loose file's path otherwise."""
    if loc[0] is None:
        return str(loose_path(storage_root, sha))
    return f"{packs_dir(storage_root) / loc[0]}[{loc[1]}:{loc[1] + loc[2]}]"


@dataclass(frozen=True)
class StoredObject:
    sha256: str
    file: Path  # the pack, or the loose file
    offset: int
    length: int  # -1: the whole loose file
    display: str  # `<pack>[start:end]` or the loose file's path


def object_location(storage_root: str | os.PathLike, sha256: str,
                    snapshot: Any = None) -> StoredObject | None:
    """Where the store keeps `sha256`: as `snapshot` names it, else the first packed copy, else the
    loose file when there is one. Nothing is read or checked (see integrity.read_object)."""
    root = Path(storage_root)
    loc: Loc | None = snapshot.objects().location(sha256) if snapshot is not None else \
        next(iter(store_index(root).get(sha256, [])), None)
    if loc is None and location_file(root, sha256, (None, 0, -1)).is_file():
        loc = (None, 0, -1)
    if loc is None:
        return None
    return StoredObject(sha256, location_file(root, sha256, loc), loc[1], loc[2], describe(root, sha256, loc))


class ObjectIndex:
    """The object locations of one snapshot (`objects.parquet`): sha256 -> Loc. A snapshot taken
    before packs has none (`legacy`): its objects are loose. A malformed index names no object and
    says why in `error`."""

    def __init__(self, entries: dict[str, Loc] | None = None, legacy: bool = False, error: str = ""):
        self.entries = entries or {}
        self.legacy, self.error = legacy, error

    @classmethod
    def of_snapshot(cls, folder: str | os.PathLike) -> ObjectIndex:
        from lora_pipeline.dataset.guard import Refused, read_capped

        path = Path(folder) / INDEX_FILE
        if not os.path.lexists(path):
            return cls(legacy=True)
        if os.path.islink(path):
            return cls(error=f"{path}: malformed object index (a symlink; not followed)")
        try:
            df = pl.read_parquet(io.BytesIO(read_capped(path, MAX_INDEX_BYTES)))
            return cls(index_entries(df))
        except (Refused, ValueError, OSError, pl.exceptions.PolarsError) as e:
            first = str(e).split("\n", 1)[0][:200]
            return cls(error=f"{path}: malformed object index ({first})")

    def location(self, sha: str) -> Loc | None:
        if self.legacy:
            return (None, 0, -1)
        return self.entries.get(sha)


def index_entries(df: pl.DataFrame) -> dict[str, Loc]:
    """The rows of an object index, checked (ValueError names what is wrong)."""
    for col, dtype in INDEX_SCHEMA.items():
        if df.schema.get(col) != dtype:
            raise ValueError(f"column {col}: {df.schema.get(col)}, not {dtype}")
    # the pack names checked once each (a snapshot's objects lie in a few packs)
    bad_packs = [p for p in df["pack"].drop_nulls().unique().to_list() if not re.fullmatch(PACK_NAME, p)]
    bad = df.filter(~pl.col("sha256").fill_null("").str.contains(SHA_HEX) | pl.col("pack").is_in(bad_packs)
                    | pl.col("offset").is_null() | pl.col("length").is_null()
                    | (pl.col("offset") < 0) | (pl.col("length") < 0))
    if bad.height:
        raise ValueError(f"row {bad.row(0)}")
    return dict(zip(df["sha256"].to_list(),
                    zip(df["pack"].to_list(), df["offset"].to_list(), df["length"].to_list(), strict=True),
                    strict=True))


def store_index(storage_root: str | os.PathLike) -> dict[str, list[Loc]]:
    """Every packed location of every object, from the indexes of all snapshots of all datasets."""
    out: dict[str, list[Loc]] = {}
    base = Path(storage_root) / "snapshots"
    for ds in _dirs(base):
        for snap in _dirs(ds):
            for sha, loc in ObjectIndex.of_snapshot(snap).entries.items():
                if loc[0] is not None:
                    locs = out.setdefault(sha, [])
                    if loc not in locs:
                        locs.append(loc)
    return out


def _dirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as it:
            return sorted(Path(e.path) for e in it if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
    except OSError:
        return []


class ObjectStore:
    """Where a snapshot's objects go. A new object is appended to this snapshot's pack (threads write
    at offsets reserved under a lock); one the store holds (by size, on the everyday path) is
    referenced where it lies. `commit` renames the pack into place; `index_frame` is the snapshot's
    `objects.parquet`; `spill` stores what was packed as loose objects when no snapshot is written."""

    def __init__(self, storage_root: str | os.PathLike, prefer: Callable[[], ObjectIndex] | None = None):
        self.storage_root = Path(storage_root)
        self.root = self.storage_root / "objects"
        self._prefer_loader = prefer  # the previous snapshot's index: most objects are found there
        self._prefer: ObjectIndex | None = None
        self._all: dict[str, list[Loc]] | None = None
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._tmp: Path | None = None
        self._end = len(MAGIC)
        self.pending: dict[str, tuple[int, int]] = {}  # sha -> (offset, length) in this pack
        self.pack_name: str | None = None
        self.loose_written: set[str] = set()
        self.good: dict[str, Loc] = {}  # sha -> a location checked by hash (VerifyingObjectStore)
        self._pack_sizes: dict[str, int] = {}
        self._any_loose: bool | None = None

    # -- where objects are ------------------------------------------------------------------------
    def _load_prefer(self) -> None:
        if self._prefer is None and self._prefer_loader is not None:
            with self._lock:
                if self._prefer is None:
                    self._prefer = self._prefer_loader()

    def locate(self, sha: str) -> Loc | None:
        """A committed packed location of `sha` (the previous snapshot's first), else None."""
        self._load_prefer()
        loc = self._prefer.entries.get(sha) if self._prefer is not None else None
        if loc is not None and loc[0] is not None:
            return loc
        if self._all is None:
            with self._lock:
                if self._all is None:
                    self._all = store_index(self.storage_root)
        locs = self._all.get(sha)
        return locs[0] if locs else None

    def _pack_ok(self, loc: Loc, size: int) -> bool:
        name = loc[0]
        if name not in self._pack_sizes:
            try:
                st = os.lstat(packs_dir(self.storage_root) / name)
                self._pack_sizes[name] = st.st_size if stat.S_ISREG(st.st_mode) else -1
            except OSError:
                self._pack_sizes[name] = -1
        return loc[2] == size and self._pack_sizes[name] >= loc[1] + size

    def _loose_listed(self) -> bool:
        """Whether objects/ has any folder of loose objects (listed once)."""
        if self._any_loose is None:
            try:
                self._any_loose = any(len(n) == 2 for n in os.listdir(self.root))
            except OSError:
                self._any_loose = False
        return self._any_loose

    def _loose_has(self, sha: str, size: int) -> bool:
        if not (self._loose_listed() or sha in self.loose_written):
            return False
        try:
            st = os.lstat(loose_path(self.storage_root, sha))
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == size

    def where(self, sha: str, size: int) -> Loc | None:
        """Where the store holds `sha` intact by size (committed objects only)."""
        if sha in self.good:
            return self.good[sha]
        if sha in self.loose_written:
            return (None, 0, size)
        loc = self.locate(sha)
        if loc is not None and self._pack_ok(loc, size):
            return loc
        return (None, 0, size) if self._loose_has(sha, size) else None

    def has(self, sha: str, size: int) -> bool:
        if sha in self.pending:
            return True
        if self._prefer is not None and not self.good:  # the common case, kept cheap (40,000 calls)
            loc = self._prefer.entries.get(sha)
            if loc is not None and loc[0] is not None and loc[2] == size \
                    and self._pack_sizes.get(loc[0], -1) >= loc[1] + size:
                return True
        return self.where(sha, size) is not None

    def held_view(self) -> tuple[dict[str, Loc], dict[str, int]] | None:
        """For `has` inline in a loop over a dataset's files: the previous snapshot's index and the
        sizes of the packs `where` has looked at. An object there, in a pack, with its length, in a
        pack at least as long as the object's end, is one `has` finds; any other is asked of `has`.
        None for a store that checks more (VerifyingObjectStore)."""
        if type(self) is not ObjectStore:
            return None
        self._load_prefer()
        return (self._prefer.entries if self._prefer is not None else {}), self._pack_sizes

    def put_function(self) -> Callable[[str, bytes], bool]:
        """`put`, for one call per file of a dataset: an object found in none of the places `has`
        looks (this pack, the previous snapshot's index, every snapshot's index, loose files) is
        appended without walking them one method at a time; any other goes through `put`."""
        if type(self) is not ObjectStore:
            return self.put
        pending, good, loose_written, put, append = self.pending, self.good, self.loose_written, self.put, self.append
        known: list[dict] = []  # [previous index entries, every index's entries], read at the first call

        def fast(sha: str, data: bytes) -> bool:
            if not known:
                self._load_prefer()
                if self._all is None:
                    with self._lock:
                        if self._all is None:
                            self._all = store_index(self.storage_root)
                self._loose_listed()
                known[:] = [self._prefer.entries if self._prefer is not None else {}, self._all]
            if self._any_loose or good or loose_written or sha in pending or sha in known[0] or sha in known[1]:
                return put(sha, data)
            return append(sha, data)  # `has` would say no: this store holds nothing under this sha

        return fast

    # -- writing --------------------------------------------------------------------------------
    def put(self, sha: str, data: bytes) -> bool:
        """Store `data` (whose sha256 is `sha`); False when the store holds it already."""
        if self.has(sha, len(data)):
            return False
        return self.append(sha, data)

    def append(self, sha: str, data: bytes) -> bool:
        with self._lock:
            if sha in self.pending:
                return False
            if self._fd is None:
                self._open()
            off = self._end
            self._end += HEADER.size + len(data)
            self.pending[sha] = (off + HEADER.size, len(data))
        _pwrite_all(self._fd, [HEADER.pack(bytes.fromhex(sha), len(data)), data], off)  # outside the lock
        return True

    def _open(self) -> None:
        d = packs_dir(self.storage_root)
        d.mkdir(parents=True, exist_ok=True)
        self._tmp = d / f".{secrets.token_hex(8)}.{os.getpid()}.tmp"
        self._fd = os.open(self._tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                           | getattr(os, "O_CLOEXEC", 0), 0o444)  # read-only from birth
        _pwrite_all(self._fd, [MAGIC], 0)

    def write_loose(self, sha: str, data: bytes) -> None:
        """`objects/<sha[:2]>/<sha>`, written under a temporary name, read-only, then renamed."""
        d = self.root / sha[:2]
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{sha}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o444)
            try:
                _pwrite_all(fd, [data], 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, d / sha)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.loose_written.add(sha)

    def commit(self, snapshot_id: str) -> str | None:
        """Make the pack durable and give it its name; None when nothing was packed."""
        if self._fd is None or self._tmp is None:
            return None
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        name = f"{snapshot_id}-{secrets.token_hex(8)}.pack"
        os.rename(self._tmp, packs_dir(self.storage_root) / name)
        self._tmp, self.pack_name = None, name
        return name

    def index_frame(self, objects: Iterable[tuple[str, int]]) -> pl.DataFrame:
        """The snapshot's `objects.parquet`: where each (sha256, size) lies, sorted by sha256."""
        rows: dict[str, Loc] = {}
        for sha, size in objects:
            if sha in rows:
                continue
            if sha in self.pending and self.pack_name is not None:
                off, length = self.pending[sha]
                rows[sha] = (self.pack_name, off, length)
            else:
                rows[sha] = self.where(sha, size) or (None, 0, size)
        shas = sorted(rows)
        return pl.DataFrame({"sha256": shas, "pack": [rows[s][0] for s in shas],
                             "offset": [rows[s][1] for s in shas], "length": [rows[s][2] for s in shas]},
                            schema=INDEX_SCHEMA)

    def spill(self) -> int:
        """No snapshot names this pack (its content was known, some objects were missing): store what
        it holds as loose objects instead, and drop it. The number of objects written."""
        if self._tmp is None or self._fd is None:
            return 0
        for sha, (off, length) in sorted(self.pending.items()):
            self.write_loose(sha, os.pread(self._fd, length, off))
        n = len(self.pending)
        self.pending.clear()
        self.discard()
        return n

    def discard(self) -> None:
        """Drop an uncommitted pack (after a failure, or once spilled)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = None

    def remove_committed(self) -> None:
        """Remove this store's committed pack (its snapshot folder could not be written)."""
        if self.pack_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(packs_dir(self.storage_root) / self.pack_name)
            self.pack_name = None


def _pwrite_all(fd: int, parts: list[bytes], off: int) -> None:
    """Write `parts` one after another at `off` (one pwritev when it writes them whole)."""
    total = sum(len(p) for p in parts)
    n = os.pwritev(fd, parts, off) if hasattr(os, "pwritev") else 0
    if n == total:
        return
    data = memoryview(b"".join(parts))[n:]
    off += n
    while data:
        n = os.pwrite(fd, data, off)
        data, off = data[n:], off + n
