"""What a dataset walk refuses or excludes, and reading a dataset file without trusting it.

- A refused entry is listed, never followed or read: `refusal(path, reason)` gives the entry, with
  the path as printable UTF-8 (`display_path`); `parse_refusal` reads it back.
- `read_capped` reads a regular file up to a cap, and never blocks on a FIFO or device.
- `pipeline_folder` and `config_roots` name the folders lora-pipeline itself writes (a storage root,
  a Dagster home, the folders a lora_pipeline.yaml names), which are never part of a dataset.
"""

from __future__ import annotations

import errno
import os
import re
import stat

# Why an entry of the folder is refused. A refused entry is listed as "<path>\t<reason>"; a plain path
# (no tab) is a symlink leaving the root, as snapshots written before the other reasons existed list it.
SYMLINK_OUT = "symlink leaves the dataset root"
DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024  # a dataset file larger than this is refused, never read
CONFIG_FILENAME = "lora_pipeline.yaml"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def display_path(rel: str) -> str:
    """A path as printable UTF-8 text: bytes that are not UTF-8 as `\\xNN`, control characters escaped."""
    text = os.fsencode(rel).decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def refusal(rel: str, reason: str) -> str:
    rel = display_path(rel)
    return rel if reason == SYMLINK_OUT else f"{rel}\t{reason}"


def parse_refusal(entry: str) -> tuple[str, str]:
    """(path, reason) of one entry of a refused list."""
    rel, sep, reason = entry.partition("\t")
    return rel, (reason if sep else SYMLINK_OUT)


def is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def special_file(mode: int) -> str:
    """The reason a file that is not a regular file is refused."""
    for test, what in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder")):
        if test(mode):
            return f"special file ({what})"
    return "special file (not a regular file)"


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB" if n < 1 << 30 else f"{n / (1 << 30):.1f} GiB"


def too_large(size: int, cap: int) -> str:
    return f"file too large ({_mib(size)} > {_mib(cap)} cap)"


class Refused(Exception):
    """A dataset file that is not read (special file, too large, unreadable); the message is the reason."""


def read_capped(path: str | os.PathLike, cap: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes, at most `cap`: never blocks on a FIFO or device (opened non-blocking,
    checked with fstat before any read). Raises Refused with the reason otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise Refused(os_reason(e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(special_file(st.st_mode))
        if st.st_size > cap:
            raise Refused(too_large(st.st_size, cap))
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:
                raise Refused(too_large(total, cap))
        return b"".join(chunks)
    except OSError as e:
        raise Refused(os_reason(e)) from None
    finally:
        os.close(fd)


def os_reason(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "symlink loop"
    return f"cannot read ({e.strerror or e.__class__.__name__})"


def dir_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _has_child_with(folder: str, marker: str, limit: int = 64) -> bool:
    try:
        with os.scandir(folder) as it:
            for n, e in enumerate(it):
                if n >= limit:
                    break
                if e.is_dir(follow_symlinks=False) and os.path.isfile(os.path.join(e.path, marker)):
                    return True
    except OSError:
        pass
    return False


def _object_store(folder: str) -> bool:
    """objects/<2 hex>/... (loose objects) and objects/packs/ and nothing else: the content-addressed
    store of a storage root."""
    try:
        with os.scandir(folder) as it:
            names = [e.name for n, e in zip(range(257), it, strict=False)]
    except OSError:
        return False
    return bool(names) and all(re.fullmatch(r"[0-9a-f]{2}", n) or n == "packs" or n.startswith(".") for n in names)


def pipeline_folder(path: str, names: set[str]) -> str | None:
    """Why the folder at `path` (holding `names`) is one lora-pipeline writes, else None."""
    if "dagster.yaml" in names:
        return "a Dagster home"
    if "reviews.jsonl" in names \
            or ("snapshots" in names and _has_child_with(os.path.join(path, "snapshots"), "latest.json")) \
            or ("runs" in names and _has_child_with(os.path.join(path, "runs"), "run.json")) \
            or ("objects" in names and _object_store(os.path.join(path, "objects"))):
        return "a lora-pipeline storage folder"
    return None


def config_roots(config_file: str) -> list[tuple[str, str]]:
    """The storage and training_runs folders a lora_pipeline.yaml names (absolute), with why."""
    import yaml

    try:
        doc = yaml.safe_load(read_capped(config_file, 1 << 20).decode("utf-8"))
    except (Refused, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return []
    if not isinstance(doc, dict):
        return []
    base = os.path.dirname(config_file)
    out = []
    for key, default in (("storage", ".lora_pipeline/storage"), ("training_runs", "runs")):
        value = doc.get(key, default)
        if isinstance(value, str) and value:
            out.append((os.path.join(base, os.path.expanduser(value)), f"the {key} folder of {config_file}"))
    return out


# Folders never part of any dataset in this process: the storage, training_runs and Dagster home of
# every workspace whose definitions were built here (`protect_workspace`). Kept by path, looked up
# again at each walk, so a folder deleted since is not confused with a new one.
_PROTECTED: dict[str, str] = {}


def protect(path: str | os.PathLike, why: str) -> None:
    _PROTECTED[os.path.abspath(os.fspath(path))] = why


def protect_workspace(config) -> None:
    """Keep a config's storage, training_runs and Dagster home out of every dataset walk."""
    protect(config.storage, "the configured storage folder")
    protect(config.training_runs, "the configured training_runs folder")
    protect(os.environ.get("DAGSTER_HOME") or config.dagster_home, "the Dagster home")


def protected() -> dict[str, str]:
    return dict(_PROTECTED)
