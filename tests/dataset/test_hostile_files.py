"""Hostile files in a dataset folder: symlink loops, names that are not UTF-8, FIFOs, sockets and
devices, huge or sparse files, images declaring absurd sizes, symlinks out of the root, and
lora-pipeline's own folders placed inside. Each is listed with its reason (a finding for an image),
never followed, opened or read whole; `check-dataset` exits 0 with one line per finding, and the
snapshot and fingerprint agree."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import tracemalloc
from pathlib import Path

import pytest

from lora_pipeline.cli import main
from lora_pipeline.dataset import guard
from lora_pipeline.dataset.checks import CheckInput, check_readable_images, notes
from lora_pipeline.dataset.guard import Refused, parse_refusal, read_capped
from lora_pipeline.dataset.scan import scan_dataset
from lora_pipeline.dataset.snapshot import source_drift, source_fingerprint
from lora_pipeline.dataset.snapshot_write import take_snapshot
from tests.dataset.helpers import bomb_png, pair, plain_dataset, png


@pytest.fixture(autouse=True)
def _no_registered_workspaces(monkeypatch):
    monkeypatch.setattr(guard, "_PROTECTED", {})
    monkeypatch.delenv("DAGSTER_HOME", raising=False)


def _refused(scan) -> dict[str, str]:
    return dict(parse_refusal(e) for e in scan.refused)


def _check(ds: Path, capsys, *extra: str) -> tuple[dict, str]:
    """check-dataset twice (JSON and text): both exit 0; the JSON document and the text output."""
    assert main(["check-dataset", str(ds), "--resolution", "32", *extra, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert main(["check-dataset", str(ds), "--resolution", "32", *extra]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and err == ""
    return doc, out


def _unreadable(doc: dict) -> dict[str, str]:
    f = next((f for f in doc["findings"] if f["code"] == "DATASET.UNREADABLE_IMAGE"), None)
    return f["evidence"]["reasons"] if f else {}


def _snapshot_and_fingerprint_agree(tmp_path: Path, ds: Path):
    res = take_snapshot(tmp_path / "storage", "d", ds)
    assert source_fingerprint(tmp_path / "storage", "d", ds) == res.snapshot_id
    assert not source_drift(tmp_path / "storage", "d", ds).changed
    again = take_snapshot(tmp_path / "storage", "d", ds)
    assert again.snapshot_id == res.snapshot_id and not again.created
    return res


# --- symlink loops -------------------------------------------------------------------------------

def test_symlink_loops_are_refused_not_followed(tmp_path, capsys):
    ds = plain_dataset(tmp_path / "ds", n=3)
    os.symlink("self.png", ds / "self.png")
    os.symlink("b.png", ds / "a.png")
    os.symlink("a.png", ds / "b.png")
    os.symlink("loopdir", ds / "loopdir")
    os.symlink("..", ds / "up")  # a folder link back to the root's parent: leaves the root
    scan = scan_dataset(ds)
    refused = _refused(scan)
    assert {refused[k] for k in ("self.png", "a.png", "b.png", "loopdir")} == {"symlink loop"}
    assert refused["up"] == "symlink leaves the dataset root"
    assert sorted(scan.frame["path"]) == ["img_000.png", "img_001.png", "img_002.png"]
    doc, out = _check(ds, capsys)
    assert _unreadable(doc) == {"a.png": "symlink loop", "b.png": "symlink loop", "self.png": "symlink loop"}
    assert "error DATASET.UNREADABLE_IMAGE: 3 image(s) cannot be read or decoded (symlink loop)." in out
    assert "note  4 file(s) refused, not read (symlink loop): a.png, b.png, loopdir, self.png" in out
    res = _snapshot_and_fingerprint_agree(tmp_path, ds)
    assert res.info.refused_symlinks == scan.refused and res.info.manifest().height == 3


# --- names that are not UTF-8 --------------------------------------------------------------------

def _bytes_name(folder: Path, name: bytes, data: bytes) -> None:
    fd = os.open(os.fsencode(folder) + b"/" + name, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def test_names_that_are_not_utf8_are_findings_with_printable_names(tmp_path, capsys):
    ds = plain_dataset(tmp_path / "ds", n=3)
    good = (ds / "img_000.png").read_bytes()
    _bytes_name(ds, b"caf\xe9.png", good)
    _bytes_name(ds, b"caf\xe9.txt", b"a caption")
    os.mkdir(os.fsencode(ds) + b"/sub\xff")
    _bytes_name(ds, b"sub\xff/inner.png", good)
    scan = scan_dataset(ds)
    refused = _refused(scan)
    assert set(refused) == {"caf\\xe9.png", "caf\\xe9.txt", "sub\\xff/inner.png"}
    assert set(refused.values()) == {"file name is not valid UTF-8"}
    assert all(k.encode("utf-8") for k in scan.files)  # every stored name is valid text
    doc, out = _check(ds, capsys)
    assert _unreadable(doc) == {"caf\\xe9.png": "file name is not valid UTF-8",
                                "sub\\xff/inner.png": "file name is not valid UTF-8"}
    assert doc["counts"]["images"] == 3
    assert "e.g. caf\\xe9.png, sub\\xff/inner.png" in out
    res = _snapshot_and_fingerprint_agree(tmp_path, ds)
    json.loads((res.info.path / "snapshot.json").read_text("utf-8"))  # valid UTF-8 JSON


# --- FIFOs, sockets, devices: never opened -------------------------------------------------------

class _FifoWatch:
    """Notices when anyone opens the FIFO for reading (a blocking open would hang the scan): it then
    opens the write end, which unblocks that reader, and records that it happened."""

    def __init__(self, path: Path):
        self.path, self.opened, self._stop = path, False, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only with a reader
            except OSError:
                continue
            self.opened = True
            os.close(fd)

    def stop(self) -> bool:
        self._stop.set()
        self._t.join()
        return self.opened


def test_fifo_socket_and_device_are_refused_without_being_opened(tmp_path, capsys, monkeypatch):
    ds = plain_dataset(tmp_path / "ds", n=3)
    os.mkfifo(ds / "fifo.png")
    os.mkfifo(ds / "fifo.txt")
    monkeypatch.chdir(ds)  # a short path for bind()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("sock.png")
    expected = {"fifo.png": "special file (FIFO)", "sock.png": "special file (socket)"}
    try:
        os.mknod(ds / "dev.png", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
        expected["dev.png"] = "special file (character device)"
    except (PermissionError, OSError):
        pass  # no CAP_MKNOD here: FIFO and socket still cover "not a regular file"
    watch = _FifoWatch(ds / "fifo.png")
    try:
        scan = scan_dataset(ds)
        doc, out = _check(ds, capsys)
        res = _snapshot_and_fingerprint_agree(tmp_path, ds)
    finally:
        opened = watch.stop()
        sock.close()
    assert not opened, "the FIFO was opened"
    refused = _refused(scan)
    assert {k: refused[k] for k in expected} == expected and refused["fifo.txt"] == "special file (FIFO)"
    assert _unreadable(doc) == expected
    assert "note  " in out and "fifo.txt" in out
    assert res.info.manifest().height == 3


def test_read_capped_never_blocks_on_a_fifo_and_stops_at_the_cap(tmp_path):
    os.mkfifo(tmp_path / "f")
    watch = _FifoWatch(tmp_path / "f")  # unblocks a blocking open, so a regression fails, not hangs
    with pytest.raises(Refused, match=r"special file \(FIFO\)"):
        read_capped(tmp_path / "f")
    watch.stop()
    (tmp_path / "big").write_bytes(b"x" * 5000)
    assert read_capped(tmp_path / "big", 5000) == b"x" * 5000
    with pytest.raises(Refused, match=r"file too large"):
        read_capped(tmp_path / "big", 4999)


# --- huge files and absurd image sizes -----------------------------------------------------------

def test_huge_sparse_file_is_refused_without_reading_it(tmp_path, capsys):
    ds = plain_dataset(tmp_path / "ds", n=3)
    with open(ds / "huge.png", "wb") as f:
        f.truncate(2 * 1024 ** 3)  # 2 GiB, sparse: no disk used, but a whole read would take 2 GiB
    with open(ds / "huge.txt", "wb") as f:
        f.truncate(1024 ** 3)
    tracemalloc.start()
    try:
        scan = scan_dataset(ds)
        res = _snapshot_and_fingerprint_agree(tmp_path, ds)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 ** 2, peak
    refused = _refused(scan)
    assert refused["huge.png"] == "file too large (2.0 GiB > 256.0 MiB cap)"
    assert refused["huge.txt"].startswith("file too large (1.0 GiB")
    assert res.info.manifest().height == 3 and "huge.png" not in res.info.files
    doc, out = _check(ds, capsys)
    assert _unreadable(doc) == {"huge.png": "file too large (2.0 GiB > 256.0 MiB cap)"}


def test_the_size_cap_is_configurable(tmp_path, capsys):
    ds = plain_dataset(tmp_path / "ds", n=3)
    png(ds / "big.png", 7, size=256)  # a few KiB of noise-free rectangles, still larger than the rest
    size = (ds / "big.png").stat().st_size
    cap = max((ds / f"img_00{i}.png").stat().st_size for i in range(3)) + 1
    assert size > cap
    scan = scan_dataset(ds, max_file_bytes=cap)
    assert _refused(scan)["big.png"].startswith("file too large")
    assert scan_dataset(ds).refused == []
    doc, _ = _check(ds, capsys, "--max-file-mb", str(cap / 1024 / 1024))
    assert list(_unreadable(doc)) == ["big.png"]
    assert main(["check-dataset", str(ds), "--max-file-mb", "0"]) == 2
    assert "--max-file-mb" in capsys.readouterr().err


@pytest.mark.parametrize("pil_limit", ["default", "disabled"])
def test_image_declaring_absurd_size_is_not_decoded(tmp_path, capsys, monkeypatch, pil_limit):
    from PIL import Image

    if pil_limit == "disabled":  # a library may switch PIL's own guard off; ours still holds
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    ds = plain_dataset(tmp_path / "ds", n=3)
    bomb_png(ds / "bomb.png", 100_000, 100_000)  # 10 gigapixels: ~30 GB if decoded
    bomb_png(ds / "wide.png", 10_000, 9_000)  # just over the 89.5 Mpx limit (PIL only warns here)
    scan = scan_dataset(ds)
    errors = dict(scan.frame.filter(scan.frame["image_error"].is_not_null()).select("path", "image_error").rows())
    assert set(errors) == {"bomb.png", "wide.png"}  # PIL refuses the first itself when its guard is on
    assert errors["bomb.png"] in ("decompression-bomb size (100000 x 100000 pixels)",
                                  "decompression-bomb size (10000000000 pixels)")
    assert errors["wide.png"] == "decompression-bomb size (10000 x 9000 pixels)"
    doc, _ = _check(ds, capsys)
    assert set(_unreadable(doc)) == {"bomb.png", "wide.png"}


# --- symlinks out of the root --------------------------------------------------------------------

def test_symlinks_out_of_the_root_are_not_followed(tmp_path, capsys):
    ds = plain_dataset(tmp_path / "ds", n=3)
    outside = png(tmp_path / "outside" / "secret.png", 9)
    (tmp_path / "outside" / "secret.txt").write_text("secret caption")
    os.symlink(outside, ds / "evil.png")
    os.symlink(tmp_path / "outside" / "secret.txt", ds / "evil.txt")
    os.symlink(tmp_path / "outside", ds / "linked")
    scan = scan_dataset(ds)
    assert _refused(scan) == {k: "symlink leaves the dataset root" for k in ("evil.png", "evil.txt", "linked")}
    assert "secret caption" not in str(scan.frame["caption"].to_list())
    doc, out = _check(ds, capsys)
    assert _unreadable(doc) == {"evil.png": "symlink leaves the dataset root"}
    assert "note  3 file(s) refused, not read (symlink leaves the dataset root): evil.png, evil.txt, linked" in out


# --- lora-pipeline's own folders inside the dataset ----------------------------------------------

def test_storage_folder_inside_the_dataset_is_never_snapshotted(tmp_path, capsys):
    ds = plain_dataset(tmp_path / "ds", n=3)
    storage = ds / "storage"
    first = take_snapshot(storage, "d", ds)
    assert first.info.manifest().height == 3
    # what evaluation writes there later: renders with sidecars, reports, reviews
    png(storage / "renders" / "run" / "step-1" / "lora_trigger" / "0-11.png", 5)
    (storage / "renders" / "run" / "step-1" / "lora_trigger" / "0-11.txt").write_text("render")
    (storage / "reviews.jsonl").write_text("{}\n")
    res = _snapshot_and_fingerprint_agree(tmp_path / "unused", ds)
    assert res.snapshot_id == first.snapshot_id  # the storage's own files changed nothing
    assert take_snapshot(storage, "d", ds).snapshot_id == first.snapshot_id
    assert source_fingerprint(storage, "d", ds) == first.snapshot_id
    assert not any(k.startswith("storage/") for k in res.info.files)
    doc, out = _check(ds, capsys)
    assert doc["counts"]["images"] == 3 and doc["counts"]["excluded_folders"] == 1
    assert "note  storage/ left out of the dataset: it is a lora-pipeline storage folder" in out


def test_a_fresh_storage_inside_the_dataset_is_left_out_by_the_snapshot_itself(tmp_path):
    ds = plain_dataset(tmp_path / "ds", n=3)
    storage = ds / "store"
    png(storage / "renders" / "x.png", 5)  # no marker of a storage yet: only take_snapshot knows
    res = take_snapshot(storage, "d", ds)
    assert sorted(res.info.files) == sorted(p.name for p in ds.iterdir() if p.is_file())
    assert res.scan.excluded == ["store\tthe storage folder of this snapshot"]


def test_workspace_folders_inside_the_dataset_are_left_out(tmp_path, capsys, monkeypatch):
    ds = plain_dataset(tmp_path / "ds", n=3)
    ws = ds / "ws"  # a whole workspace inside: its config names its storage and runs
    ws.mkdir()
    (ws / "lora_pipeline.yaml").write_text("storage: st\ntraining_runs: rr\n")
    png(ws / "st" / "a.png", 4)
    png(ws / "rr" / "run1" / "sample.png", 5)
    pair(ws / "data", "kept", "a kept caption", 6)
    home = ds / "dh"
    png(home / "x.png", 8)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    elsewhere = ds / "runs_of_another_config"
    png(elsewhere / "run" / "s.png", 10)
    scan = scan_dataset(ds)
    paths = sorted(scan.frame["path"])
    assert "ws/data/kept.png" in paths and not any(p.startswith(("ws/st/", "ws/rr/", "dh/")) for p in paths)
    assert [e.split("\t")[0] for e in scan.excluded] == ["dh", "ws/rr", "ws/st"]
    # a config outside the dataset: its folders are registered (as the Dagster definitions do)
    monkeypatch.setattr(guard, "_PROTECTED", {})
    cfg = type("C", (), {"storage": tmp_path / "st", "training_runs": elsewhere,
                         "dagster_home": tmp_path / ".dagster"})()
    guard.protect_workspace(cfg)
    scan2 = scan_dataset(ds)
    assert "runs_of_another_config/run/s.png" in paths
    assert not any(p.startswith("runs_of_another_config/") for p in scan2.frame["path"])
    res = _snapshot_and_fingerprint_agree(tmp_path, ds)
    assert res.snapshot_id == scan2.content_id
    doc, out = _check(ds, capsys)
    assert "note  runs_of_another_config/ left out of the dataset: it is the configured training_runs folder" in out
    inp = CheckInput(scan2.frame, "d", refused_symlinks=scan2.refused, excluded=scan2.excluded)
    assert check_readable_images(inp) == [] and any("dh/ left out" in n for n in notes(inp))


def test_dagster_home_from_the_environment_is_left_out(tmp_path, monkeypatch):
    ds = plain_dataset(tmp_path / "ds", n=3)
    png(ds / "home" / "storage" / "x.png", 3)
    monkeypatch.setenv("DAGSTER_HOME", str(ds / "home"))
    scan = scan_dataset(ds)
    assert scan.excluded == ["home\tthe Dagster home"] and scan.frame.height == 3


def test_old_snapshot_refused_entries_still_read_as_symlinks(tmp_path):
    """Snapshots written before refused entries had reasons list plain paths: still symlinks out."""
    import polars as pl

    inp = CheckInput(pl.DataFrame(schema={"path": pl.String, "image_error": pl.String}), "d",
                     refused_symlinks=["old.png", "new.png\tsymlink loop"])
    (f,) = check_readable_images(inp)
    assert f.evidence["reasons"] == {"new.png": "symlink loop", "old.png": "symlink leaves the dataset root"}
