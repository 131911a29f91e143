"""The batched and vectorised paths of the dataset layer (issue 16) give what the plain ones gave:
each is compared with a copy of the code it replaced, on inputs chosen to hit their edges."""

from __future__ import annotations

import gc
import io
import json
import math
import random
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image, ImageDraw

from lora_pipeline.dataset import checks
from lora_pipeline.dataset.checks import CheckInput
from lora_pipeline.dataset.images import (
    PHASH_BATCH,
    phash_of,
    phashes,
    probe_bytes,
    probe_image,
    thumbnail_of,
)
from lora_pipeline.dataset.layout import DatasetError, list_dataset
from lora_pipeline.dataset.near_duplicates import near_duplicate_pairs
from lora_pipeline.dataset.scan import FileStat, gc_paused, scan_dataset
from lora_pipeline.dataset.snapshot import load_snapshot
from lora_pipeline.dataset.snapshot_write import take_snapshot
from lora_pipeline.dataset.statcache import _file_stats
from lora_pipeline.dataset.tokens import estimate_column, estimate_tokens
from tests.dataset.helpers import pair, png


# -- pHash ------------------------------------------------------------------------------------------
def _dct(n: int = 32) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    m[0, :] = np.sqrt(1.0 / n)
    return m


def reference_phash(image) -> str:
    """phash_of before issue 16: one image at a time, through Pillow's public calls."""
    g = image.convert("L").resize((32, 32), Image.Resampling.BOX)
    a = np.frombuffer(g.tobytes(), dtype=np.uint8).reshape(32, 32).astype(np.float64)
    d = _dct()
    low = (d @ a @ d.T)[:8, :8].ravel()[1:]
    bits = np.zeros(64, dtype=bool)
    bits[:63] = low > np.partition(low, 31)[31]
    return np.packbits(bits).tobytes().hex()


def _images(n: int = 160):
    rng = np.random.default_rng(16)
    modes = ["RGB", "RGBA", "L", "LA", "P", "I;16", "I", "1", "CMYK", "F"]
    for k in range(n):
        h, w = int(rng.integers(1, 90)), int(rng.integers(1, 90))
        if k % 9 == 0:
            h, w = 32, 32  # the thumbnail's own size: no resize
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if k % 4 == 0:
            a[:] = a[0, 0]  # flat: every AC coefficient is rounding noise, the hash hangs on it
        elif k % 4 == 1:
            a[:, : w // 2] = 0
        yield Image.fromarray(a).convert(modes[k % len(modes)])
    yield Image.new("RGB", (64, 64), (255, 255, 255))
    yield Image.new("L", (640, 31), 0)


def test_thumbnail_is_pillows_and_batched_phash_is_bit_identical():
    images = list(_images())
    thumbs = []
    for im in images:
        im.load()
        assert thumbnail_of(im) == im.convert("L").resize((32, 32), Image.Resampling.BOX).tobytes()
        thumbs.append(thumbnail_of(im))
    expected = [reference_phash(im) for im in images]
    assert [phash_of(im) for im in images] == expected
    assert phashes(thumbs) == expected
    many = thumbs * (PHASH_BATCH // len(thumbs) + 2)  # more than one stacked batch
    assert phashes(many) == expected * (PHASH_BATCH // len(thumbs) + 2)
    assert phashes([]) == []


def test_probe_image_then_phashes_is_probe_bytes(tmp_path):
    datas = []
    for k, fmt in enumerate(["PNG", "JPEG", "WEBP", "BMP", "PNG"]):
        buf = io.BytesIO()
        im = Image.new("RGB", (40 + k, 30), (k * 40, 10, 200))
        ImageDraw.Draw(im).rectangle([3, 3, 20, 12], fill=(0, 255, 0))
        im.convert("P" if k == 4 else "RGB").save(buf, format=fmt)
        datas.append(buf.getvalue())
    datas += [b"", b"not an image", datas[0][:40]]
    for data in datas:
        info, thumb = probe_image(data)
        whole = probe_bytes(data)
        assert info.phash is None and (thumb is None) == (whole.error is not None)
        if thumb is not None:
            assert phashes([thumb])[0] == whole.phash
            with Image.open(io.BytesIO(data)) as im:
                assert whole.phash == reference_phash(im)
        assert (info.sha256, info.size, info.width, info.height, info.error) == \
            (whole.sha256, whole.size, whole.width, whole.height, whole.error)


# -- near duplicates --------------------------------------------------------------------------------
def test_near_duplicate_pairs_small_and_large_groups_match_brute_force():
    rng = random.Random(5)
    for n, spread, distance in [(400, 40, 4), (300, 1, 3), (200, 3, 0), (150, 150, 8), (90, 2, 70), (2, 1, 1)]:
        base = [rng.getrandbits(64) for _ in range(spread)]
        ints = []
        for _ in range(n):
            h = rng.choice(base)
            for _ in range(rng.choice([0, 0, 1, 2, 5])):
                h ^= 1 << rng.randrange(64)
            ints.append(h)
        hashes = [f"{h:016x}" for h in ints]
        brute = [(i, j) for i in range(n) for j in range(i + 1, n) if (ints[i] ^ ints[j]).bit_count() <= distance]
        assert near_duplicate_pairs(hashes, distance) == brute
    assert near_duplicate_pairs(["ff", "fe", "0"], 1) == [(0, 1)]  # short hex digits still read as numbers


# -- caption checks: the Python rules they replaced --------------------------------------------------
def _ref_literal(inp):
    hits, terms = {}, defaultdict(int)
    for path, cap in checks._captioned(inp).select("path", "caption").iter_rows():
        found = sorted({m.lower() for m in checks._VAGUE.findall(cap)})
        if found:
            hits[path] = found
            for t in found:
                terms[t] += 1
    return (sorted(hits), dict(terms)) if hits else None


def _ref_variety(inp):
    caps = checks._captioned(inp).select("path", "caption").rows()
    if len(caps) < 2:
        return None
    groups = defaultdict(list)
    for path, cap in caps:
        groups[checks._norm(cap)].append(path)
    ratio = len(groups) / len(caps)
    if ratio >= inp.min_distinct_caption_ratio:
        return None
    return sorted(p for g in groups.values() if len(g) > 1 for p in g), len(groups), len(caps)


def _ref_trigger(inp):
    trig = inp.trigger.strip()
    pat = checks.trigger_pattern(trig)
    absent, variants = [], defaultdict(list)
    for path, cap in checks._captioned(inp).select("path", "caption").rows():
        found = pat.findall(cap)
        if not found:
            absent.append(path)
        for spelling in {f for f in found if f != trig}:
            variants[spelling].append(path)
    return sorted(absent), {v: sorted(ps) for v, ps in variants.items()}


CAPTIONS = [
    "a photo of sks_chair, a red chair", "A photo of SKS-Chair in a room", "masterpiece, best quality, sks_chair",
    "sks chair \u017ftunning lamp", "a 4k photo of sks_chair", "", "   ", "caf\u00e9 with sks_chair \u212a8k",
    "a  photo\tof sks_chair.", "A PHOTO OF sks_chair.", "x'sabcdefghijklmnop sks_chair", "\x1cweird\x1fsks_chair",
    "sksChair and sks_chair and SKS_CHAIR", "trending on artstation, HDR sks_chair", "na\u00efve \u0130stanbul sks_chair",
    "sks_chairsks_chair", "xsks_chair sks_chair8", "sks_chair\nsks-chair", "ultra detailed\x0bhdr", "award-winning",
    "highly detailed, 8K UHD", "4kx 8k4 uhdr", "sks__--  chair", "_sks_chair_", "\u00e9sks_chair", "sks_chair\u00e9",
    "supercalifragilisticexpialidocious " * 10, "ABCDEFGHIJKLMNOPQRSTUVWXYZ" * 3, "it's they're we've I'm you'll he'd",
    "123 4567 89", "!!!??? ... ___ --", "a photo of sks_chair, a red chair.", " A Photo of SKS_chair, a red chair ",
    "\u00ab\u00bb \u2014 \u00e0\u00e9\u00ee\u00f5\u00fc sks_chair", "\U0001f600 emoji sks_chair",
    "tab\tnew\nline\rcr sks_chair", "sks_chair\x00nul", "a\u00a0non-breaking\u2003space sks_chair",
]


def _frame(captions: list[str]) -> pl.DataFrame:
    n = len(captions)
    return pl.DataFrame({
        "path": [f"d/{i:03d}.png" for i in range(n)], "sha256": ["0" * 64] * n, "size": [1] * n,
        "width": [64] * n, "height": [64] * n, "caption": captions, "caption_sha256": [None] * n,
        "phash": [None] * n, "caption_path": [None] * n, "repeats": [1] * n,
        "caption_decode_error": [False] * n, "image_error": [None] * n,
    }, schema_overrides={"caption_sha256": pl.String, "phash": pl.String, "caption_path": pl.String,
                         "image_error": pl.String})


@pytest.mark.parametrize("captions", [CAPTIONS, [c for c in CAPTIONS if "\x00" not in c],
                                      CAPTIONS[:2] * 20, [c.upper() for c in CAPTIONS]])
@pytest.mark.parametrize("trigger", ["sks_chair", "SKS chair", "caf\u00e9", "sks", "_-", "\u0130stanbul"])
def test_caption_checks_give_what_the_python_rules_gave(captions, trigger):
    inp = CheckInput(_frame(captions), "t", trigger=trigger, min_distinct_caption_ratio=0.9)
    lit = checks.check_literal_captions(inp)
    ref = _ref_literal(inp)
    assert (lit[0].evidence["examples"], lit[0].evidence["count"], lit[0].evidence["terms"]) == \
        (ref[0][:20], len(ref[0]), ref[1]) if ref else not lit
    var = checks.check_caption_variety(inp)
    ref = _ref_variety(inp)
    if ref is None:
        assert not var
    else:
        ev = var[0].evidence
        assert (ev["count"], ev["examples"], ev["distinct"], ev["captions"]) == (len(ref[0]), ref[0][:20], ref[1], ref[2])
    trig = checks.check_trigger(inp)
    absent, variants = _ref_trigger(inp)
    if not absent and not variants:
        assert not trig
    else:
        ev = trig[0].evidence
        assert (ev["absent_count"], ev["absent"]) == (len(absent), absent[:20])
        assert ev["variants"] == {v: ps[:20] for v, ps in sorted(variants.items())}
    counts, limit, method = estimate_column(checks._captioned(inp)["caption"])
    assert counts.to_list() == [estimate_tokens(c) for c in checks._captioned(inp)["caption"].to_list()]
    assert (limit, method.startswith("estimate")) == (77, True)


def test_estimate_matches_the_python_count_on_random_ascii():
    rng = random.Random(3)
    alphabet = "abcXYZ019 _-'.,!?\t\n\x0b\x0c\r\x1c\x1f\u00e9s"
    caps = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 90))) for _ in range(400)]
    counts, _, _ = estimate_column(pl.Series(caps))
    assert counts.to_list() == [estimate_tokens(c) for c in caps]
    assert [math.isfinite(x) for x in counts.to_list()]


# -- pairing ---------------------------------------------------------------------------------------
def test_string_pairing_keeps_pathlib_rules(tmp_path):
    root = tmp_path / "ds"
    for rel in ["a..png", "x/3_q/b.PNG", "x/3_q/5_r/c.Jpeg", "d.png", "e.png", "f.webp", "g.bmp"]:
        png(root / rel, seed=len(rel))
    for rel, text in [("a..txt", "two dots"), ("x/3_q/b.TXT", "upper"), ("x/3_q/b.txt", "lower wins"),
                      ("x/3_q/5_r/c.caption", "caption ext"), ("d.caption", "loses"), ("d.txt", "wins"),
                      ("e.", "not a caption"), ("orphan.txt", "orphan"), ("f.txt", "\ufeffbom ")]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    (root / "g.txt").write_bytes(b"bad \xff")
    listing = list_dataset(root)
    got = {p.image: (p.caption_source, p.caption, p.repeats, p.caption_decode_error) for p in listing.pairs}
    assert got == {
        "a..png": ("a..txt", "two dots", 1, False), "d.png": ("d.txt", "wins", 1, False),
        "e.png": (None, None, 1, False), "f.webp": ("f.txt", "bom", 1, False),
        "g.bmp": ("g.txt", "bad \ufffd", 1, True), "x/3_q/5_r/c.Jpeg": ("x/3_q/5_r/c.caption", "caption ext", 5, False),
        "x/3_q/b.PNG": ("x/3_q/b.txt", "lower wins", 3, False)}
    # as before issue 16: of b.TXT and b.txt (one key, lower-cased), the later in sorted order is kept
    assert listing.orphan_captions == ["d.caption", "orphan.txt"]
    assert listing.files == sorted(listing.files) and "e." in listing.files


# -- snapshots -------------------------------------------------------------------------------------
def test_unchanged_snapshot_info_and_manifest_are_what_is_stored(tmp_path):
    ds = tmp_path / "ds"
    for i in range(6):
        pair(ds, f"i{i}", f"caption {i}", seed=i)
    (ds / "orphan.txt").write_text("o", encoding="utf-8")
    first = take_snapshot(tmp_path / "st", "d", ds)
    again = take_snapshot(tmp_path / "st", "d", ds)
    stored = load_snapshot(tmp_path / "st", "d", first.snapshot_id)
    for res in (first, again):
        assert vars(res.info) | {"_objects": None, "_frame": None} == vars(stored) | {"_objects": None, "_frame": None}
        assert list(res.info.files) == list(stored.files)
        assert res.info.manifest().equals(pl.read_parquet(stored.manifest_path))
    first.info.manifest().drop_in_place("caption")  # the in-memory manifest is handed out as a copy
    assert "caption" in first.info.manifest().columns


def test_stat_cache_entries_read_as_before():
    good = {"a": [1, 2, "x"], "b": [3, 4, "y"]}
    assert _file_stats(good) == {k: FileStat.from_list(v) for k, v in good.items()}
    assert _file_stats({"a": ["1", 2.0, "x"]}) == {"a": FileStat(1, 2, "x")}
    assert _file_stats({"a": [1, 2, "x", "extra"]}) == {"a": FileStat(1, 2, "x")}
    for bad, exc in [({"a": [1]}, IndexError), ({"a": 5}, TypeError), ({"a": ["x", 1, "s"]}, ValueError)]:
        with pytest.raises(exc):
            _file_stats(bad)


def test_gc_paused_restores_the_collector(tmp_path):
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(DatasetError):
        scan_dataset(tmp_path / "missing")
    assert gc.isenabled()


def test_snapshot_json_parsed_in_part_matches_in_full(tmp_path):
    ds = tmp_path / "ds"
    pair(ds, "a", "one", seed=1)
    pair(ds, "b", "two", seed=2)
    first = take_snapshot(tmp_path / "st", "d", ds)
    doc = json.loads((first.info.path / "snapshot.json").read_text("utf-8"))
    assert list(doc)[-1] == "files"  # the file list is written last, on one line
    assert re.search(r'\n "files": \{[^\n]*\}\n\}\n$', (first.info.path / "snapshot.json").read_text("utf-8"))
    assert Path(first.info.path / "manifest.parquet").is_file()
