"""The stat cache in `snapshots/<dataset>/latest.json`: size, mtime and sha256 of every dataset file
the last scan saw, so that a re-scan hashes only the files whose size or mtime changed
(lora_pipeline.dataset.scan.StatCache).

It is written as four parallel lists under `stat_cache`: `paths` (in the scan's sorted order),
`sizes`, `mtimes` (ns) and `sha256`, one JSON array each, rather than one `{path: [size, mtime,
sha256]}` entry per file: a third cheaper to read on every re-snapshot (40,000 entries on a large
dataset), and checked whole at once. latest.json files written before (`files`, one entry per file)
are still read. A cache that is malformed in any way raises ValueError, TypeError or IndexError:
the caller then ignores it and every file is hashed again.
"""

from __future__ import annotations

from itertools import repeat

from lora_pipeline.dataset.scan import FileStat

STAT_CACHE_KEY = "stat_cache"
_COLUMNS = ("paths", "sizes", "mtimes", "sha256")
_new = tuple.__new__  # FileStat(size, mtime_ns, sha256) without the Python-level __new__


def stat_cache_doc(files: dict[str, FileStat]) -> dict[str, list]:
    """The `stat_cache` value of latest.json for a scan's files (relative path -> FileStat)."""
    stats = files.values()
    return {"paths": list(files), "sizes": [st[0] for st in stats], "mtimes": [st[1] for st in stats],
            "sha256": [st[2] for st in stats]}


def read_stat_cache(doc: dict) -> dict[str, FileStat]:
    """The stat cache of a latest.json document (empty when it has none). ValueError (or TypeError,
    IndexError for the old format) when it is malformed: columns of other types or lengths, a size
    or mtime that is not a non-negative int, a sha256 that is not 64 lower-case hex digits."""
    cols = doc.get(STAT_CACHE_KEY)
    if cols is None:
        files = doc.get("files", {})
        if not isinstance(files, dict):
            raise ValueError("stat cache: 'files' is not an object")
        return _file_stats(files)
    if not isinstance(cols, dict) or set(cols) != set(_COLUMNS):
        raise ValueError("stat cache: not the four columns")
    paths, sizes, mtimes, shas = (cols[k] for k in _COLUMNS)
    if not all(type(c) is list for c in (paths, sizes, mtimes, shas)) \
            or not len(paths) == len(sizes) == len(mtimes) == len(shas):
        raise ValueError("stat cache: columns are not lists of one length")
    # checked a column at a time, in C (`set(map(type, ...))`; JSON true/false, a bool, is refused)
    if not (set(map(type, paths)) <= {str} and set(map(type, sizes)) <= {int} and set(map(type, mtimes)) <= {int}
            and set(map(type, shas)) <= {str}):
        raise ValueError("stat cache: a value of the wrong type")
    if paths and (min(sizes) < 0 or min(mtimes) < 0):
        raise ValueError("stat cache: a negative size or mtime")
    joined = "".join(shas)  # 64 lower-case hex digits each: as long as, and equal to, the hex of their bytes
    if set(map(len, shas)) - {64} or bytes.fromhex(joined).hex() != joined:
        raise ValueError("stat cache: a sha256 that is not 64 lower-case hex digits")
    return dict(zip(paths, map(_new, repeat(FileStat), zip(sizes, mtimes, shas, strict=True)), strict=True))


def _file_stats(entries: dict) -> dict[str, FileStat]:
    """The format before `stat_cache`: `FileStat.from_list` of each entry (ValueError, TypeError or
    IndexError when one is malformed), without a conversion per value when they have the types
    written."""
    try:
        stats = list(map(FileStat._make, entries.values()))
    except TypeError:  # not [size, mtime_ns, sha256] (another length, or not a list)
        stats = None
    if stats is None or not all(type(a) is int and type(b) is int and type(c) is str for a, b, c in stats):
        return {k: FileStat.from_list(v) for k, v in entries.items()}
    return dict(zip(entries, stats, strict=True))
