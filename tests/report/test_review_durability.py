"""`review` on a full disk, on a log with a torn tail, and from many processes at once: every record
is whole or absent, a failed write exits 1 with its cause in one line, and the reader keeps every
whole record around a torn one. The full disk is a real write failure: the real CLI in a subprocess
whose file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes the kernel refuse writes past a size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_pipeline.cli import main
from lora_pipeline.fsutil import atomic_write_json
from lora_pipeline.report.reviews import read_review_log, read_reviews
from lora_pipeline.storage import Storage
from lora_pipeline.training.record import CheckpointRecord, RunRecord

REPO = Path(__file__).resolve().parents[2]

# The real CLI, its modules imported first, then writes past argv[1] bytes fail (EFBIG).
LIMITED_CLI = """
import resource, signal, sys
import lora_pipeline.cli, lora_pipeline.config, lora_pipeline.report.reviews, lora_pipeline.training.ingest
limit = int(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.exit(lora_pipeline.cli.main(sys.argv[2:]))
"""


@pytest.fixture
def workspace(tmp_path) -> tuple[Path, Path]:
    """A config whose storage holds one ingested run `r1` with checkpoint step-00000010."""
    cfg = tmp_path / "lora_pipeline.yaml"
    cfg.write_text("storage: store\ntraining_runs: runs\n")
    store = tmp_path / "store"
    record = RunRecord(run_id="r1", folder=str(tmp_path / "runs" / "r1"), format="native",
                       checkpoints=[CheckpointRecord("step-00000010", str(tmp_path / "x.safetensors"), "0" * 64, 1, 10)])
    atomic_write_json(Storage(store).run_record("r1"), {"schema_version": 1, **record.to_dict()})
    return cfg, store


def _review(cfg: Path, note: str, *extra: str) -> list[str]:
    return ["review", "r1", "--decision", "reject", "--note", note, "--by", "tester", "--config", str(cfg), *extra]


def _limited(limit: int, argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", LIMITED_CLI, str(limit), *argv], capture_output=True, text=True,
                          timeout=120, env=env, cwd=REPO)


@pytest.mark.parametrize("room", [0, 25], ids=["no-room", "room-for-part-of-the-line"])
def test_review_on_a_full_disk_exits_1_with_the_cause_and_leaves_the_log_whole(workspace, capsys, room):
    cfg, store = workspace
    log = Storage(store).reviews
    assert main(_review(cfg, "first")) == 0
    before = log.read_bytes()

    res = _limited(len(before) + room, _review(cfg, "lost on a full disk"))

    assert res.returncode == 1, res.stderr
    err = res.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "File too large" in err and str(log) in err and "not recorded" in err
    assert "recorded:" not in res.stdout
    assert log.read_bytes() == before  # a short write (room > 0) was taken back, not left torn

    assert main(_review(cfg, "after the disk was freed", "--checkpoint", "step-00000010")) == 0
    got = read_review_log(store)
    assert [r["note"] for r in got.reviews] == ["first", "after the disk was freed"] and got.problems == []
    assert "warning" not in capsys.readouterr().err


def test_review_after_a_torn_tail_is_appended_whole_and_every_whole_record_reads_back(workspace, capsys):
    cfg, store = workspace
    assert main(_review(cfg, "one")) == 0
    assert main(_review(cfg, "two")) == 0
    log = Storage(store).reviews
    whole = log.read_bytes()
    torn = b'{"at": "2024-01-01T00:00:00+00:00", "by": "crashed", "checkpoint_id": null, "deci'
    with open(log, "ab") as f:  # what a crash or a full disk in an older writer leaves behind
        f.write(torn)
    capsys.readouterr()

    assert main(_review(cfg, "three")) == 0

    out = capsys.readouterr()
    assert out.out.startswith("recorded:")
    assert "warning:" in out.err and "line 3" in out.err and out.err.count("\n") == 1
    data = log.read_bytes()
    assert data.startswith(whole + torn + b"\n")  # the torn tail was ended, not joined
    got = read_review_log(store)
    assert [r["note"] for r in got.reviews] == ["one", "two", "three"]
    assert got.problems == ["line 3: torn or corrupt line"]
    assert [r["note"] for r in read_reviews(store, "r1")] == ["one", "two", "three"]


def test_a_record_glued_onto_a_torn_one_by_an_older_writer_is_recovered(tmp_path):
    log = Storage(tmp_path).reviews
    rec = {"at": "2024-01-02T00:00:00+00:00", "by": "b", "checkpoint_id": None, "decision": "accept",
           "note": "glued {but whole}", "run_id": "r1", "schema_version": 1}
    first = dict(rec, note="first")
    log.write_text(json.dumps(first) + "\n" + '{"at": "2024-01-01", "by": "a", "no' + json.dumps(rec) + "\n"
                   + "not json at all\n" + json.dumps({"some": "other record"}) + "\n" + json.dumps(first) + "\n")
    got = read_review_log(tmp_path)
    assert [r["note"] for r in got.reviews] == ["first", "glued {but whole}", "first"]
    assert got.problems == ["line 2: torn or corrupt line, the whole record after it recovered",
                            "line 3: torn or corrupt line", "line 4: not a review"]


def test_line_separators_inside_a_note_do_not_split_the_record(workspace):
    cfg, store = workspace
    note = "colour drift\u2028second line\x85third\rfourth"
    assert main(_review(cfg, note)) == 0
    got = read_review_log(store)
    assert [r["note"] for r in got.reviews] == [note] and got.problems == []
