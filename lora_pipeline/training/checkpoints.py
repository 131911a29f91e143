"""Checkpoint files: read each once (hash and parse in one pass), analyse, cache by (size, mtime).

`analyse_checkpoint` maps the file's bytes once; the sha256 runs in a second thread over the same
buffer while numpy walks the tensors (both release the GIL), and that thread takes its share of the
per-module work once the hash is done (docs/benchmarks.md, "Training ingestion").

Ingestion asks for the light analysis (hash, header, NaN/Inf and all-zero scan, no delta norms) of
all the files of a run at once (`FileIndex.light_analyses`): one thread hashes them in turn while
the caller analyses them, going on to the next file instead of waiting for a hash (the light
analysis costs about half the hash). The `lora_checkpoint` step asks for the full analysis
(`analysis(..., norms=True)`), which a cached light entry turns into a pass without the hash
(training/norms.py). Analyses are cached in `storage/runs/<run_id>/files.json`, keyed by relative
path with size and mtime, so repeated ingestion and sensor ticks do not re-read unchanged files
(`checks.full_verify` forces a re-read).

`header_complete` is the cheap "still being written?" test: the header parses and the file is
exactly as long as the header's last tensor says.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from lora_pipeline.fsutil import atomic_write_bytes
from lora_pipeline.lora.inspect import analyse
from lora_pipeline.lora.safetensors_file import (
    LoraFileError,
    parse_safetensors,
    read_header,
    refuse_pickle,
)

INDEX_VERSION = 5  # 2: architecture families sd3/flux1/flux2 and the file shape in the analysis;
# 3: the stricter safetensors validation and `malformed` (analyses cached before are re-checked);
# 4: fp16/bf16 norms from float32 Gram products (last digits differ; same-weights aliases compare them);
# 5: ingestion caches the light analysis (`norms: false`, no delta norms: training/norms.py has them)


class _Shared:
    """The analysis' per-module jobs, drained by the analysing thread and by the hashing thread once
    its hash is done (numpy releases the GIL in the decode and the products); `__call__` is
    `analyse`'s `run`: it returns when every job is done and re-raises the first job's error."""

    def __init__(self) -> None:
        self.jobs: deque[Callable[[], None]] = deque()
        self.left = 0
        self.done = threading.Condition()
        self.error: Exception | None = None

    def help(self) -> None:
        while True:
            try:
                job = self.jobs.popleft()
            except IndexError:
                return
            try:
                job()
            except Exception as e:  # re-raised in the analysing thread
                self.error = self.error or e
            with self.done:
                self.left -= 1
                self.done.notify_all()

    def __call__(self, jobs: list[Callable[[], None]]) -> None:
        with self.done:
            self.left += len(jobs)
        self.jobs.extend(jobs)
        self.help()
        with self.done:
            self.done.wait_for(lambda: self.left == 0)
        if self.error is not None:
            raise self.error


def _hash(data: bytes, out: list, shared: _Shared) -> None:
    out.append(hashlib.sha256(data).hexdigest())
    shared.help()


def _open(path: Path) -> tuple[os.stat_result, Any]:
    """(stat, bytes) of a checkpoint file: large files are mapped, not copied (the hash and numpy read
    the page cache directly). Pickles are refused; LoraFileError (one line) when unreadable."""
    refuse_pickle(path)
    try:
        st = path.stat()
        with open(path, "rb") as f:
            return st, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if st.st_size >= 1 << 20 else f.read()
    except (OSError, ValueError) as e:
        raise LoraFileError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def _as_dict(report, st: os.stat_result) -> dict[str, Any]:
    d = report.to_dict()
    d["mtime_ns"] = st.st_mtime_ns
    return d


def analyse_checkpoint(path: Path, *, norms: bool = False, sha256: str | None = None) -> dict[str, Any]:
    """Hash + parse + analyse in one read. Raises LoraFileError (one line) for a bad file.
    `norms`: the full analysis with delta norms (else the light one, lora/inspect.py); `sha256`: the
    file's hash as already known for its size+mtime (FileIndex), so it is not computed again."""
    st, data = _open(path)
    if sha256 is not None:
        report = analyse(parse_safetensors(path, data, sha256=sha256), norms=norms)
    else:
        digest: list[str] = []
        shared = _Shared()
        worker = threading.Thread(target=_hash, args=(data, digest, shared))
        worker.start()
        try:
            sf = parse_safetensors(path, data, sha256="pending")
            report = analyse(sf, shared, norms=norms)
        finally:
            worker.join()
        report.sha256 = digest[0]
    return _as_dict(report, st)


class _Hasher:
    """One thread hashing files in the order they are handed to it while the caller analyses them:
    the light analysis of a file takes about half its hash, so the caller goes on to the next files
    instead of waiting (two busy threads across the files of a run, as within one file before).
    At most `ahead` files wait for their hash (each holds its mapping)."""

    def __init__(self, ahead: int = 3) -> None:
        self.todo: queue.Queue = queue.Queue(maxsize=ahead)
        self.thread = threading.Thread(target=self._run, name="checkpoint-sha256", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.todo.get()) is not None:
            data, done = item
            try:
                done.set_result(hashlib.sha256(data).hexdigest())
            except Exception as e:  # raised where the result is read
                done.set_exception(e)

    def submit(self, data: Any) -> Future:
        done: Future = Future()
        self.todo.put((data, done))
        return done

    def close(self) -> None:
        self.todo.put(None)
        self.thread.join()


def analyse_light_checkpoints(paths: list[Path]) -> list[dict[str, Any] | Exception]:
    """`analyse_checkpoint(path)` of each path (the light analysis), or the exception it raised, in
    order; the hashes run in one thread beside the analyses (`_Hasher`)."""
    out: list[Any] = [None] * len(paths)
    waiting = []
    hasher = _Hasher()
    try:
        for i, path in enumerate(paths):
            try:
                st, data = _open(path)
                digest = hasher.submit(data)
                report = analyse(parse_safetensors(path, data, sha256="pending"), norms=False)
            except Exception as e:  # the caller sorts them out (training/ingest.py `_read_candidates`)
                out[i] = e
                continue
            waiting.append((i, st, report, digest))
    finally:
        hasher.close()
    for i, st, report, digest in waiting:
        try:
            report.sha256 = digest.result()
        except Exception as e:
            out[i] = e
            continue
        out[i] = _as_dict(report, st)
    return out


def header_complete(path: Path) -> bool:
    """True when the header parses and the file ends exactly where its last tensor ends (reads the
    header only: this runs on every sensor tick, over files of any size)."""
    try:
        h = read_header(path)
    except LoraFileError:
        return False
    return h.data_end == h.size


class FileIndex:
    """The per-run cache of checkpoint analyses and size observations (storage/runs/<id>/files.json)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        self.dirty = False
        if path is not None and path.is_file():
            try:
                doc = json.loads(path.read_text("utf-8"))
                if doc.get("version") == INDEX_VERSION and isinstance(doc.get("files"), dict):
                    self.entries = doc["files"]
            except (OSError, ValueError):
                self.entries = {}  # a cache: a broken one is rebuilt

    def cached(self, rel: str, st: os.stat_result) -> dict[str, Any] | None:
        e = self.entries.get(rel)
        if e and e.get("size") == st.st_size and e.get("mtime_ns") == st.st_mtime_ns:
            return e
        return None

    def light_analyses(self, files: list[tuple[str, Path]], full_verify: bool = False
                       ) -> dict[str, dict[str, Any] | Exception]:
        """`analysis(rel, path, full_verify)` of each (rel, path), or the exception it raised, with
        the files not cached analysed together (`analyse_light_checkpoints`)."""
        out: dict[str, Any] = {}
        todo = []
        for rel, path in files:
            try:
                e = self.cached(rel, path.stat())
            except OSError as err:
                out[rel] = err
                continue
            if e and e.get("analysis") and not full_verify:
                out[rel] = e["analysis"]
            else:
                todo.append((rel, path))
        for (rel, _path), a in zip(todo, analyse_light_checkpoints([p for _r, p in todo]), strict=True):
            out[rel] = a
            if isinstance(a, dict):
                self.entries[rel] = {"size": a["size"], "mtime_ns": a["mtime_ns"], "sha256": a["sha256"], "analysis": a}
                self.dirty = True
        return out

    def analysis(self, rel: str, path: Path, full_verify: bool = False, norms: bool = False) -> dict[str, Any]:
        """The cached analysis when size+mtime match, else a fresh one (stored). LoraFileError passes.
        `norms`: a full analysis with delta norms; a cached light one is redone without the hash."""
        st = path.stat()
        e = self.cached(rel, st)
        if e and e.get("analysis") and not full_verify:
            if not norms or e["analysis"].get("norms", True):
                return e["analysis"]
            a = analyse_checkpoint(path, norms=True, sha256=e["sha256"])
            if (a["size"], a["mtime_ns"]) != (st.st_size, st.st_mtime_ns):  # changed meanwhile: hash it
                a = analyse_checkpoint(path, norms=True)
        else:
            a = analyse_checkpoint(path, norms=norms)
        self.entries[rel] = {"size": a["size"], "mtime_ns": a["mtime_ns"], "sha256": a["sha256"], "analysis": a}
        self.dirty = True
        return a

    def observe(self, rel: str, st: os.stat_result) -> bool:
        """Record the file's size+mtime; True when they equal the previous observation (stable)."""
        e = self.entries.get(rel)
        stable = bool(e and e.get("size") == st.st_size and e.get("mtime_ns") == st.st_mtime_ns)
        if not stable:
            self.entries[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
            self.dirty = True
        return stable

    def save(self) -> None:
        if self.path is not None and self.dirty:
            doc = {"version": INDEX_VERSION, "files": self.entries}
            atomic_write_bytes(self.path, json.dumps(doc, separators=(",", ":"), default=str).encode())
            self.dirty = False


def compact(analysis: dict[str, Any]) -> dict[str, Any]:
    """The analysis without the bulky parts, for run-level use."""
    return {k: analysis.get(k) for k in ("sha256", "size", "key_format", "tensors", "ranks", "components",
                                         "total_delta_norm", "all_zero", "nonfinite_tensors", "architecture",
                                         "declared", "malformed")}
