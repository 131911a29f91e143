"""`lora-pipeline check-dataset`: no config, no Dagster; exit 0 with findings; exit 2 for bad input."""

import json

from lora_pipeline.cli import main
from lora_pipeline.toy.dataset import write_toy_dataset
from tests.dataset.helpers import plain_dataset


def test_json_parses_and_carries_the_codes(tmp_path, capsys):
    ds = write_toy_dataset(tmp_path / "toy", n=8, size=48,
                           faults=("orphan_caption", "vague_caption", "respelled_trigger"))
    assert main(["check-dataset", str(ds), "--trigger", "sks_chair", "--resolution", "64", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["codes"] == ["DATASET.CAPTION_WITHOUT_IMAGE", "DATASET.LOW_RESOLUTION",
                            "DATASET.TOO_FEW_IMAGES", "DATASET.TRIGGER_INCONSISTENT",
                            "DATASET.VAGUE_CAPTIONS"]
    assert doc["verdict"] == "dataset_problem" and doc["counts"]["images"] == 8
    assert {f["code"] for f in doc["findings"]} == set(doc["codes"])


def test_text_output_and_exit_zero(tmp_path, capsys):
    ds = plain_dataset(tmp_path / "ds")
    assert main(["check-dataset", str(ds), "--resolution", "32"]) == 0
    out = capsys.readouterr().out
    assert "12 images" in out and "verdict: ok" in out and "trigger check was skipped" in out


def test_missing_empty_and_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["check-dataset", str(tmp_path / "missing")]) == 2
    assert main(["check-dataset", str(tmp_path)]) == 2
    assert main(["check-dataset", str(tmp_path), "--resolution", "zero"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "dataset folder not found" in err[0] and "no images found" in err[1] and "--resolution" in err[2]
