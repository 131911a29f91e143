"""The dataset findings of an immutable snapshot are computed once per snapshot and settings
(dataset/findings_memo.py), for every report that shows them."""

from __future__ import annotations

import json

from lora_pipeline.dataset.checks import CheckInput, run_checks
from lora_pipeline.dataset.findings_memo import memo_dir, record_key, snapshot_findings
from lora_pipeline.dataset.snapshot import latest_snapshot
from lora_pipeline.dataset.snapshot_write import take_snapshot
from lora_pipeline.toy.dataset import write_toy_dataset

SETTINGS = {"trigger": "sks_chair", "resolution": 64, "min_images": 1, "min_distinct_caption_ratio": 0.5,
            "near_duplicate_distance": 4}


def test_findings_computed_once_per_snapshot_and_settings(tmp_path, toy_base):
    data = write_toy_dataset(tmp_path / "data", trigger="sks_chair", n=8, size=64,
                             faults=("orphan_caption", "vague_caption", "respelled_trigger"))
    storage = tmp_path / "storage"
    take_snapshot(storage, "products", data)
    snap = latest_snapshot(storage, "products")
    calls = []

    def compute(settings=SETTINGS):
        calls.append(1)
        return run_checks(CheckInput(snap.manifest(), "products", snap.orphan_captions, snap.refused_symlinks,
                                     tokenizer_base=toy_base, **settings))

    key = record_key("products", snap, SETTINGS, toy_base / "tokenizer")
    direct = [f.to_dict() for f in compute()]
    assert direct, "the toy dataset has planted faults"
    first = snapshot_findings(storage, key, compute)
    again = snapshot_findings(storage, key, compute)
    assert len(calls) == 2 and [f.to_dict() for f in first] == [f.to_dict() for f in again] == direct
    # Other settings (or another tokenizer) are another record.
    other = {**SETTINGS, "resolution": 1024}
    assert record_key("products", snap, other, toy_base / "tokenizer") != key
    assert record_key("products", snap, SETTINGS, None) != key
    # The record is what answers: a marked record comes back as it is.
    (path,) = memo_dir(storage).rglob(f"{key}.json")
    doc = json.loads(path.read_text())
    doc["findings"][0]["message"] = "from the record"
    path.write_text(json.dumps(doc))
    assert snapshot_findings(storage, key, compute)[0].message == "from the record" and len(calls) == 2
    # A damaged record is recomputed and written again.
    path.write_text("{not json")
    assert [f.to_dict() for f in snapshot_findings(storage, key, compute)] == direct and len(calls) == 3
    assert json.loads(path.read_text())["key"] == key
    # A storage where the record cannot be written: the findings, nothing kept.
    (tmp_path / "blocked").write_text("")
    assert [f.to_dict() for f in snapshot_findings(tmp_path / "blocked", key, compute)] == direct
