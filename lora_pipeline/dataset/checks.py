"""The dataset checks (CONTRACT section 5, DATASET codes): each reads a snapshot manifest (or the
same frame built in memory by `check-dataset`) and returns `Finding`s whose evidence carries a
`count` and up to 20 `examples` (relative paths).

| check | code | rule |
|---|---|---|
| pairing | IMAGE_WITHOUT_CAPTION, CAPTION_WITHOUT_IMAGE | every image has a caption, every caption an image |
| empty_captions | EMPTY_CAPTION | a caption that is empty or whitespace only |
| readable_images | UNREADABLE_IMAGE | truncated, not an image, 0 bytes, decompression-bomb size; an image file refused unread: symlink out of the root or looping, FIFO/socket/device, name not UTF-8, over the size cap |
| literal_captions | VAGUE_CAPTIONS | a caption carries one of `VAGUE_TERMS` |
| caption_variety | UNIFORM_CAPTIONS | distinct captions / captions < `min_distinct_caption_ratio` (default 0.5) |
| trigger | TRIGGER_INCONSISTENT | the trigger is absent from a caption, or spelled differently (case, `_`/`-`/space) |
| duplicates | DUPLICATE_IMAGES | same sha256, or pHash Hamming distance <= `near_duplicate_distance` (default 4) |
| resolution | LOW_RESOLUTION | shorter side < `resolution` (default 512) |
| enough_images | TOO_FEW_IMAGES | readable images < `min_images` (default 10) |
| caption_length | CAPTION_TOO_LONG | tokens (with start/end) > the tokenizer's limit (77 for CLIP) |

The caption rules are Python regular expressions; they run over the whole manifest column in polars
where that gives the same answer (see `lora_pipeline.dataset.tokens.SAFE_TEXT`), one caption at a
time in Python elsewhere.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from lora_pipeline.dataset.guard import parse_refusal
from lora_pipeline.dataset.layout import IMAGE_EXTENSIONS
from lora_pipeline.dataset.near_duplicates import groups, near_duplicate_pairs
from lora_pipeline.dataset.tokens import SAFE_TEXT, safe_text
from lora_pipeline.findings import Finding

MAX_EXAMPLES = 20

# Quality words that say nothing literal about the image (matched as whole words, any case).
VAGUE_TERMS: tuple[str, ...] = (
    "masterpiece", "best quality", "high quality", "highest quality", "top quality", "ultra detailed",
    "highly detailed", "extremely detailed", "absurdres", "beautiful", "stunning", "gorgeous", "amazing",
    "award winning", "award-winning", "trending on artstation", "8k", "4k", "uhd", "hdr",
)
_VAGUE = re.compile(r"(?<![A-Za-z0-9])(" + "|".join(re.escape(t) for t in VAGUE_TERMS) + r")(?![A-Za-z0-9])",
                    re.IGNORECASE)

# The caption checks run in polars (Rust regex) over the whole column where that is exact: on "safe"
# text (lora_pipeline.dataset.tokens.safe_text); a caption with other characters is checked in Python,
# as is every caption the fast test flags, so the findings are those of the Python rules.
assert all(re.fullmatch(r"[A-Za-z0-9 -]+", t) for t in VAGUE_TERMS)  # needs no escaping in either syntax
_VAGUE_FAST = r"(?i)(?:^|[^A-Za-z0-9])(?:" + "|".join(VAGUE_TERMS) + r")(?:[^A-Za-z0-9]|$)"


@dataclass
class CheckInput:
    frame: pl.DataFrame  # the manifest (lora_pipeline.dataset.schema)
    subject: str  # the dataset's name or folder, for the findings' subject
    orphan_captions: list[str] = field(default_factory=list)
    refused_symlinks: list[str] = field(default_factory=list)  # every refused entry (guard.refusal)
    trigger: str | None = None
    resolution: int = 512
    min_images: int = 10
    min_distinct_caption_ratio: float = 0.5
    near_duplicate_distance: int = 4
    tokenizer_base: Path | None = None  # a base model folder with tokenizer/, else an estimate
    token_memo: Path | None = None  # a folder for the real token counts (dataset/tokens.py)
    excluded: list[str] = field(default_factory=list)  # "<folder>\t<why>": lora-pipeline's own folders left out


def refused_images(inp: CheckInput) -> dict[str, str]:
    """Image files refused unread (path -> reason)."""
    out = {}
    for entry in inp.refused_symlinks:
        rel, reason = parse_refusal(entry)
        if Path(rel).suffix.lower() in IMAGE_EXTENSIONS:
            out[rel] = reason
    return out


def _ev(paths: list[str], **extra) -> dict:
    return {"count": len(paths), "examples": sorted(paths)[:MAX_EXAMPLES], **extra}


def _captioned(inp: CheckInput) -> pl.DataFrame:
    return inp.frame.filter(pl.col("caption").is_not_null() & (pl.col("caption").str.strip_chars() != ""))


def _readable(inp: CheckInput) -> pl.DataFrame:
    return inp.frame.filter(pl.col("image_error").is_null())


def check_pairing(inp: CheckInput) -> list[Finding]:
    out = []
    missing = inp.frame.filter(pl.col("caption").is_null())["path"].to_list()
    if missing:
        out.append(Finding("DATASET.IMAGE_WITHOUT_CAPTION", inp.subject,
                           f"{len(missing)} image(s) have no caption file or metadata row.", _ev(missing)))
    if inp.orphan_captions:
        out.append(Finding("DATASET.CAPTION_WITHOUT_IMAGE", inp.subject,
                           f"{len(inp.orphan_captions)} caption(s) have no image.", _ev(inp.orphan_captions)))
    return out


def check_empty_captions(inp: CheckInput) -> list[Finding]:
    empty = inp.frame.filter(pl.col("caption").is_not_null() & (pl.col("caption").str.strip_chars() == ""))
    paths = empty["path"].to_list()
    return [Finding("DATASET.EMPTY_CAPTION", inp.subject, f"{len(paths)} caption(s) are empty.",
                    _ev(paths))] if paths else []


def check_readable_images(inp: CheckInput) -> list[Finding]:
    bad = inp.frame.filter(pl.col("image_error").is_not_null()).select("path", "image_error").rows()
    reasons = {p: r for p, r in bad} | refused_images(inp)
    if not reasons:
        return []
    paths = sorted(reasons)
    by_reason: dict[str, int] = defaultdict(int)
    for r in reasons.values():
        by_reason[r.split(" (")[0]] += 1
    verb = "cannot be read or decoded" if set(reasons) - {p for p, _ in bad} else "cannot be decoded"
    return [Finding("DATASET.UNREADABLE_IMAGE", inp.subject,
                    f"{len(paths)} image(s) {verb} ({', '.join(sorted(by_reason))}).",
                    _ev(paths, reasons={p: reasons[p] for p in paths[:MAX_EXAMPLES]},
                        by_reason=dict(by_reason)))]


def check_literal_captions(inp: CheckInput) -> list[Finding]:
    hits: dict[str, list[str]] = {}
    terms: dict[str, int] = defaultdict(int)
    caps = _captioned(inp).select("path", "caption")
    # only captions that may carry a term: the fast test is exact on safe text, the rest is read in Python
    maybe = caps.filter(~pl.col("caption").str.contains(SAFE_TEXT) | pl.col("caption").str.contains(_VAGUE_FAST))
    for path, cap in maybe.iter_rows():
        found = sorted({m.lower() for m in _VAGUE.findall(cap)})
        if found:
            hits[path] = found
            for t in found:
                terms[t] += 1
    if not hits:
        return []
    paths = sorted(hits)
    return [Finding("DATASET.VAGUE_CAPTIONS", inp.subject,
                    f"{len(paths)} caption(s) carry quality words ({', '.join(sorted(terms))}).",
                    _ev(paths, terms=dict(terms)))]


def _norm(caption: str) -> str:
    return re.sub(r"\s+", " ", caption.lower()).strip(" .,;")


def _norms(captions: pl.Series) -> pl.Series:
    """`_norm` of each caption: in polars for safe text, in Python for the rest."""
    fast = captions.str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars(" .,;")
    unsafe = (~safe_text(captions)).arg_true()
    if unsafe.len():
        fast = fast.scatter(unsafe, [_norm(c) for c in captions.gather(unsafe).to_list()])
    return fast


def check_caption_variety(inp: CheckInput) -> list[Finding]:
    caps = _captioned(inp).select("path", "caption")
    if caps.height < 2:
        return []
    norms = _norms(caps["caption"])
    distinct = norms.n_unique()
    ratio = distinct / caps.height
    if ratio >= inp.min_distinct_caption_ratio:
        return []
    repeated = sorted(caps["path"].filter(norms.is_duplicated()).to_list())
    return [Finding("DATASET.UNIFORM_CAPTIONS", inp.subject,
                    f"Only {distinct} distinct caption(s) for {caps.height} images "
                    f"(ratio {ratio:.2f} < {inp.min_distinct_caption_ratio}).",
                    _ev(repeated, distinct=distinct, captions=caps.height, ratio=round(ratio, 3),
                        threshold=inp.min_distinct_caption_ratio))]


def trigger_pattern(trigger: str) -> re.Pattern[str]:
    """The trigger in any case, with `_`, `-`, spaces (or nothing) between its parts."""
    parts = [p for p in re.split(r"[\s_\-]+", trigger.strip()) if p]
    body = r"[\s_\-]*".join(re.escape(p) for p in parts) if parts else re.escape(trigger)
    return re.compile(r"(?<![A-Za-z0-9])" + body + r"(?![A-Za-z0-9])", re.IGNORECASE)


def check_trigger(inp: CheckInput) -> list[Finding]:
    if not inp.trigger or not inp.trigger.strip():
        return []
    trig = inp.trigger.strip()
    pat = trigger_pattern(trig)
    frame = _captioned(inp).select("path", "caption")
    absent, variants = _trigger_matches(pat, trig, frame)
    if not absent and not variants:
        return []
    varied = sorted({p for ps in variants.values() for p in ps})
    paths = sorted(set(absent) | set(varied))
    parts = []
    if absent:
        parts.append(f"missing from {len(absent)} of {frame.height} captions")
    if variants:
        parts.append(f"spelled {', '.join(repr(v) for v in sorted(variants))} in {len(varied)}")
    return [Finding("DATASET.TRIGGER_INCONSISTENT", inp.subject,
                    f"The trigger {trig!r} is {' and '.join(parts)}.",
                    _ev(paths, trigger=trig, absent_count=len(absent), absent=sorted(absent)[:MAX_EXAMPLES],
                        variants={v: sorted(ps)[:MAX_EXAMPLES] for v, ps in sorted(variants.items())},
                        variant_count=len(varied)))]


def _trigger_matches(pat: re.Pattern[str], trig: str,
                     frame: pl.DataFrame) -> tuple[list[str], dict[str, list[str]]]:
    """The captions (path, caption) without a match of `pat`, and each spelling other than `trig`
    with the captions it is in. The captions are searched as one text, joined by NUL (no match
    crosses a NUL, and the trigger's boundaries see it as the start or end of a caption), each match
    traced back to its caption; with a NUL in a caption or the trigger, one caption at a time."""
    paths, texts = frame["path"].to_list(), frame["caption"].to_list()
    absent: list[str] = []
    variants: dict[str, list[str]] = defaultdict(list)
    if "\0" in trig or frame["caption"].str.contains("\x00", literal=True).any():
        for path, cap in zip(paths, texts, strict=True):
            found = pat.findall(cap)
            if not found:
                absent.append(path)
            for spelling in {f for f in found if f != trig}:
                variants[spelling].append(path)
        return absent, variants
    matches = [(m.start(), m.group()) for m in pat.finditer("\0".join(texts))]
    ends = np.cumsum(frame["caption"].str.len_chars().to_numpy().astype(np.int64) + 1)
    rows = np.searchsorted(ends, np.array([m[0] for m in matches], dtype=np.int64), side="right")
    hit = np.zeros(len(texts), dtype=bool)
    hit[rows] = True
    absent = [paths[i] for i in np.flatnonzero(~hit).tolist()]
    seen: dict[str, dict[int, None]] = defaultdict(dict)  # spelling -> rows, once each, in order
    for row, (_, spelling) in zip(rows.tolist(), matches, strict=True):
        if spelling != trig:
            seen[spelling][row] = None
    for spelling, in_rows in seen.items():
        variants[spelling] = [paths[i] for i in in_rows]
    return absent, variants


def check_duplicates(inp: CheckInput) -> list[Finding]:
    df = inp.frame.filter(pl.col("size") > 0)
    by_sha: dict[str, list[str]] = defaultdict(list)
    for path, sha in df.filter(pl.col("sha256").is_duplicated()).select("path", "sha256").iter_rows():
        by_sha[sha].append(path)
    exact = [sorted(g) for g in by_sha.values() if len(g) > 1]
    reps = df.filter(pl.col("phash").is_not_null()).unique("sha256", keep="first", maintain_order=True)
    rep_paths, rep_hashes = reps["path"].to_list(), reps["phash"].to_list()
    near_pairs = [(rep_paths[i], rep_paths[j])
                  for i, j in near_duplicate_pairs(rep_hashes, inp.near_duplicate_distance)]
    near = groups(near_pairs)
    if not exact and not near:
        return []
    paths = sorted({p for g in exact + near for p in g})
    return [Finding("DATASET.DUPLICATE_IMAGES", inp.subject,
                    f"{len(exact)} group(s) of identical images and {len(near)} group(s) of near "
                    f"duplicates (pHash distance <= {inp.near_duplicate_distance}).",
                    _ev(paths, exact_groups=sorted(exact)[:MAX_EXAMPLES], near_groups=near[:MAX_EXAMPLES],
                        exact_group_count=len(exact), near_group_count=len(near),
                        near_duplicate_distance=inp.near_duplicate_distance))]


def check_resolution(inp: CheckInput) -> list[Finding]:
    small = _readable(inp).filter(pl.min_horizontal("width", "height") < inp.resolution)
    if small.is_empty():
        return []
    paths = small["path"].to_list()
    sizes = {p: f"{w}x{h}" for p, w, h in small.select("path", "width", "height").iter_rows()}
    return [Finding("DATASET.LOW_RESOLUTION", inp.subject,
                    f"{len(paths)} image(s) have a side shorter than the training resolution {inp.resolution}px.",
                    _ev(paths, resolution=inp.resolution,
                        sizes={p: sizes[p] for p in sorted(paths)[:MAX_EXAMPLES]},
                        smallest_side=int(small.select(pl.min_horizontal("width", "height").min()).item())))]


def check_enough_images(inp: CheckInput) -> list[Finding]:
    n = _readable(inp).height
    if n >= inp.min_images:
        return []
    return [Finding("DATASET.TOO_FEW_IMAGES", inp.subject,
                    f"{n} readable image(s), fewer than the minimum {inp.min_images}.",
                    {"count": n, "examples": [], "min_images": inp.min_images})]


def check_caption_length(inp: CheckInput) -> list[Finding]:
    from lora_pipeline.dataset.tokens import count_tokens, estimate_column, tokenizer_folder

    frame = _captioned(inp).select("path", "caption")
    if frame.is_empty():
        return []
    if tokenizer_folder(inp.tokenizer_base) is None:  # the estimate, for the whole column at once
        counts_col, limit, method = estimate_column(frame["caption"])
        over = frame.with_columns(counts_col.alias("tokens")).filter(pl.col("tokens") > limit)
        long = dict(zip(over["path"].to_list(), over["tokens"].to_list(), strict=True))
    else:
        caps = frame.rows()
        counts, limit, method = count_tokens([c for _, c in caps], inp.tokenizer_base, inp.token_memo)
        long = {p: counts[c] for p, c in caps if counts[c] > limit}
    if not long:
        return []
    paths = sorted(long)
    return [Finding("DATASET.CAPTION_TOO_LONG", inp.subject,
                    f"{len(paths)} caption(s) exceed the {limit}-token limit"
                    f"{' (estimated)' if method.startswith('estimate') else ''}.",
                    _ev(paths, limit=limit, counted_with=method, estimated=method.startswith("estimate"),
                        tokens={p: long[p] for p in paths[:MAX_EXAMPLES]}, longest=max(long.values())))]


# name -> (codes it may report, function); the Dagster asset checks use the same names.
CHECKS: dict[str, tuple[tuple[str, ...], Callable[[CheckInput], list[Finding]]]] = {
    "pairing": (("DATASET.IMAGE_WITHOUT_CAPTION", "DATASET.CAPTION_WITHOUT_IMAGE"), check_pairing),
    "empty_captions": (("DATASET.EMPTY_CAPTION",), check_empty_captions),
    "readable_images": (("DATASET.UNREADABLE_IMAGE",), check_readable_images),
    "literal_captions": (("DATASET.VAGUE_CAPTIONS",), check_literal_captions),
    "caption_variety": (("DATASET.UNIFORM_CAPTIONS",), check_caption_variety),
    "trigger": (("DATASET.TRIGGER_INCONSISTENT",), check_trigger),
    "duplicates": (("DATASET.DUPLICATE_IMAGES",), check_duplicates),
    "resolution": (("DATASET.LOW_RESOLUTION",), check_resolution),
    "enough_images": (("DATASET.TOO_FEW_IMAGES",), check_enough_images),
    "caption_length": (("DATASET.CAPTION_TOO_LONG",), check_caption_length),
}


def run_checks(inp: CheckInput) -> list[Finding]:
    return [f for _, fn in CHECKS.values() for f in fn(inp)]


def notes(inp: CheckInput, metadata_decode_errors: list[str] = ()) -> list[str]:
    """Things reported that are not findings: captions read with replacement characters, refused
    symlinks, a skipped trigger check."""
    out = []
    bad = inp.frame.filter(pl.col("caption_decode_error"))["caption_path"].to_list()
    bad = sorted(set(bad) | set(metadata_decode_errors))
    if bad:
        out.append(f"{len(bad)} caption file(s) are not UTF-8 and were read with replacement characters: "
                   + ", ".join(bad[:MAX_EXAMPLES]))
    by_reason: dict[str, list[str]] = defaultdict(list)
    for entry in inp.refused_symlinks:
        rel, reason = parse_refusal(entry)
        by_reason[reason.split(" (")[0]].append(rel)
    for reason, paths in sorted(by_reason.items()):
        out.append(f"{len(paths)} file(s) refused, not read ({reason}): " + ", ".join(paths[:MAX_EXAMPLES]))
    for entry in inp.excluded:
        folder, _, why = entry.partition("\t")
        out.append(f"{folder}/ left out of the dataset: it is {why}")
    if not inp.trigger:
        out.append("no trigger given: the trigger check was skipped")
    return out
