"""What `trace` may read, and how: a render's PNG chunk and sidecar are untrusted input.

Ids read from a chunk are used only when they are in the CONTRACT's id alphabet and name something
storage holds. Files are read only under the configured roots (storage, the dataset folders,
training_runs, the base_models entries) after resolving symlinks, only when they are regular files,
opened without blocking or following a last symlink, and only up to a size limit; a folder is hashed
only as a base model (file count and size limits). Anything else raises `FileProblem` with a status
(`missing` | `unverifiable`) and a one-line reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ID = re.compile(r"^[A-Za-z0-9._-]{1,255}$")  # CONTRACT section 3: run and checkpoint ids
MiB, GiB = 1 << 20, 1 << 30
LIMITS = {"json": 64 * MiB, "render": 1 * GiB, "source": 4 * GiB, "checkpoint": 64 * GiB, "model": 256 * GiB}
MAX_MODEL_FILES = 20_000
_CHUNK = 1 << 20


class FileProblem(Exception):
    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def valid_id(value: Any) -> bool:
    return isinstance(value, str) and bool(ID.match(value)) and value not in (".", "..")


@dataclass(frozen=True)
class Roots:
    storage: Path
    training_runs: Path
    datasets: dict[str, Path] = field(default_factory=dict)
    base_models: dict[str, Path] = field(default_factory=dict)  # name -> the entry (file or folder), resolved

    @classmethod
    def of(cls, config: Any) -> Roots:
        return cls(storage=_abs(config.storage), training_runs=_abs(config.training_runs),
                   datasets={k: _abs(v.path) for k, v in config.datasets.items()},
                   base_models={k: _abs(v) for k, v in config.base_models.items()})

    def dataset_root_of(self, path: str | os.PathLike) -> Path | None:
        """The configured dataset folder holding `path` (resolved), or None."""
        try:
            p = _abs(path)
        except (OSError, RuntimeError, ValueError):
            return None
        return next((r for r in self.datasets.values() if inside(p, r)), None)


def _abs(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def model_roots(entry: Path, configured: Path) -> list[Path]:
    """Where a base model's files may lie: the entry, and for a Hugging Face cache snapshot folder
    (`.../snapshots/<rev>`, files symlinked into `../../blobs`) that repository's blobs folder."""
    roots = [entry]
    if configured.parent.name == "snapshots":
        roots.append(_abs(configured.parent.parent / "blobs"))
    return roots


def resolve_in(path: Any, roots: Iterable[Path], where: str) -> Path:
    """The real path of `path` (absolute, symlinks resolved) when it lies under one of `roots`."""
    if not isinstance(path, str | os.PathLike) or not os.fspath(path) or "\0" in os.fspath(path):
        raise FileProblem("unverifiable", f"{path!r} is not a path")
    if not os.path.isabs(path):
        raise FileProblem("unverifiable", f"{path}: not an absolute path")
    try:
        real = Path(path).resolve(strict=True)
    except FileNotFoundError:
        raise FileProblem("missing", f"{path}: not on disk now") from None
    except (OSError, RuntimeError) as e:
        raise FileProblem("unverifiable", f"{path}: cannot resolve ({e.__class__.__name__})") from None
    if not any(inside(real, r) for r in roots):
        raise FileProblem("unverifiable", f"{path}: outside {where}; not read")
    return real


def _open_regular(real: Path, limit: int) -> int:
    try:
        st = os.stat(real)
    except OSError as e:
        raise FileProblem("unverifiable", f"{real}: cannot stat ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise FileProblem("unverifiable", f"{real}: not a regular file ({_kind(st.st_mode)}); not read")
    if st.st_size > limit:
        raise FileProblem("unverifiable", f"{real}: {st.st_size} bytes, over the {limit} byte limit; not read")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(real, flags)
    except OSError as e:
        raise FileProblem("unverifiable", f"{real}: cannot open ({e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # replaced between the stat and the open
        os.close(fd)
        raise FileProblem("unverifiable", f"{real}: not a regular file ({_kind(st.st_mode)}); not read")
    return fd


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def _chunks(fd: int, limit: int, real: Path) -> Iterable[bytes]:
    total = 0
    while chunk := os.read(fd, _CHUNK):
        total += len(chunk)
        if total > limit:
            raise FileProblem("unverifiable", f"{real}: grew over the {limit} byte limit while read")
        yield chunk


def hash_file(path: Any, roots: Iterable[Path], where: str, limit: int) -> str:
    real = resolve_in(path, roots, where)
    fd = _open_regular(real, limit)
    try:
        h = hashlib.sha256()
        for chunk in _chunks(fd, limit, real):
            h.update(chunk)
        return h.hexdigest()
    except OSError as e:
        raise FileProblem("unverifiable", f"{real}: cannot read ({e.strerror})") from None
    finally:
        os.close(fd)


def read_json(path: Any, roots: Iterable[Path], where: str, limit: int = LIMITS["json"]) -> dict[str, Any]:
    """A JSON object file under `roots`; FileProblem when absent, not a regular file, too big or not an object."""
    real = resolve_in(path, roots, where)
    fd = _open_regular(real, limit)
    try:
        data = b"".join(_chunks(fd, limit, real))
    except OSError as e:
        raise FileProblem("unverifiable", f"{real}: cannot read ({e.strerror})") from None
    finally:
        os.close(fd)
    try:
        doc = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        raise FileProblem("unverifiable", f"{real}: not valid JSON") from None
    if not isinstance(doc, dict):
        raise FileProblem("unverifiable", f"{real}: not a JSON object")
    return doc


def hash_model(entry: Path, configured: Path) -> str:
    """fsutil.model_hash of a configured base model, read only inside it (see `model_roots`): the
    sha256 of one file, or of a folder's sorted (relative path, sha256) listing of its regular files
    (hidden names skipped, symlinked folders not entered), within MAX_MODEL_FILES and LIMITS['model']."""
    roots = model_roots(entry, configured)
    where = f"the base model entry {configured}"
    if not entry.is_dir():
        return hash_file(str(entry), roots, where, LIMITS["model"])
    files: list[tuple[tuple[str, ...], str]] = []
    for dirpath, dirs, names in os.walk(entry, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for n in names:
            if n.startswith("."):
                continue
            p = os.path.join(dirpath, n)
            try:
                regular = stat.S_ISREG(os.stat(p).st_mode)
            except OSError:
                regular = False
            if regular:  # model_hash counts regular files (through symlinks) only
                files.append((Path(p).relative_to(entry).parts, p))
            if len(files) > MAX_MODEL_FILES:
                raise FileProblem("unverifiable", f"{entry}: over {MAX_MODEL_FILES} files; not hashed")
    h = hashlib.sha256()
    budget = LIMITS["model"]
    for parts, p in sorted(files):
        budget -= os.stat(p).st_size
        if budget < 0:
            raise FileProblem("unverifiable", f"{entry}: over {LIMITS['model']} bytes in all; not hashed")
        h.update(f"{'/'.join(parts)}\0{hash_file(p, roots, where, LIMITS['model'])}\n".encode())
    return h.hexdigest()
