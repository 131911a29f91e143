"""Integrity of the object store of dataset snapshots (lora_pipeline.dataset.pack).

A stored object is named by the sha256 of its bytes, so it can be checked against its own name wherever
it lies: in a pack (`objects/packs/<name>.pack`, where the snapshot's `objects.parquet` says) or loose
(`objects/<sha[:2]>/<sha>`: snapshots taken before packs, and objects restored here). A snapshot's
object is read where its index says, and from its loose copy when that is not intact. The everyday path
(`ObjectStore.has`) compares sizes only; with `checks.full_verify` every object the dataset's snapshots
name is re-hashed here (`verify_snapshot_objects`), a changed one is rewritten from the source, as a
loose object, when the source still holds those bytes (`VerifyingObjectStore`), and what was found is
one finding naming each object (`Integrity.finding()`). `trace` checks the stored copies it names with
`verify_object`; `read_object` gives an object's bytes, checked.

The finding code is `PROVENANCE.INCOMPLETE`: a snapshot whose stored copy changed no longer proves which
files a run trained on (the catalogue has no store-integrity code; DATASET.SOURCE_CHANGED is about the
source folder, which may be intact).

Packs and objects are opened without following symlinks and without blocking, and only a regular file
inside the store is read, only within its bounds: a planted symlink, FIFO or device is reported as
`unreadable`, never followed.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_pipeline.dataset.pack import (
    Loc,
    ObjectIndex,
    ObjectStore,
    describe,
    location_file,
    loose_path,
    store_index,
)
from lora_pipeline.findings import Finding

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
MAX_OBJECT_BYTES = 4 << 30  # a dataset file larger than this is not hashed (reported unreadable)
MAX_EXAMPLES = 20
_CHUNK = 1 << 20
_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


class ObjectError(Exception):
    """An object that cannot be read intact. `status`: missing | changed | unreadable; `now`: the
    sha256 of the bytes found (changed)."""

    def __init__(self, status: str, reason: str, now: str | None = None):
        super().__init__(reason)
        self.status, self.reason, self.now = status, reason, now


@dataclass(frozen=True)
class ObjectState:
    sha256: str
    path: str  # the loose file, or `<pack>[start:end]`
    status: str  # ok | changed | missing | unreadable
    now: str | None = None  # the sha256 of the bytes there now (changed)
    reason: str = ""
    location: Loc | None = None  # (pack name or None for loose, offset, length)


def read_location(storage_root: str | os.PathLike, sha: str, loc: Loc, max_bytes: int,
                  sink: Callable[[bytes], object]) -> None:
    """Feed the object's bytes to `sink`, chunk by chunk. Only a regular file inside the store is
    opened (no symlink anywhere below the storage root, never a FIFO or device, never blocking), and
    only within its bounds. Raises ObjectError (missing | unreadable); the caller compares hashes."""
    root = Path(storage_root).resolve()
    path = location_file(root, sha, loc)
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise ObjectError("missing", "not in the store" if loc[0] is None else "its pack is not in the store") from None
    except (OSError, RuntimeError) as e:
        raise ObjectError("unreadable", f"cannot resolve ({e.__class__.__name__})") from None
    if real != path:
        raise ObjectError("unreadable", "a symlink in the store")
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):  # a FIFO or device is never opened
            raise ObjectError("unreadable", "not a regular file")
        fd = os.open(path, _FLAGS)
    except OSError as e:
        raise ObjectError("unreadable", f"cannot open ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ObjectError("unreadable", "not a regular file")
        size = st.st_size
        off, length = (0, size) if loc[0] is None else (loc[1], loc[2])
        if length > max_bytes:
            raise ObjectError("unreadable", f"larger than the {max_bytes} byte limit")
        if off + length > size:
            raise ObjectError("missing", f"the pack ends at byte {size}, before the object's end ({off + length})")
        done = 0
        while done < length:
            chunk = os.pread(fd, min(_CHUNK, length - done), off + done)
            if not chunk:
                raise ObjectError("missing", f"the file ended after {done} of {length} bytes")
            sink(chunk)
            done += len(chunk)
        if loc[0] is None and os.pread(fd, 1, size):
            raise ObjectError("unreadable", f"grew over the {max_bytes} byte limit while read")
    except OSError as e:
        raise ObjectError("unreadable", f"cannot read ({e.strerror or e})") from None
    finally:
        os.close(fd)


def verify_location(storage_root: str | os.PathLike, sha256: str, loc: Loc,
                    max_bytes: int = MAX_OBJECT_BYTES) -> ObjectState:
    """Re-hash the object at one location (hash, not size)."""
    h = hashlib.sha256()
    path = describe(storage_root, sha256, loc)
    try:
        read_location(storage_root, sha256, loc, max_bytes, h.update)
    except ObjectError as e:
        return ObjectState(sha256, path, e.status, reason=e.reason, location=loc)
    now = h.hexdigest()
    if now != sha256:
        return ObjectState(sha256, path, "changed", now=now, reason="its bytes no longer hash to its name",
                           location=loc)
    return ObjectState(sha256, path, "ok", now=now, location=loc)


def _candidates(root: Path, sha256: str, snapshot: Any) -> tuple[list[Loc], ObjectState | None]:
    """Where to look for `sha256`: the snapshot's location (or every packed one in the store), then
    the loose file; with a state to report when the snapshot's index cannot say."""
    loose: Loc = (None, 0, -1)
    if snapshot is None:
        return [*store_index(root).get(sha256, []), loose], None
    index: ObjectIndex = snapshot.objects() if hasattr(snapshot, "objects") else snapshot
    loc = index.location(sha256)
    if loc is None:
        state = ObjectState(sha256, str(loose_path(root, sha256)), "unreadable" if index.error else "missing",
                            reason=index.error or "not in the snapshot's object index")
        return [loose], state
    return ([loc] if loc[0] is None else [loc, loose]), None


def _check(root: Path, sha256: str, candidates: list[Loc], max_bytes: int,
           first: ObjectState | None = None) -> ObjectState:
    states = [first] if first is not None else []
    for loc in candidates:
        state = verify_location(root, sha256, loc, max_bytes)
        if state.status == "ok":
            return state
        states.append(state)
    return states[0]


def verify_object(storage_root: str | os.PathLike, sha256: str, max_bytes: int = MAX_OBJECT_BYTES,
                  snapshot: Any = None) -> ObjectState:
    """Re-hash the stored object `sha256` (hash, not size): where `snapshot` (a SnapshotInfo or its
    ObjectIndex) says it lies, else any packed copy in the store; then its loose copy. The first intact
    copy is `ok`; otherwise the state of the first place looked at."""
    if not isinstance(sha256, str) or not SHA256_HEX.match(sha256):
        return ObjectState(str(sha256), "", "unreadable", reason="not a sha256 (64 lowercase hex digits)")
    root = Path(storage_root).resolve()
    candidates, first = _candidates(root, sha256, snapshot)
    return _check(root, sha256, candidates, max_bytes, first)


def read_object(storage_root: str | os.PathLike, sha256: str, snapshot: Any = None,
                max_bytes: int = MAX_OBJECT_BYTES) -> bytes:
    """The bytes of a stored object, checked against its sha256 (first intact copy, as
    `verify_object` looks). Raises ObjectError with a one-line reason."""
    if not isinstance(sha256, str) or not SHA256_HEX.match(sha256):
        raise ObjectError("unreadable", f"{sha256!r}: not a sha256 (64 lowercase hex digits)")
    root = Path(storage_root).resolve()
    candidates, first = _candidates(root, sha256, snapshot)
    for loc in candidates:
        parts: list[bytes] = []
        try:
            read_location(root, sha256, loc, max_bytes, parts.append)
        except ObjectError as e:
            first = first or ObjectState(sha256, describe(root, sha256, loc), e.status, reason=e.reason)
            continue
        data = b"".join(parts)
        now = hashlib.sha256(data).hexdigest()
        if now == sha256:
            return data
        first = first or ObjectState(sha256, describe(root, sha256, loc), "changed", now=now,
                                     reason="its bytes no longer hash to its name")
    assert first is not None
    raise ObjectError(first.status, f"stored object {sha256}: {first.path}: {first.reason}", first.now)


@dataclass
class Integrity:
    """What re-hashing the objects of a dataset's snapshots found."""

    dataset: str
    checked: int = 0
    problems: list[ObjectState] = field(default_factory=list)
    files: dict[str, list[str]] = field(default_factory=dict)  # sha256 -> "<snapshot_id>:<relative path>"
    repaired: list[str] = field(default_factory=list)  # sha256 rewritten from the source bytes
    good: dict[str, Loc] = field(default_factory=dict)  # sha256 -> a location found intact

    def note_repairs(self, storage_root: str | os.PathLike, rewritten: set[str]) -> None:
        """Record which changed objects a full re-scan rewrote intact from the source."""
        root = Path(storage_root).resolve()
        self.repaired = sorted(p.sha256 for p in self.problems if p.sha256 in rewritten and _check(
            root, p.sha256, [p.location, (None, 0, -1)] if p.location else [(None, 0, -1)],
            MAX_OBJECT_BYTES).status == "ok")

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
    """Re-hash every object named by any snapshot of `dataset`, at each place a snapshot says it lies
    (each place once)."""
    from lora_pipeline.dataset.snapshot import list_snapshots

    out = Integrity(dataset)
    root = Path(storage_root).resolve()
    seen: dict[tuple, ObjectState] = {}
    bad: dict[str, ObjectState] = {}
    for snap in list_snapshots(storage_root, dataset):
        index = snap.objects()
        for rel, sha in snap.files.items():
            out.files.setdefault(str(sha), []).append(f"{snap.snapshot_id}:{rel}")
        for sha in sorted(set(snap.files.values())):
            key = (sha, index.location(sha), index.error)
            if key not in seen:
                seen[key] = state = verify_object(root, sha, snapshot=index)
                if state.status != "ok":
                    bad.setdefault(sha, state)
                elif state.location is not None:
                    out.good.setdefault(sha, state.location)
    out.checked = len({k[0] for k in seen})
    out.problems = [bad[s] for s in sorted(bad)]
    for sha in bad:
        out.good.pop(sha, None)
    return out


class VerifyingObjectStore(ObjectStore):
    """The object store for `full_verify`: an object counts as present only when its bytes hash to its
    name; one found changed or missing is rewritten (atomically, loose, read-only) from the source's
    bytes, where every snapshot that names it reads it."""

    def __init__(self, root: Path, prefer: Callable[[], ObjectIndex] | None = None,
                 verified: dict[str, Loc] | None = None, bad: set[str] | None = None):
        super().__init__(root, prefer)
        self.good.update(verified or {})  # objects already re-hashed intact in this pass
        self.bad = set(bad or ())
        self.rewritten: set[str] = set()

    def where(self, sha: str, size: int) -> Loc | None:
        if sha in self.good or sha in self.loose_written:
            return super().where(sha, size)
        if sha in self.bad:
            return None
        loc = super().where(sha, size)
        if loc is None:
            return None
        state = _check(self.storage_root.resolve(), sha, [loc] if loc[0] is None else [loc, (None, 0, -1)],
                       MAX_OBJECT_BYTES)
        if state.status != "ok" or state.location is None:
            return None
        loc = state.location if state.location[0] is not None else (None, 0, size)
        self.good[sha] = loc
        return loc

    def put(self, sha: str, data: bytes) -> bool:
        if self.has(sha, len(data)):
            return False
        if sha in self.bad or self.locate(sha) is not None:  # stored, but not intact: restore it loose
            with self._lock:
                if sha in self.loose_written:
                    return False
                self.write_loose(sha, data)
            self.rewritten.add(sha)
            return True
        stored = self.append(sha, data)
        if stored:
            self.rewritten.add(sha)
        return stored
