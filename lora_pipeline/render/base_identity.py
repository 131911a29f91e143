"""A base model's identity (`fsutil.model_hash`: sha256 of every weight and config file), hashed once
per content rather than once per process.

Hashing a base is the largest fixed cost of an evaluation at real scale: an SD1.5 folder is 2-4 GB,
SDXL ~7 GB, FLUX ~30 GB, read at about 1 GB/s. The CLI evaluates every checkpoint in one process,
but each `lora-pipeline evaluate` is a new process, a daemon's run is one process per checkpoint, and
matching a run's declared base by hash hashes every configured base. So the identity is kept:

- in memory, per process, keyed by the folder's listing;
- on disk, under the storage root (`render-cache/base-identity/<listing digest>.json`), when the
  caller gives one. The listing digest covers, for every file of the model (hidden ones included),
  its relative path, size, mtime, ctime and inode. Rewriting a file changes its ctime even when its
  size and mtime are put back, and a copy or a move to another disk gets new inodes: either way the
  entry no longer matches and the model is hashed again. An entry that is not ours (unreadable,
  malformed, for another listing, a symlink) is ignored and replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from pathlib import Path

from lora_pipeline.fsutil import atomic_write_json, model_hash

FOLDER = "base-identity"  # under render-cache/: a cache, safe to delete
_MAX_ENTRY = 4096
_SHA = re.compile(r"[0-9a-f]{64}")
_MEMORY: dict[str, str] = {}  # listing digest -> identity


def listing_digest(path: Path) -> str:
    """sha256 of the model's resolved path and of each file's (path, size, mtime, ctime, inode)."""
    p = Path(path).resolve()
    files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
    h = hashlib.sha256(f"{p}\n".encode())
    for f in files:
        st = f.stat()
        rel = f.name if f == p else f.relative_to(p).as_posix()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\n".encode())
    return h.hexdigest()


def base_identity(path: Path, cache_root: Path | None = None) -> str:
    """model_hash(path), unless this listing was hashed before (module docstring). `cache_root`: the
    render cache folder (`<storage>/render-cache`) where entries are kept across processes."""
    p = Path(path).resolve()
    digest = listing_digest(p)
    if digest in _MEMORY:
        return _MEMORY[digest]
    entry = Path(cache_root) / FOLDER / f"{digest}.json" if cache_root is not None else None
    known = _read(entry, digest) if entry is not None else None
    if known is None:
        known = model_hash(p)
        if entry is not None:
            with contextlib.suppress(OSError):  # a read-only storage only costs the next process the hash
                atomic_write_json(entry, {"version": 1, "listing": digest, "path": str(p), "model_hash": known})
    _MEMORY[digest] = known
    return known


def _read(entry: Path, digest: str) -> str | None:
    try:
        if entry.is_symlink() or entry.stat().st_size > _MAX_ENTRY:
            return None
        doc = json.loads(entry.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("version") != 1 or doc.get("listing") != digest:
        return None
    value = doc.get("model_hash")
    return value if isinstance(value, str) and _SHA.fullmatch(value) else None


def clear_memory() -> None:
    """Forget the in-process identities (tests: a new process)."""
    _MEMORY.clear()
