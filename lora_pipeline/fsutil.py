"""Files written whole or not at all, records appended whole or not at all, hashes read in one pass,
paths kept inside their roots."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


class PathEscapeError(ValueError):
    """A path (or a symlink on it) leads outside the root it must stay in."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def atomic_path(dest: str | os.PathLike, sync: bool = True, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it is renamed onto `dest` (never half-written).
    `sync=False` skips the disk sync, for caches whose torn or lost entries are detected and redone;
    `replace=False` never replaces a `dest` that exists by then (FileExistsError: it is linked into
    place, which fails on an existing name, where a rename would overwrite)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_p = Path(tmp)
    try:
        yield tmp_p
        if sync:
            with open(tmp_p, "rb+") as f:
                os.fsync(f.fileno())
        if replace:
            os.replace(tmp_p, dest)
        else:
            os.link(tmp_p, dest)
    finally:
        if tmp_p.exists():
            tmp_p.unlink()


def atomic_write_bytes(dest: str | os.PathLike, data: bytes, sync: bool = True, replace: bool = True) -> Path:
    with atomic_path(dest, sync, replace) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def atomic_write_text(dest: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(dest, text.encode("utf-8"))


def atomic_write_json(dest: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(dest, json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n")


def inside_root(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Resolve `path` (relative to root if relative) and refuse it if it leaves `root` (symlinks too)."""
    root_r = Path(root).resolve()
    p = Path(path)
    full = (p if p.is_absolute() else root_r / p).resolve()
    try:
        full.relative_to(root_r)
    except ValueError:
        raise PathEscapeError(f"{path}: leaves its root {root_r}") from None
    return full


def model_hash(path: str | os.PathLike) -> str:
    """Identity of a base model: sha256 of a single file, or of a diffusers folder's listing of
    (relative path, sha256) for its weight and config files."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file() and not any(s.startswith(".") for s in x.relative_to(p).parts)):
        h.update(f"{f.relative_to(p).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()



def append_line(path: str | os.PathLike, line: bytes) -> None:
    """Append one record (`line`, ending in its only newline) to an append-only log, durably and whole.

    Under an exclusive `flock` (appenders wait for each other; readers need none): if the file does
    not end with a newline (a torn tail left by a crash or by an older writer) a newline is written
    first, so the torn text stays a line of its own and the new record is never glued to it. The
    record is then one `os.write` on an O_APPEND descriptor, its count checked, and fsynced. On any
    failure (ENOSPC, EIO, EFBIG, a short write) the file is truncated back to its size before the
    append, so nothing of this record remains, and OSError is raised with the cause: a short write is
    followed by one write of the rest, which either completes the record or fails with the reason."""
    if not line.endswith(b"\n") or b"\n" in line[:-1]:
        raise ValueError("append_line: one line ending in a newline")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        _lock(fd)
        size = os.fstat(fd).st_size
        data = line if size == 0 or os.pread(fd, 1, size - 1) == b"\n" else b"\n" + line
        try:
            written = os.write(fd, data)
            if written != len(data):  # the disk filled (or a size limit was hit) mid-record
                rest = os.write(fd, data[written:])  # raises the kernel's reason (ENOSPC, EFBIG)
                if written + rest != len(data):
                    raise OSError(errno.EIO, f"short write ({written + rest} of {len(data)} bytes)")
            os.fsync(fd)
        except OSError:
            with suppress(OSError):
                os.ftruncate(fd, size)  # take back whatever part of the record landed
                os.fsync(fd)
            raise
    finally:
        os.close(fd)  # also releases the lock


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock (Windows): O_APPEND alone keeps records whole
        return
    fcntl.flock(fd, fcntl.LOCK_EX)


def first_line(message: object) -> str:
    """The first line of an exception's or warning's text ("" when it has none): one-line errors."""
    return str(message).split("\n", 1)[0]
