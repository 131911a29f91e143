"""Files written whole or not at all, hashes read in one pass, paths kept inside their roots."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it is renamed onto `dest` (never half-written)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_p = Path(tmp)
    try:
        yield tmp_p
        with open(tmp_p, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_p, dest)
    finally:
        if tmp_p.exists():
            tmp_p.unlink()


def atomic_write_bytes(dest: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(dest) as tmp:
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
