"""Run records keep paths relative to their roots (storage/runs/<run_id>/run.json), and readers resolve
them against the current config's roots: a moved or copied workspace reads its own run folders.
Records written before (absolute paths) still read, re-anchored the same way."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from lora_pipeline.findings import Finding
from lora_pipeline.training.record import CheckpointRecord, DatasetRef, Roots, RunRecord


def _workspace(root: Path) -> RunRecord:
    """A run folder with two checkpoint files (one an alias) under root/runs, a dataset under root/data."""
    folder = root / "runs" / "run-a"
    (folder / "checkpoints").mkdir(parents=True)
    (root / "data" / "products" / "10_chair").mkdir(parents=True)
    for name in ("a-1.safetensors", "a-2.safetensors", "final.safetensors"):
        (folder / "checkpoints" / name).write_bytes(b"weights")
    cks = [CheckpointRecord("step-00000001", str(folder / "checkpoints" / "a-1.safetensors"), "s1", 7, step=1),
           CheckpointRecord("step-00000002", str(folder / "checkpoints" / "a-2.safetensors"), "s2", 7, step=2,
                            aliases=[str(folder / "checkpoints" / "final.safetensors")]),
           CheckpointRecord("elsewhere", str(root.parent / "outside.safetensors"), "s3", 7)]
    findings = [Finding("TRAINING.CONFIG_UNKNOWN", str(folder), "m"),
                Finding("RUNTIME.LORA_INVALID", str(folder / "checkpoints" / "a-1.safetensors"), "m"),
                Finding("TRAINING.LOSS_DIVERGED", "run run-a", "m")]
    return RunRecord(run_id="run-a", folder=str(folder), format="native", checkpoints=cks, findings=findings,
                     dataset=DatasetRef(str(root / "data" / "products" / "10_chair"), "sid", "products", "10_chair"))


def _roots(root: Path) -> Roots:
    return Roots(root / "runs", {"products": root / "data" / "products"})


def _strings(doc) -> list[str]:
    if isinstance(doc, dict):
        return [s for v in doc.values() for s in _strings(v)]
    if isinstance(doc, list):
        return [s for v in doc for s in _strings(v)]
    return [doc] if isinstance(doc, str) else []


def _legacy(record: RunRecord) -> dict:
    """What run.json held before paths were relative: the dataclass as it is, absolute paths."""
    d = dataclasses.asdict(record)
    d["findings"] = [f.to_dict() for f in record.findings]
    del d["dataset"]["rel"]
    return d


def test_run_json_holds_paths_relative_to_their_roots(tmp_path):
    record = _workspace(tmp_path / "ws")
    doc = json.loads(json.dumps(record.to_dict()))
    assert doc["folder"] == "run-a"
    assert [c["path"] for c in doc["checkpoints"]] == [
        "checkpoints/a-1.safetensors", "checkpoints/a-2.safetensors", str(tmp_path / "outside.safetensors")]
    assert doc["checkpoints"][1]["aliases"] == ["checkpoints/final.safetensors"]
    assert [f["subject"] for f in doc["findings"]] == [".", "checkpoints/a-1.safetensors", "run run-a"]
    assert doc["dataset"] == {"path": None, "snapshot_id": "sid", "name": "products", "rel": "10_chair"}
    # no absolute path into the workspace, except the roots it was written under (a reader's fallback)
    under = doc.pop("paths")
    assert under["written_under"] == {"training_runs": str(tmp_path / "ws" / "runs"),
                                      "datasets": {"products": str(tmp_path / "ws" / "data" / "products")}}
    assert not [s for s in _strings(doc) if str(tmp_path / "ws") in s]


def test_same_place_reads_back_identical_with_or_without_roots(tmp_path):
    record = _workspace(tmp_path / "ws")
    doc = json.loads(json.dumps(record.to_dict()))
    assert RunRecord.from_dict(doc) == record
    assert RunRecord.from_dict(doc, _roots(tmp_path / "ws")) == record


@pytest.mark.parametrize("how", ["moved", "copied"])
@pytest.mark.parametrize("form", ["relative", "legacy absolute"])
def test_a_moved_or_copied_workspace_reads_its_own_files(tmp_path, how, form):
    old, new = tmp_path / "ws", tmp_path / "elsewhere" / "ws2"
    record = _workspace(old)
    doc = json.loads(json.dumps(record.to_dict() if form == "relative" else _legacy(record)))
    new.parent.mkdir()
    (shutil.move if how == "moved" else shutil.copytree)(old, new)
    got = RunRecord.from_dict(doc, _roots(new))
    folder = new / "runs" / "run-a"
    assert got.folder == str(folder)
    assert [c.path for c in got.checkpoints[:2]] == [str(folder / "checkpoints" / f"a-{i}.safetensors")
                                                      for i in (1, 2)]
    assert all(Path(c.path).is_file() for c in got.checkpoints[:2])
    assert got.checkpoints[1].aliases == [str(folder / "checkpoints" / "final.safetensors")]
    assert got.checkpoints[2].path == str(tmp_path / "outside.safetensors")  # outside the run: as it was
    assert [f.subject for f in got.findings] == [str(folder), got.checkpoints[0].path, "run run-a"]
    assert got.dataset.path == str(new / "data" / "products" / "10_chair")
    # Path.relative_to(the current run folder) is what failed before ("is not in the subpath of")
    assert Path(got.checkpoints[0].path).relative_to(folder).as_posix() == "checkpoints/a-1.safetensors"


def test_a_run_folder_outside_the_configured_runs_stays_where_it_is(tmp_path):
    """A record whose folder is not under training_runs (and no such run there): read as written."""
    record = _workspace(tmp_path / "ws")
    doc = record.to_dict()
    got = RunRecord.from_dict(doc, Roots(tmp_path / "other-runs", {}))
    assert got.folder == record.folder and got.checkpoints[0].path == record.checkpoints[0].path


@pytest.mark.parametrize("field,value", [
    ("folder", "../escape"), ("folder", "/abs/olute"), ("checkpoint", "../../etc/passwd"),
    ("subject", "../x"), ("subjects", 99), ("dataset", "../../etc"),
])
def test_a_relative_path_that_leaves_its_root_is_refused(tmp_path, field, value):
    doc = _workspace(tmp_path / "ws").to_dict()
    if field == "folder":
        doc["folder"] = value
    elif field == "checkpoint":
        doc["checkpoints"][0]["path"] = value
    elif field == "subject":
        doc["findings"][1]["subject"] = value
    elif field == "subjects":
        doc["paths"]["subjects"] = [value]
    else:
        doc["dataset"]["rel"] = value
    with pytest.raises(ValueError, match="not a path inside its root|no finding"):
        RunRecord.from_dict(doc, _roots(tmp_path / "ws"))


def test_a_hostile_record_is_a_one_line_error_for_its_readers(tmp_path):
    from lora_pipeline.config import load_config
    from lora_pipeline.render.from_record import EvaluationSetupError, inputs_for
    from lora_pipeline.storage import Storage
    from lora_pipeline.training.ingest import IngestError, load_run_record

    (tmp_path / "lora_pipeline.yaml").write_text("storage: storage\ntraining_runs: runs\n")
    config = load_config(tmp_path / "lora_pipeline.yaml")
    doc = _workspace(tmp_path).to_dict()
    doc["checkpoints"][0]["path"] = "../../../etc/passwd"
    dest = Storage(config.storage).run_record("run-a")
    dest.parent.mkdir(parents=True)
    dest.write_text(json.dumps(doc))
    with pytest.raises(IngestError, match=r"run\.json: unreadable run record .*not a path inside its root"):
        load_run_record(config.storage, "run-a")
    with pytest.raises(EvaluationSetupError) as e:
        inputs_for(config, "run-a", "step-00000001", "cpu", "float32")
    assert str(dest) in str(e.value) and "\n" not in str(e.value)
