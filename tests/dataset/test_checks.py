"""Each DATASET finding, planted in a generated dataset with real files."""

from pathlib import Path

import pytest

from lora_pipeline.dataset.checks import CheckInput, notes, run_checks
from lora_pipeline.dataset.near_duplicates import near_duplicate_pairs
from lora_pipeline.dataset.scan import scan_dataset
from lora_pipeline.dataset.tokens import estimate_tokens
from lora_pipeline.toy.dataset import write_toy_dataset
from tests.dataset.helpers import bomb_png, pair, plain_dataset, png

TRIGGER = "sks_chair"


def _check(root: Path, **kw) -> dict[str, dict]:
    scan = scan_dataset(root)
    kw.setdefault("trigger", TRIGGER)
    kw.setdefault("resolution", 32)
    inp = CheckInput(scan.frame, str(root), scan.listing.orphan_captions, scan.listing.refused_symlinks, **kw)
    findings = run_checks(inp)
    assert len({f.code for f in findings}) == len(findings)
    for f in findings:
        assert f.evidence["count"] >= 0 and len(f.evidence.get("examples", [])) <= 20
    return {f.code: f.evidence for f in findings}


def test_clean_dataset_has_no_findings(tmp_path):
    assert _check(plain_dataset(tmp_path)) == {}


def test_toy_dataset_planted_faults(tmp_path):
    ds = write_toy_dataset(tmp_path / "toy", trigger=TRIGGER, n=12, size=48,
                           faults=("orphan_caption", "vague_caption", "respelled_trigger"))
    found = _check(ds, resolution=48)
    assert set(found) == {"DATASET.CAPTION_WITHOUT_IMAGE", "DATASET.VAGUE_CAPTIONS",
                          "DATASET.TRIGGER_INCONSISTENT"}
    assert found["DATASET.CAPTION_WITHOUT_IMAGE"]["examples"] == ["img_orphan.txt"]
    assert found["DATASET.VAGUE_CAPTIONS"]["examples"] == ["img_001.png"]
    assert found["DATASET.TRIGGER_INCONSISTENT"]["variants"] == {"SKS CHAIR": ["img_002.png"]}


def test_image_without_caption_and_empty_caption(tmp_path):
    ds = plain_dataset(tmp_path)
    (ds / "img_003.txt").unlink()
    (ds / "img_004.txt").write_text("   \n")
    found = _check(ds)
    assert found["DATASET.IMAGE_WITHOUT_CAPTION"]["examples"] == ["img_003.png"]
    assert found["DATASET.EMPTY_CAPTION"]["examples"] == ["img_004.png"]


def test_unreadable_images_with_reasons(tmp_path):
    ds = plain_dataset(tmp_path)
    data = (ds / "img_000.png").read_bytes()
    (ds / "img_000.png").write_bytes(data[: len(data) // 2])  # truncated PNG
    (ds / "img_001.png").write_bytes(b"")  # 0-byte file
    (ds / "img_002.png").write_text("this is not an image")
    bomb_png(ds / "img_003.png")
    ev = _check(ds)["DATASET.UNREADABLE_IMAGE"]
    assert ev["count"] == 4
    assert ev["reasons"]["img_000.png"] == "truncated"
    assert ev["reasons"]["img_001.png"] == "empty file (0 bytes)"
    assert ev["reasons"]["img_002.png"] == "not an image"
    assert ev["reasons"]["img_003.png"].startswith("decompression-bomb size")


def test_uniform_captions(tmp_path):
    for i in range(10):
        pair(tmp_path, f"i{i}", f"a photo of {TRIGGER}", seed=i)
    ev = _check(tmp_path)["DATASET.UNIFORM_CAPTIONS"]
    assert ev["distinct"] == 1 and ev["captions"] == 10


@pytest.mark.parametrize("spelling", ["sks chair", "SKS_CHAIR", "sks-chair", "skschair"])
def test_trigger_variants_and_absence(tmp_path, spelling):
    ds = plain_dataset(tmp_path)
    (ds / "img_001.txt").write_text(f"a photo of {spelling} on a table")
    (ds / "img_002.txt").write_text("a photo of a chair on a table")
    ev = _check(ds)["DATASET.TRIGGER_INCONSISTENT"]
    assert ev["variants"] == {spelling: ["img_001.png"]}
    assert ev["absent"] == ["img_002.png"]


def test_exact_and_near_duplicates(tmp_path):
    from PIL import Image

    ds = plain_dataset(tmp_path)
    (ds / "copy.png").write_bytes((ds / "img_000.png").read_bytes())
    (ds / "copy.txt").write_text(f"a photo of {TRIGGER}, a copy")
    Image.open(ds / "img_001.png").resize((40, 40)).save(ds / "resized.png")  # near duplicate
    (ds / "resized.txt").write_text(f"a photo of {TRIGGER}, resized")
    ev = _check(ds)["DATASET.DUPLICATE_IMAGES"]
    assert ev["exact_groups"] == [["copy.png", "img_000.png"]]
    assert ev["near_groups"] == [["img_001.png", "resized.png"]]


def test_near_duplicate_pairs_matches_brute_force():
    import random

    rng = random.Random(0)
    base = [rng.getrandbits(64) for _ in range(300)]
    hashes = base + [b ^ (1 << rng.randrange(64)) ^ (1 << rng.randrange(64)) for b in base[:50]]
    hx = [f"{h:016x}" for h in hashes]
    for d in (0, 2, 4, 10):
        brute = sorted((i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes))
                       if (hashes[i] ^ hashes[j]).bit_count() <= d)
        assert near_duplicate_pairs(hx, d) == brute


def test_low_resolution_and_too_few_images(tmp_path):
    ds = plain_dataset(tmp_path, n=4, size=32)
    found = _check(ds, resolution=64, min_images=5)
    assert found["DATASET.LOW_RESOLUTION"]["count"] == 4
    assert found["DATASET.LOW_RESOLUTION"]["smallest_side"] == 32
    assert found["DATASET.TOO_FEW_IMAGES"]["count"] == 4


def test_caption_too_long_with_the_real_tokenizer(tmp_path, toy_base):
    ds = plain_dataset(tmp_path)
    (ds / "img_005.txt").write_text(f"a photo of {TRIGGER}, " + "a red chair on a white background, " * 12)
    ev = _check(ds, tokenizer_base=toy_base)["DATASET.CAPTION_TOO_LONG"]
    assert ev["examples"] == ["img_005.png"] and ev["limit"] == 77
    assert ev["estimated"] is False and ev["counted_with"].startswith("CLIP tokenizer")
    assert ev["tokens"]["img_005.png"] > 77


def test_caption_too_long_estimate_is_labelled(tmp_path):
    ds = plain_dataset(tmp_path)
    (ds / "img_005.txt").write_text("word " * 90)
    ev = _check(ds)["DATASET.CAPTION_TOO_LONG"]
    assert ev["estimated"] is True and ev["counted_with"].startswith("estimate")
    assert estimate_tokens("a photo of sks_chair, a red chair") == 12  # 10 pieces + start/end


def test_non_utf8_caption_is_read_with_replacement_and_reported(tmp_path):
    ds = plain_dataset(tmp_path)
    (ds / "img_002.txt").write_bytes(f"a photo of {TRIGGER}, caf\xe9 chair".encode("latin-1"))
    scan = scan_dataset(ds)
    row = scan.frame.filter(scan.frame["path"] == "img_002.png").row(0, named=True)
    assert row["caption"] == f"a photo of {TRIGGER}, caf\ufffd chair"
    assert row["caption_decode_error"] is True
    inp = CheckInput(scan.frame, "ds", trigger=TRIGGER, resolution=32)
    assert run_checks(inp) == []
    assert any("img_002.txt" in n and "not UTF-8" in n for n in notes(inp))


def test_symlinked_image_out_of_root_is_unreadable(tmp_path):
    import os

    ds = plain_dataset(tmp_path / "ds")
    png(tmp_path / "out.png", 9)
    os.symlink(tmp_path / "out.png", ds / "link.png")
    ev = _check(ds)["DATASET.UNREADABLE_IMAGE"]
    assert ev["reasons"] == {"link.png": "symlink leaves the dataset root"}


def test_token_count_memo_counts_only_new_captions_and_survives_damage(tmp_path, toy_base):
    import json
    import subprocess
    import sys

    from lora_pipeline.dataset.tokens import count_tokens

    caps = [f"a photo of {TRIGGER}", "a red chair " * 30]
    direct, limit, method = count_tokens(caps, toy_base)
    memo = tmp_path / "memo"
    assert count_tokens(caps, toy_base, memo) == (direct, limit, method)
    (path,) = memo.glob("*.json")
    assert sorted(json.loads(path.read_text())["counts"].values()) == sorted(direct.values())
    # A full memo answers without transformers (a fresh interpreter shows what it imported).
    code = ("import sys; from pathlib import Path; from lora_pipeline.dataset.tokens import count_tokens; "
            f"print(count_tokens({caps!r}, Path({str(toy_base)!r}), Path({str(memo)!r}))[0]); "
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == repr(direct) and out[1] == "False"
    # A new caption is counted and added; the known ones come from the memo.
    doc = json.loads(path.read_text())
    doc["counts"] = {k: v + 1000 for k, v in doc["counts"].items()}  # marks the memo's answers
    path.write_text(json.dumps(doc))
    got, _, _ = count_tokens([*caps, "chair"], toy_base, memo)
    assert [got[c] for c in caps] == [direct[c] + 1000 for c in caps] and got["chair"] == 3
    # A damaged memo is counted afresh.
    path.write_text('{"limit": "77", "counts": []}')
    assert count_tokens(caps, toy_base, memo)[0] == direct
    # A memo that cannot be written (its folder is a file) costs nothing but the memo.
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    assert count_tokens(caps, toy_base, blocked / "memo")[0] == direct
