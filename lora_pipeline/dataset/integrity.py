"""Integrity of the content-addressed object store (`objects/<sha[:2]>/<sha>`, see snapshot.py).

A stored object is named by the sha256 of its bytes, so it can be checked against its own name. The
everyday path (`ObjectStore.has`) compares sizes only; with `checks.full_verify` every object the
dataset's snapshots name is re-hashed here (`verify_snapshot_objects`), a changed one is rewritten from
the source when the source still holds those bytes (`VerifyingObjectStore`), and what was found is one
finding naming each object (`Integrity.finding()`). `trace` checks the stored copies it names with
`verify_object`.

The finding code is `PROVENANCE.INCOMPLETE`: a snapshot whose stored copy changed no longer proves which
files a run trained on (the catalogue has no store-integrity code; DATASET.SOURCE_CHANGED is about the
source folder, which may be intact).

Objects are opened without following symlinks and without blocking, and only a regular file inside the
store is read: a planted symlink, FIFO or device is reported as `unreadable`, never followed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from lora_pipeline.dataset.scan import ObjectStore
from lora_pipeline.findings import Finding
from lora_pipeline.storage import Storage

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
MAX_OBJECT_BYTES = 4 << 30  # a dataset file larger than this is not hashed (reported unreadable)
MAX_EXAMPLES = 20
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ObjectState:
    sha256: str
    path: str
    status: str  # ok | changed | missing | unreadable
    now: str | None = None  # the sha256 of the bytes there now (changed)
    reason: str = ""


def verify_object(storage_root: str | os.PathLike, sha256: str,
                  max_bytes: int = MAX_OBJECT_BYTES) -> ObjectState:
    """Re-hash the stored object `sha256` (hash, not size)."""
    if not isinstance(sha256, str) or not SHA256_HEX.match(sha256):
        return ObjectState(str(sha256), "", "unreadable", reason="not a sha256 (64 lowercase hex digits)")
    root = Path(storage_root).resolve()
    path = Storage(root).object(sha256)
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        return ObjectState(sha256, str(path), "missing", reason="not in the store")
    except (OSError, RuntimeError) as e:
        return ObjectState(sha256, str(path), "unreadable", reason=f"cannot resolve ({e.__class__.__name__})")
    if real != path:
        return ObjectState(sha256, str(path), "unreadable", reason="a symlink in the store")
    try:
        now = _hash_regular(real, max_bytes)
    except _NotRegular as e:
        return ObjectState(sha256, str(path), "unreadable", reason=str(e))
    except OSError as e:
        return ObjectState(sha256, str(path), "unreadable", reason=f"cannot read ({e.strerror or e})")
    if now != sha256:
        return ObjectState(sha256, str(path), "changed", now=now, reason="its bytes no longer hash to its name")
    return ObjectState(sha256, str(path), "ok", now=now)


class _NotRegular(Exception):
    pass


def _hash_regular(path: Path, max_bytes: int) -> str:
    if not stat.S_ISREG(os.lstat(path).st_mode):  # a FIFO or device is never opened
        raise _NotRegular("not a regular file")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _NotRegular("a symlink in the store") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _NotRegular("not a regular file")
        if st.st_size > max_bytes:
            raise _NotRegular(f"larger than the {max_bytes} byte limit")
        h = hashlib.sha256()
        read = 0
        while chunk := os.read(fd, _CHUNK):
            read += len(chunk)
            if read > max_bytes:
                raise _NotRegular(f"larger than the {max_bytes} byte limit")
            h.update(chunk)
        return h.hexdigest()
    finally:
        os.close(fd)


@dataclass
class Integrity:
    """What re-hashing the objects of a dataset's snapshots found."""

    dataset: str
    checked: int = 0
    problems: list[ObjectState] = field(default_factory=list)
    files: dict[str, list[str]] = field(default_factory=dict)  # sha256 -> "<snapshot_id>:<relative path>"
    repaired: list[str] = field(default_factory=list)  # sha256 rewritten from the source bytes

    def note_repairs(self, storage_root: str | os.PathLike, rewritten: set[str]) -> None:
        """Record which changed objects a full re-scan rewrote intact from the source."""
        self.repaired = sorted(p.sha256 for p in self.problems
                               if p.sha256 in rewritten and verify_object(storage_root, p.sha256).status == "ok")

    def finding(self) -> Finding | None:
        if not self.problems:
            return None
        left = [p for p in self.problems if p.sha256 not in self.repaired]
        objects = [{"object": p.path, "sha256": p.sha256, "status": p.status, "sha256_now": p.now,
                    "reason": p.reason, "repaired_from_source": p.sha256 in self.repaired,
                    "files": self.files.get(p.sha256, [])[:MAX_EXAMPLES]} for p in self.problems]
        names = ", ".join(p.path for p in self.problems[:3]) + (" ..." if len(self.problems) > 3 else "")
        tail = (f"{len(self.repaired)} restored from the source folder, {len(left)} not restorable "
                "(the source no longer holds those bytes)")
        return Finding(
            "PROVENANCE.INCOMPLETE", f"dataset {self.dataset}",
            f"{len(self.problems)} stored snapshot object(s) no longer match their content address "
            f"({names}); {tail}.",
            {"objects": objects[:MAX_EXAMPLES], "count": len(self.problems), "checked": self.checked,
             "repaired": len(self.repaired), "not_repaired": len(left)},
            severity=None if left else "warn")


def verify_snapshot_objects(storage_root: str | os.PathLike, dataset: str) -> Integrity:
    """Re-hash every object named by any snapshot of `dataset` (each object once)."""
    from lora_pipeline.dataset.snapshot import list_snapshots

    out = Integrity(dataset)
    for snap in list_snapshots(storage_root, dataset):
        for rel, sha in snap.files.items():
            out.files.setdefault(str(sha), []).append(f"{snap.snapshot_id}:{rel}")
    for sha in sorted(out.files):
        state = verify_object(storage_root, sha)
        out.checked += 1
        if state.status != "ok":
            out.problems.append(state)
    return out


class VerifyingObjectStore(ObjectStore):
    """The object store for `full_verify`: an object counts as present only when its bytes hash to its
    name, so `put` rewrites (atomically) a changed or missing object from the source's bytes."""

    def __init__(self, root: Path, verified: set[str] | None = None):
        super().__init__(root)
        self._storage_root = Path(root)
        self._verified = set(verified or ())  # objects already re-hashed intact in this pass
        self.rewritten: set[str] = set()

    def has(self, sha: str, size: int) -> bool:
        if not super().has(sha, size):
            return False
        if sha in self._verified:
            return True
        if verify_object(self._storage_root, sha).status == "ok":
            self._verified.add(sha)
            return True
        return False

    def put(self, sha: str, data: bytes) -> bool:
        stored = super().put(sha, data)
        if stored:
            self.rewritten.add(sha)
            self._verified.add(sha)
        return stored
