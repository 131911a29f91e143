"""`trace` on forged PNG chunks: real renders of the report world, their `lora_pipeline` chunk edited
(traversal ids, paths outside the roots, devices, /etc as base, another run's checkpoint, an unrecorded
seed, a run that does not exist, wrong JSON types). Each claim gets `unverifiable` or `mismatch`, never
`match`; there is no traceback; and, proved with an audit hook recording every `open` and directory
scan in the process, no file outside the configured roots is opened (the image itself aside)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import pytest

LAST = "step-00000006"
SOURCE = ("renders", "nan-loss", LAST, "lora_trigger", "0-11.png")
_RECORDING: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if (_RECORDING is not None and event in ("open", "os.scandir", "os.listdir") and args
            and isinstance(args[0], str | bytes | os.PathLike)):
        _RECORDING.append(os.path.abspath(os.fsdecode(args[0])))


sys.addaudithook(_audit)  # records only inside _traced()


def _roots(config, image: Path) -> list[Path]:
    paths = [config.storage, config.training_runs, image, *(d.path for d in config.datasets.values()),
             *config.base_models.values()]
    return [Path(os.path.realpath(p)) for p in paths]


def _in_thread(fn, timeout: float = 120):
    """fn() in a daemon thread: a walk that blocks (a FIFO, /dev/zero) fails the test instead of hanging it."""
    out: list = []
    th = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    th.start()
    th.join(timeout)
    assert not th.is_alive(), "trace blocked (it opened a FIFO or device?)"
    assert out, "trace raised (see the thread's traceback above)"
    return out[0]


def _traced(world, image: Path, config=None) -> tuple[dict, list[str]]:
    """trace_image, once to warm imports, then again recording every open and directory scan."""
    global _RECORDING
    from lora_pipeline.report.trace import format_trace, trace_image

    cfg = config or world.config
    _in_thread(lambda: trace_image(cfg, image))
    _RECORDING = []
    try:
        t = _in_thread(lambda: trace_image(cfg, image))
        format_trace(t)
    finally:
        opened, _RECORDING = _RECORDING, None
    roots = _roots(cfg, image)
    outside = [p for p in opened if not any(Path(os.path.realpath(p)).is_relative_to(r) for r in roots)]
    assert outside == [], f"opened outside the roots: {outside}"
    assert opened, "the audit hook recorded nothing: it would prove nothing"
    s = t["summary"]
    assert s["match"] + s["mismatch"] + s["unverifiable"] == len(t["checks"])
    assert s["match"] == sum(c["status"] == "ok" for c in t["checks"])
    assert all(c["reason"] for c in t["checks"] if c["status"] != "ok")
    return t, opened


def _forge(world, dest: Path, edit) -> Path:
    """A real render with its chunk edited (the parameters chunk and pixels kept)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    with Image.open(Path(world.config.storage).joinpath(*SOURCE)) as im:
        im.load()
        text, pixels = dict(im.text), im.copy()
    m = copy.deepcopy(json.loads(text["lora_pipeline"]))
    edited = edit(m)
    m = m if edited is None else edited
    info = PngInfo()
    info.add_text("parameters", text["parameters"])
    info.add_text("lora_pipeline", m if isinstance(m, str) else json.dumps(m))
    pixels.save(dest, format="PNG", pnginfo=info)
    return dest


def _status(t: dict, what: str) -> str:
    found = [c["status"] for c in t["checks"] if c["what"] == what]
    assert found, f"no check {what!r}: {[c['what'] for c in t['checks']]}"
    return found[0]


def _never_match(t: dict, *whats: str) -> None:
    for what in whats:
        assert all(c["status"] != "ok" for c in t["checks"] if c["what"].startswith(what)), what


def _set(**kv):
    def edit(m):
        for k, v in kv.items():
            obj = m
            *head, last = k.split(".")
            for h in head:
                obj = obj[h]
            obj[last] = v
    return edit


def test_forged_bytes_never_pass_as_the_recorded_render(world, tmp_path):
    t, _ = _traced(world, _forge(world, tmp_path / "f.png", _set(prompt="a photo of something else")))
    assert _status(t, "render file (as recorded by its evaluation)") == "mismatch"
    assert _status(t, "render settings (as recorded by its evaluation)") == "mismatch"
    assert _status(t, "render manifest (chunk vs stored sidecar)") == "mismatch"
    assert _status(t, "A1111 parameters chunk (vs the manifest)") == "mismatch"


def test_traversal_ids_load_nothing_outside_storage(world, tmp_path):
    storage = Path(world.config.storage)
    planted = tmp_path / "planted"
    planted.mkdir()
    record = json.loads((storage / "runs" / "nan-loss" / "run.json").read_text())
    for ck in record["checkpoints"]:
        ck["path"] = "/etc/passwd"
    (planted / "run.json").write_text(json.dumps(record))
    run_id = os.path.relpath(planted, storage / "runs")
    assert (storage / "runs" / run_id / "run.json").is_file()  # the old walk would have loaded it
    t, opened = _traced(world, _forge(world, tmp_path / "f.png", _set(run_id=run_id, checkpoint_id="../../../etc")))
    assert _status(t, "manifest field run_id") == "unverifiable"
    assert "malformed manifest (field run_id)" in next(c["reason"] for c in t["checks"]
                                                       if c["what"] == "manifest field run_id")
    assert _status(t, "manifest field checkpoint_id") == "unverifiable"
    assert "missing" in t["run"] and t["checkpoint"]["check"] is None
    assert not any("planted" in p or p.startswith("/etc") for p in opened)
    _never_match(t, "render", "checkpoint", "run record")


@pytest.mark.parametrize("path", ["/etc/passwd", "/dev/zero", "/etc"])
def test_paths_outside_the_roots_are_never_read(world, tmp_path, path):
    fifo = tmp_path / "outside.fifo"
    os.mkfifo(fifo)  # a sentinel outside every root: opening it would block
    edit = _set(**{"lora.path": path, "base_model.path": str(fifo) if path == "/etc" else path,
                   "base_model.name": "evil"})
    t, opened = _traced(world, _forge(world, tmp_path / "f.png", edit))
    assert _status(t, "base model") == "unverifiable" and "not a configured base_models entry" in t["base_model"]["check"]["reason"]
    assert _status(t, "checkpoint path (render manifest vs run record)") == "mismatch"
    assert not any(p.startswith(("/etc", "/dev")) or p == str(fifo) for p in opened)


def test_etc_as_the_path_of_a_configured_base_is_a_mismatch_and_not_walked(world, tmp_path):
    t, opened = _traced(world, _forge(world, tmp_path / "f.png", _set(**{"base_model.path": "/etc"})))
    check = t["base_model"]["check"]
    assert check["status"] == "mismatch" and "the render names /etc" in check["reason"]
    assert not any(p.startswith("/etc") for p in opened)


def test_another_runs_checkpoint_with_an_unrecorded_seed(world, tmp_path):
    # `clean` holds the same checkpoint bytes as nan-loss (both copies of one toy run): only the
    # recorded renders and paths can tell, and they must
    t, _ = _traced(world, _forge(world, tmp_path / "f.png", _set(run_id="clean", seed=999)))
    assert _status(t, "render recorded for this checkpoint") == "mismatch"
    assert _status(t, "render settings (as recorded by its evaluation)") == "unverifiable"
    assert _status(t, "checkpoint path (render manifest vs run record)") == "mismatch"
    assert _status(t, "render manifest (chunk vs stored sidecar)") == "missing"
    # fault-zero's checkpoint has other bytes: the render's checkpoint hash is not its record's
    t, _ = _traced(world, _forge(world, tmp_path / "g.png", _set(run_id="fault-zero")))
    assert _status(t, "checkpoint sha256 (render manifest vs run record)") == "mismatch"
    assert t["summary"]["mismatch"] >= 3


def test_a_run_that_does_not_exist_matches_nothing(world, tmp_path, capsys):
    from lora_pipeline.cli import main

    image = _forge(world, tmp_path / "f.png", _set(run_id="no-such-run"))
    t, _ = _traced(world, image)
    assert _status(t, "run record") == "unverifiable" and "no run 'no-such-run' in storage" in t["run"]["missing"]
    assert _status(t, "render recorded for this checkpoint") == "unverifiable"
    _never_match(t, "render file", "render settings", "render manifest", "checkpoint", "run record")
    assert main(["trace", str(image), "--config", str(world.config_path)]) == 0
    out = capsys.readouterr().out
    assert "match" in out and "UNVERIFIABLE run record: no run 'no-such-run'" in out
    assert f"{t['summary']['unverifiable']} unverifiable" in out


@pytest.mark.parametrize("field,value", [
    ("run_id", ["nan-loss"]), ("checkpoint_id", 6), ("seed", "11"), ("steps", "2"), ("prompt", None),
    ("guidance_scale", "5.0"), ("prompt_index", True), ("arm", "../lora_trigger"), ("base_model", None),
    ("base_model.sha256", 5), ("lora", "x"), ("lora.path", ["a"]), ("lora.sha256", None),
])
def test_wrong_json_types_are_unverifiable_not_a_traceback(world, tmp_path, capsys, field, value):
    from lora_pipeline.cli import main

    image = _forge(world, tmp_path / "f.png", _set(**{field: value}))
    t, _ = _traced(world, image)
    check = next(c for c in t["checks"] if c["what"] == f"manifest field {field}")
    assert check["status"] == "unverifiable" and f"malformed manifest (field {field})" in check["reason"]
    assert t["summary"]["unverifiable"] >= 1
    assert main(["trace", str(image), "--json", "--config", str(world.config_path)]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # one JSON document
    assert doc["summary"] == t["summary"] and "Traceback" not in captured.err


@pytest.mark.parametrize("chunk", ["[1, 2]", "{not json", '"a string"'])
def test_a_chunk_that_is_not_a_json_object_is_one_line_exit_2(world, tmp_path, capsys, chunk):
    from lora_pipeline.cli import main

    image = _forge(world, tmp_path / "f.png", lambda m: chunk)
    assert main(["trace", str(image), "--config", str(world.config_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lora_pipeline chunk" in err


def _copied_storage(world, tmp_path: Path):
    """The nan-loss render's storage, copied, so hostile edits touch no other test."""
    src, dst = Path(world.config.storage), tmp_path / "storage"
    for sub in ("runs/nan-loss", f"renders/nan-loss/{LAST}", "snapshots/products", "objects"):
        shutil.copytree(src / sub, dst / sub, symlinks=True)
    return dst


def test_a_fifo_as_the_recorded_checkpoint_file_is_unverifiable_not_a_hang(world, tmp_path):
    storage = _copied_storage(world, tmp_path)
    runs = tmp_path / "runs"
    (runs / "nan-loss").mkdir(parents=True)
    fifo = runs / "nan-loss" / "ck.safetensors"
    os.mkfifo(fifo)
    rec_path = storage / "runs" / "nan-loss" / "run.json"
    rec = json.loads(rec_path.read_text())
    next(c for c in rec["checkpoints"] if c["checkpoint_id"] == LAST)["path"] = str(fifo)
    rec_path.write_text(json.dumps(rec))
    cfg = world.config.model_copy(update={"storage": storage, "training_runs": runs})
    image = storage.joinpath(*SOURCE[:-1]) / SOURCE[-1]
    t, opened = _traced(world, image, cfg)
    check = t["checkpoint"]["check"]
    assert check["status"] == "unverifiable" and "a FIFO" in check["reason"]
    assert str(fifo) not in opened


def test_a_stored_object_overwritten_in_place_is_a_mismatch_and_a_finding(world, tmp_path, capsys):
    from lora_pipeline.cli import main
    from lora_pipeline.dataset.snapshot import object_location

    storage = _copied_storage(world, tmp_path)
    cfg = world.config.model_copy(update={"storage": storage})
    image = storage.joinpath(*SOURCE)
    t, _ = _traced(world, image, cfg)
    assert t["summary"]["mismatch"] == t["summary"]["unverifiable"] == 0
    rel, sha = next((f["relative_path"], f["sha256"]) for f in t["source_files"] if f["relative_path"].endswith(".png"))
    loc = object_location(storage, sha)  # in a pack: its file, offset and length
    os.chmod(loc.file, 0o644)
    with open(loc.file, "r+b") as f:  # same size, other bytes
        f.seek(loc.offset + loc.length - 8)
        f.write(bytes(8))
    obj = loc.display
    t, _ = _traced(world, image, cfg)
    stored = next(c for c in t["checks"] if c["what"] == f"stored copy of {rel}")
    assert stored["status"] == "mismatch" and stored["path"] == obj and stored["now"] != sha
    assert _status(t, f"source file {rel}") == "ok"  # the source is intact: only the stored copy changed
    assert t["summary"]["mismatch"] == 1
    (finding,) = t["findings"]
    assert finding["code"] == "PROVENANCE.INCOMPLETE" and obj in finding["message"]
    assert finding["evidence"]["objects"][0]["object"] == obj
    cfg_file = tmp_path / "lora_pipeline.yaml"
    cfg_file.write_text(world.config_path.read_text().replace("storage: storage", f"storage: {storage}")
                        .replace("training_runs: runs", f"training_runs: {world.root / 'runs'}")
                        .replace("path: data/", f"path: {world.root / 'data'}/"))
    assert main(["trace", str(image), "--config", str(cfg_file)]) == 0
    text = capsys.readouterr().out
    assert f"MISMATCH     stored copy of {rel}" in text and "PROVENANCE.INCOMPLETE" in text
