"""Caption length in text-encoder tokens.

With a base model folder that has a `tokenizer/` (diffusers layout), captions are counted with its
real CLIP tokenizer (transformers, imported here only when needed), special tokens included, against
its `model_max_length`. Without one, the count is an *estimate*, labelled as such: the CLIP
pre-tokenisation (words, single digits, punctuation runs) with one token per word up to 10
characters and one more per further 5, plus start and end tokens, against CLIP's 77.

Real counts are kept in a memo when the caller names a folder for it (`<storage>/render-cache/
token-counts/<key>.json`, key: sha256 of the tokenizer's files and the transformers version; caption
sha256 -> count, and the limit): a dataset re-checked with the same tokenizer (a forced re-run, the
reports' dataset section) counts only captions it has not seen, and with none new does not import
transformers (~0.7 s). The memo is untrusted input: one that does not parse is started afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from importlib import metadata
from pathlib import Path

import polars as pl

from lora_pipeline.fsutil import atomic_write_bytes

CLIP_MAX_LENGTH = 77
_PRE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.IGNORECASE)


def estimate_tokens(text: str) -> int:
    n = 2  # <|startoftext|> and <|endoftext|>
    for piece in _PRE.findall(text.lower()):
        n += 1 if len(piece) <= 10 or not piece[0].isalpha() else 1 + math.ceil((len(piece) - 10) / 5)
    return n


def tokenizer_folder(base: str | Path | None) -> Path | None:
    """The `tokenizer/` folder of a diffusers base model folder, or None."""
    if base is None:
        return None
    p = Path(base)
    for cand in (p / "tokenizer", p):
        if (cand / "vocab.json").is_file() and (cand / "merges.txt").is_file():
            return cand
    return None


# Python's `re` and Rust's regex (polars) find the same matches of the patterns used on dataset
# captions in text made only of these characters: printable ASCII, and the ASCII whitespace that both
# count as `\s` (Python also counts \x1c-\x1f, Rust does not; case folding differs beyond ASCII).
SAFE_TEXT = r"^[\t\n\x0b\x0c\r\x20-\x7e]*$"


def safe_text(captions: pl.Series) -> pl.Series:
    """Whether each caption is text on which the Rust regex rules give Python's answer."""
    return captions.str.contains(SAFE_TEXT)


ESTIMATE_METHOD = "estimate (no tokenizer available: about one token per word or punctuation run)"
# _PRE in Rust regex syntax: the same pieces on text the dataset checks call safe (SAFE_TEXT)
_PRE_FAST = r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+"


def estimate_column(captions: pl.Series) -> tuple[pl.Series, int, str]:
    """`estimate_tokens` of every caption of a column (polars for safe text, Python for the rest),
    the limit, and the method label of `count_tokens`."""
    e = pl.element()
    long_word = (e.str.len_chars() > 10) & e.str.contains("^[a-z]")  # lower-cased: a letter first
    counts = (captions.str.to_lowercase().str.extract_all(_PRE_FAST)
              .list.eval(pl.when(long_word).then((e.str.len_chars() - 6) // 5 + 1).otherwise(1))
              .list.sum().fill_null(0).cast(pl.Int64) + 2)
    unsafe = (~safe_text(captions)).arg_true()
    if unsafe.len():
        counts = counts.scatter(unsafe, [estimate_tokens(c) for c in captions.gather(unsafe).to_list()])
    return counts, CLIP_MAX_LENGTH, ESTIMATE_METHOD


def count_tokens(captions: list[str], base: str | Path | None, memo_dir: Path | None = None
                 ) -> tuple[dict[str, int], int, str]:
    """caption -> token count, the limit, and how it was counted (a label for the evidence); with
    `memo_dir`, real counts come from and go to the memo (module docstring)."""
    unique = sorted(set(captions))
    folder = tokenizer_folder(base)
    if folder is None:
        return {c: estimate_tokens(c) for c in unique}, CLIP_MAX_LENGTH, ESTIMATE_METHOD
    key = tokenizer_key(folder) if memo_dir is not None else None
    memo_path = memo_dir / f"{key}.json" if memo_dir is not None and key is not None else None
    limit, known = _read_memo(memo_path)
    by_sha = {c: hashlib.sha256(c.encode("utf-8", "surrogatepass")).hexdigest() for c in unique}
    missing = [c for c in unique if by_sha[c] not in known]
    if missing or limit is None:
        from transformers import CLIPTokenizer

        tok = CLIPTokenizer.from_pretrained(str(folder))
        limit = int(tok.model_max_length) if 0 < int(tok.model_max_length) < 100_000 else CLIP_MAX_LENGTH
        ids = tok(missing, add_special_tokens=True, truncation=False)["input_ids"] if missing else []
        known.update({by_sha[c]: len(i) for c, i in zip(missing, ids, strict=True)})
        if memo_path is not None:
            with contextlib.suppress(OSError):  # a memo that cannot be written costs the next run a count
                atomic_write_bytes(memo_path, json.dumps({"limit": limit, "counts": known}, sort_keys=True).encode(),
                                   sync=False)
    return {c: known[by_sha[c]] for c in unique}, limit, f"CLIP tokenizer at {folder}"


def token_memo_dir(storage: str | Path) -> Path:
    """Where a storage root keeps its token-count memos (module docstring)."""
    from lora_pipeline.render.cache import CACHE_DIR

    return Path(storage) / CACHE_DIR / "token-counts"


# What a CLIP tokenizer folder's loading reads (transformers' CLIPTokenizer and its fast variant).
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.json")


def tokenizer_key(folder: Path) -> str | None:
    """sha256 over the tokenizer's files (name and bytes) and the transformers version; None when
    they cannot be read (no memo then)."""
    h = hashlib.sha256()
    with contextlib.suppress(metadata.PackageNotFoundError):
        h.update(metadata.version("transformers").encode())
    try:
        for name in TOKENIZER_FILES:
            f = folder / name
            if f.is_file():  # regular files only (a device or FIFO is never read)
                data = f.read_bytes()
                h.update(f"\0{name}\0{len(data)}\0".encode())
                h.update(data)
    except OSError:
        return None
    return h.hexdigest()


def _read_memo(path: Path | None) -> tuple[int | None, dict[str, int]]:
    """(limit, caption sha256 -> count) from the memo; (None, {}) when absent or malformed."""
    if path is None:
        return None, {}
    try:
        doc = json.loads(path.read_text("utf-8"))
        limit, counts = doc["limit"], doc["counts"]
        if (type(limit) is int and limit > 0 and isinstance(counts, dict)
                and all(type(v) is int and v >= 0 for v in counts.values())):
            return limit, counts
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return None, {}
