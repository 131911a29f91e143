"""The stat cache of latest.json (lora_pipeline.dataset.statcache) and the re-snapshot paths that use
it: the columnar format (and the one before it) read, a malformed or forged cache ignored (every
file hashed again), racy files hashed again, the all-files-unchanged path of scan_dataset giving
what the file-by-file path gives, and the walk's listing from folder fds."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from lora_pipeline.dataset import guard
from lora_pipeline.dataset.integrity import read_object
from lora_pipeline.dataset.layout import walk_dataset
from lora_pipeline.dataset.scan import RACY_MARGIN_NS, FileStat, StatCache, scan_dataset
from lora_pipeline.dataset.snapshot_write import take_snapshot
from lora_pipeline.dataset.statcache import STAT_CACHE_KEY, read_stat_cache, stat_cache_doc
from tests.dataset.helpers import pair, plain_dataset, png


@pytest.fixture(autouse=True)
def _no_registered_workspaces(monkeypatch):
    monkeypatch.setattr(guard, "_PROTECTED", {})


def _age(root: Path, seconds: int = 60) -> None:
    past = time.time() - seconds
    for p in root.rglob("*"):
        os.utime(p, (past, past))


def _latest(storage: Path, dataset: str = "d") -> Path:
    return storage / "snapshots" / dataset / "latest.json"


def _dataset(tmp_path: Path, n: int = 4) -> Path:
    ds = plain_dataset(tmp_path / "ds", n=n)
    pair(ds / "3_sub", "deep", "a photo of sks_chair, deeper", seed=9)
    (ds / "notes.md").write_text("not a dataset file", encoding="utf-8")
    _age(ds)
    return ds


SHA = "ab" * 32


# -- the format ------------------------------------------------------------------------------------
def test_latest_json_holds_the_columns_and_they_read_back(tmp_path):
    ds = _dataset(tmp_path)
    first = take_snapshot(tmp_path / "st", "d", ds)
    doc = json.loads(_latest(tmp_path / "st").read_text("utf-8"))
    assert "files" not in doc and set(doc[STAT_CACHE_KEY]) == {"paths", "sizes", "mtimes", "sha256"}
    assert doc[STAT_CACHE_KEY]["paths"] == sorted(first.scan.files)  # dataset files only, sorted
    assert read_stat_cache(doc) == first.scan.files
    assert all(type(v) is FileStat for v in read_stat_cache(doc).values())
    assert read_stat_cache({}) == {} and read_stat_cache({STAT_CACHE_KEY: stat_cache_doc({})}) == {}
    again = take_snapshot(tmp_path / "st", "d", ds)
    assert again.scan.hashed == 0 and again.scan.reused == len(first.scan.files) == 10


def test_a_latest_json_in_the_format_before_is_still_trusted(tmp_path):
    ds = _dataset(tmp_path)
    first = take_snapshot(tmp_path / "st", "d", ds)
    path = _latest(tmp_path / "st")
    doc = json.loads(path.read_text("utf-8"))
    del doc[STAT_CACHE_KEY]
    doc["files"] = {k: v.to_list() for k, v in first.scan.files.items()}
    path.write_text(json.dumps(doc), "utf-8")
    again = take_snapshot(tmp_path / "st", "d", ds)
    assert again.snapshot_id == first.snapshot_id and again.scan.hashed == 0 and again.scan.reused == 10
    assert read_stat_cache(json.loads(path.read_text("utf-8"))) == first.scan.files  # unchanged: not rewritten
    assert STAT_CACHE_KEY not in json.loads(path.read_text("utf-8"))


def _forgeries(cols: dict) -> list:
    """Ways a stat cache can be malformed, each alone."""
    n = len(cols["paths"])
    out: list = [5, [], {**cols, "extra": []}, {k: v for k, v in cols.items() if k != "sizes"}]
    out += [{**cols, "sizes": cols["sizes"][:-1]}, {**cols, "paths": {"a": 1}}]
    out += [{**cols, "sizes": [str(s) for s in cols["sizes"]]}, {**cols, "mtimes": [float(m) for m in cols["mtimes"]]}]
    out += [{**cols, "sizes": [True] * n}, {**cols, "sizes": [-1] * n}, {**cols, "paths": [1] * n}]
    for bad in (SHA.upper(), SHA[:-1], SHA + "0", "zz" * 32, " " + SHA[1:], SHA[:32] + " " * 32, None):
        out.append({**cols, "sha256": [bad] + cols["sha256"][1:]})
    out.append({**cols, "sha256": [cols["sha256"][0] + cols["sha256"][1][:1], cols["sha256"][1][1:]]
                + cols["sha256"][2:]})  # one sha a digit longer, the next a digit shorter
    return out


def test_a_malformed_or_forged_stat_cache_is_ignored_and_every_file_hashed_again(tmp_path):
    ds = _dataset(tmp_path)
    first = take_snapshot(tmp_path / "st", "d", ds)
    path = _latest(tmp_path / "st")
    good = json.loads(path.read_text("utf-8"))
    forged = [{**good, STAT_CACHE_KEY: f} for f in _forgeries(good[STAT_CACHE_KEY])]
    forged += [{**{k: v for k, v in good.items() if k != STAT_CACHE_KEY}, "files": f}
               for f in ([["x"]], {"a": [1]}, {"a": ["x", 1, SHA]}, {"a": 5})]  # the format before
    for doc in forged:
        with pytest.raises((ValueError, TypeError, IndexError)):
            read_stat_cache(doc)
        path.write_text(json.dumps(doc), "utf-8")
        again = take_snapshot(tmp_path / "st", "d", ds)
        assert again.snapshot_id == first.snapshot_id, doc
        assert again.scan.hashed == 10 and again.scan.reused == 0, doc
        assert read_stat_cache(json.loads(path.read_text("utf-8"))) == first.scan.files  # written anew
    path.write_text('{"snapshot_id": "x", "stat_cache": {"paths": [', "utf-8")  # cut short
    assert take_snapshot(tmp_path / "st", "d", ds).scan.hashed == 10


def test_a_forged_hash_in_a_well_formed_cache_is_trusted_like_before(tmp_path):
    """What the cache is for: size + mtime unchanged means the stored sha256 is reused (full_verify
    re-reads). A well-formed entry naming another object is therefore believed, as before the format."""
    ds = _dataset(tmp_path)
    first = take_snapshot(tmp_path / "st", "d", ds)
    path = _latest(tmp_path / "st")
    doc = json.loads(path.read_text("utf-8"))
    doc[STAT_CACHE_KEY]["sha256"][0] = SHA
    path.write_text(json.dumps(doc), "utf-8")
    again = take_snapshot(tmp_path / "st", "d", ds)
    assert again.scan.files[doc[STAT_CACHE_KEY]["paths"][0]].sha256 != SHA  # not in the store: re-read
    assert again.snapshot_id == first.snapshot_id and again.scan.hashed == 1


# -- racy files ------------------------------------------------------------------------------------
def test_a_file_modified_close_to_the_last_scan_is_hashed_again(tmp_path):
    ds = _dataset(tmp_path)
    racy = ds / "img_001.txt"
    os.utime(racy)  # now: within RACY_MARGIN_NS of the scan that follows
    first = take_snapshot(tmp_path / "st", "d", ds)
    doc = json.loads(_latest(tmp_path / "st").read_text("utf-8"))
    i = doc[STAT_CACHE_KEY]["paths"].index("img_001.txt")
    assert doc[STAT_CACHE_KEY]["mtimes"][i] >= doc["scanned_at_ns"] - RACY_MARGIN_NS
    # Changed in place within the same mtime tick, same size: only the racy test can catch it.
    st = racy.stat()
    racy.write_text(racy.read_text("utf-8").replace("number", "NUMBER"), "utf-8")
    os.utime(racy, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = take_snapshot(tmp_path / "st", "d", ds)
    assert again.scan.hashed == 1 and again.scan.reused == 9
    assert again.snapshot_id != first.snapshot_id and again.created
    assert again.scan.files["img_001.txt"].sha256 != first.scan.files["img_001.txt"].sha256


def test_every_file_racy_every_file_hashed(tmp_path):
    ds = plain_dataset(tmp_path / "ds", n=3)  # just written: every mtime is racy
    take_snapshot(tmp_path / "st", "d", ds)
    assert take_snapshot(tmp_path / "st", "d", ds).scan.hashed == 6


# -- the all-files-unchanged path gives what the file-by-file path gives ---------------------------
def _same_scan(a, b) -> None:
    assert a.files == b.files and list(a.files) == list(b.files) and a.refused == b.refused
    assert a.content_id == b.content_id
    assert (a.frame is None) == (b.frame is None) and (a.frame is None or a.frame.equals(b.frame))
    assert vars(a.listing) == vars(b.listing)


def test_an_unchanged_folder_scans_as_without_the_cache(tmp_path):
    ds = _dataset(tmp_path)
    (ds / "orphan.txt").write_text("orphan", encoding="utf-8")
    os.symlink("/etc/hostname", ds / "out.png")  # refused: leaves the root
    _age(ds)
    plain = scan_dataset(ds)
    cache = StatCache(files=dict(plain.files), scanned_at_ns=time.time_ns())
    for probe in (True, False):
        cold = scan_dataset(ds, probe_images=probe)
        warm = scan_dataset(ds, cache=StatCache(dict(cache.files), cache.scanned_at_ns), probe_images=probe)
        assert (warm.hashed, warm.reused) == ((5, 6) if probe else (0, 11))  # no manifest: images re-probed
        _same_scan(warm, cold)
    # one file fewer, one more, one with another size or mtime: file by file, the others reused
    for change in ("remove", "add", "size", "mtime"):
        part = dict(cache.files)
        if change == "remove":
            del part["img_000.txt"]
        elif change == "add":
            part["zzz.txt"] = FileStat(1, 1, SHA)
        else:
            old = part["img_000.txt"]
            part["img_000.txt"] = old._replace(size=old.size + 1) if change == "size" \
                else old._replace(mtime_ns=old.mtime_ns - 1)
        warm = scan_dataset(ds, cache=StatCache(part, cache.scanned_at_ns), probe_images=False)
        assert (warm.hashed, warm.reused) == ((0, 11) if change == "add" else (1, 10)), change
        _same_scan(warm, scan_dataset(ds, probe_images=False))


def test_a_missing_stored_object_is_stored_again_on_an_unchanged_resnapshot(tmp_path):
    ds = _dataset(tmp_path)
    first = take_snapshot(tmp_path / "st", "d", ds)
    (pack,) = (tmp_path / "st/objects/packs").iterdir()
    pack.unlink()
    again = take_snapshot(tmp_path / "st", "d", ds)
    assert again.snapshot_id == first.snapshot_id and again.scan.stored == 10 and again.scan.hashed == 10
    for rel, sha in again.info.files.items():
        assert read_object(tmp_path / "st", sha, again.info) == (ds / rel).read_bytes()


# -- the walk --------------------------------------------------------------------------------------
def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_the_walk_closes_every_folder_it_opens(tmp_path):
    ds = _dataset(tmp_path)
    locked = ds / "locked"
    png(locked / "x.png")
    os.chmod(locked, 0)
    try:
        before = _open_fds()
        for _ in range(20):
            walked = walk_dataset(ds.resolve())
        assert _open_fds() == before
    finally:
        os.chmod(locked, 0o755)
    if os.geteuid() != 0:  # root lists it anyway
        assert walked.refused == ["locked\tfolder cannot be listed (Permission denied)"]
    with pytest.raises(Exception, match="cannot list|not found"):
        walk_dataset(ds / "missing")
    assert _open_fds() == before


def test_the_walk_lists_what_it_listed_before(tmp_path):
    """The cases the usual (inline) path of the walk hands to `_entry`, next to the usual ones."""
    ds = tmp_path / "ds"
    png(ds / "a.png")
    (ds / "a.txt").write_text("a", encoding="utf-8")
    (ds / "big.png").write_bytes(b"\0" * 2048)  # over the cap below: refused
    (ds / "big.bin").write_bytes(b"\0" * 2048)  # not a dataset file: listed whatever its size
    (ds / "café.png").write_bytes((ds / "a.png").read_bytes())  # UTF-8, not ASCII: listed
    (ds / ".hidden.png").write_bytes(b"x")
    os.mkfifo(ds / "pipe.png")
    os.mkfifo(ds / "pipe.other")  # not a dataset file: skipped silently
    os.symlink("a.png", ds / "link.png")
    os.symlink(tmp_path, ds / "up")
    png(ds / "sub" / "b.png")
    os.symlink("sub", ds / "sublink")  # a folder inside the root: walked where it is
    w = walk_dataset(ds.resolve(), max_file_bytes=1024)
    sizes = {rel: size for rel, size, _ in w.files}
    assert sorted(sizes) == ["a.png", "a.txt", "big.bin", "café.png", "link.png", "sub/b.png"]
    assert sizes["link.png"] == sizes["a.png"] == (ds / "a.png").stat().st_size and sizes["big.bin"] == 2048
    assert [r.split("\t")[0] for r in w.refused] == ["big.png", "pipe.png", "up"]


# -- the content id --------------------------------------------------------------------------------
def _reference_content_id(files: dict[str, FileStat], refused: list[str] = ()) -> str:
    """content_id before it joined its lines in C: the snapshot ids of existing storages."""
    import hashlib

    from lora_pipeline.dataset.guard import parse_refusal
    from lora_pipeline.dataset.scan import ID_VERSION

    lines = [f"{rel}\0{st.sha256}\n" for rel, st in sorted(files.items())]
    for entry in sorted(refused):
        rel, reason = parse_refusal(entry)
        lines.append(f"{rel}\0refused-symlink\n" if entry == rel else f"{rel}\0refused\0{reason}\n")
    return hashlib.sha256((ID_VERSION + "\n" + "".join(lines)).encode()).hexdigest()[:20]


def test_content_ids_are_the_ones_computed_before():
    import random

    from lora_pipeline.dataset.guard import refusal
    from lora_pipeline.dataset.scan import content_id

    rng = random.Random(7)
    for n in (0, 1, 999, 1000, 1001, 2500):
        files = {f"d{rng.randrange(9)}/é {rng.random()}.png": FileStat(rng.randrange(99), 5, f"{rng.getrandbits(256):064x}")
                 for _ in range(n)}
        files = dict(rng.sample(list(files.items()), len(files)))  # in no particular order
        for refused in ([], ["link.png"], [refusal("a/b.png", "symlink loop"), "z.png", refusal("c", "x\ty")]):
            assert content_id(files, refused) == _reference_content_id(files, refused), (n, refused)
    assert content_id({}) == "5ef0ba9972e6ae4c6257"
    assert content_id({"a.png": FileStat(1, 2, "0" * 64), "a.txt": FileStat(3, 4, "f" * 64)}, ["l.png"]) \
        == "2a5c07804df7ac297f4e"
