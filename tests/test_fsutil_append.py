"""fsutil.append_line: whole records from many processes at once, a torn tail ended before the next
record (once, however many appenders race), and a refused line leaving the file untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lora_pipeline.fsutil import append_line
from lora_pipeline.report.reviews import append_review, read_review_log

REPO = Path(__file__).resolve().parents[1]

WRITER = """
import sys
from lora_pipeline.report.reviews import append_review
root, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):  # notes of ~20 KB: far over PIPE_BUF, several pages per record
    append_review(root, "r1", None, "needs-work", f"{who}-{i} " + who * 20000, by=who)
"""


def test_reviews_from_many_processes_stay_whole(tmp_path):
    procs, per = 4, 15
    torn = b'{"at": "x", "deci'
    append_review(tmp_path, "r1", None, "accept", "before", by="t")
    with open(tmp_path / "reviews.jsonl", "ab") as f:
        f.write(torn)  # every writer sees it at first: only one of them may end it
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(w), str(per)], cwd=REPO)
               for w in range(procs)]
    assert [p.wait(timeout=300) for p in writers] == [0] * procs

    got = read_review_log(tmp_path)
    assert got.problems == ["line 2: torn or corrupt line"]
    notes = [r["note"] for r in got.reviews]
    assert len(notes) == 1 + procs * per
    for w in range(procs):
        mine = [n for n in notes if n.startswith(f"{w}-")]
        assert mine == [f"{w}-{i} " + str(w) * 20000 for i in range(per)]  # whole, and in order
    assert (tmp_path / "reviews.jsonl").read_bytes().count(b"\n") == 2 + procs * per


def test_append_line_ends_a_torn_tail_first(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_bytes(b'{"a": 1}\n{"b": ')
    append_line(log, b'{"c": 3}\n')
    append_line(log, b'{"d": 4}\n')
    assert log.read_bytes() == b'{"a": 1}\n{"b": \n{"c": 3}\n{"d": 4}\n'


def test_append_line_creates_the_file(tmp_path):
    log = tmp_path / "new.jsonl"
    append_line(log, b"{}\n")
    assert json.loads(log.read_text()) == {}


@pytest.mark.parametrize("line", [b"no newline", b"two\nlines\n", b""])
def test_append_line_refuses_anything_but_one_line(tmp_path, line):
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"kept\n")
    with pytest.raises(ValueError):
        append_line(log, line)
    assert log.read_bytes() == b"kept\n"
