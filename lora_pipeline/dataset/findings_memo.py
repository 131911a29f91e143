"""The dataset checks' findings on an immutable snapshot, computed once per snapshot and settings.

Every checkpoint report and the run report show the dataset section of the snapshot the run trained
on (report/diagnosis.py `dataset_findings`): the same checks on the same immutable snapshot, once per
checkpoint (0.3 s of checks at 20,000 pairs, plus reading the manifest: 50 checkpoints, 15 s of the
same answer). They are kept in `<storage>/render-cache/dataset-findings/<key>.json`; key: sha256 of
the dataset name and snapshot id (content-addressed), the snapshot's orphan captions and refused
entries, the check settings, the tokenizer's identity (dataset/tokens.py) and the source of the check
modules (a changed check is a new key). Written whole (temporary name, then rename). A record is
untrusted input: one that does not parse is recomputed and written again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_pipeline.findings import Finding
from lora_pipeline.fsutil import atomic_write_bytes

# the modules whose answers are kept (under lora_pipeline/)
_CODE = ("dataset/checks.py", "dataset/near_duplicates.py", "dataset/tokens.py", "dataset/guard.py",
         "dataset/layout.py", "findings.py")


@functools.cache  # the source of a running process's modules, read once (an OSError is not cached)
def _code_digest() -> str:
    h = hashlib.sha256()
    for name in _CODE:
        h.update((Path(__file__).parents[1] / name).read_bytes())
    return h.hexdigest()


def record_key(name: str, snap: Any, settings: dict[str, Any], tokenizer: Path | None) -> str | None:
    """The record's key; None (the checks run, nothing kept) when the tokenizer or the check
    modules' source cannot be read."""
    from lora_pipeline.dataset.tokens import tokenizer_key

    try:
        code = _code_digest()
    except OSError:
        return None
    tok = tokenizer_key(tokenizer) if tokenizer is not None else None
    if tokenizer is not None and tok is None:
        return None
    fields = {"dataset": name, "snapshot_id": snap.snapshot_id, "orphan_captions": sorted(snap.orphan_captions),
              "refused": sorted(snap.refused_symlinks), "settings": settings, "tokenizer": tok, "code": code}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def memo_dir(storage: str | Path) -> Path:
    from lora_pipeline.render.cache import CACHE_DIR

    return Path(storage) / CACHE_DIR / "dataset-findings"


def snapshot_findings(storage: str | Path, key: str | None, compute: Callable[[], list[Finding]]) -> list[Finding]:
    """The findings recorded under `key`, else `compute()`'s, recorded (best effort: a record that
    cannot be written costs the next report a computation)."""
    if key is None:
        return compute()
    path = memo_dir(storage) / key[:2] / f"{key}.json"
    try:
        doc = json.loads(path.read_text("utf-8"))
        if doc.get("key") == key and isinstance(doc.get("findings"), list):
            return [Finding.from_dict(d) for d in doc["findings"]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass
    found = compute()
    with contextlib.suppress(OSError):
        atomic_write_bytes(path, (json.dumps({"key": key, "findings": [f.to_dict() for f in found]}, default=str)
                           + "\n").encode(), sync=False)
    return found
