"""Session fixtures for the by-value tests: the toy bases (tests/conftest.py), every real-format file
built once, each evaluated once by the production path (tests/evaluation_helpers.py), and a table of
the verdicts printed at the end of the run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.evaluation_helpers import evaluate, facts_for
from tests.lora_files import builders as B
from tests.lora_files import builders_peft as P
from tests.lora_files.cases import CASES, PICKLES, TABLE


@pytest.fixture(scope="session")
def bases(toy_base, toy_sdxl_base) -> dict[str, Path]:
    return {"sd1": toy_base, "sdxl": toy_sdxl_base}


@pytest.fixture(scope="session")
def lora_files(tmp_path_factory, bases) -> dict[str, B.Built]:
    """Every file of CASES, built once per session."""
    d = tmp_path_factory.mktemp("lora-files")
    built: dict[str, B.Built] = {}
    for c in CASES:
        out = d / f"{c.name}.safetensors"
        src = built[c.source].path if c.source else bases[c.arch]
        built[c.name] = replace(c.build(src, out), name=c.name)
    return built


@pytest.fixture(scope="session")
def pickle_files(tmp_path_factory) -> dict[str, B.Built]:
    d = tmp_path_factory.mktemp("pickles")
    return {name: P.pickle_renamed(d / f"{name}.safetensors", d / f"{name}.UNPICKLED", legacy)
            for name, legacy in PICKLES.items()}


@dataclass
class Evaluated:
    built: B.Built
    base: Path
    result: Any
    out_dir: Path

    @property
    def trigger_pngs(self) -> list[Path]:
        return sorted((self.out_dir / "lora_trigger").glob("*.png"))


@pytest.fixture(scope="session")
def evaluated(tmp_path_factory, lora_files, pickle_files, bases) -> Callable[[str], Evaluated]:
    """name -> the production evaluation of that file (run once per session), with the run facts the
    file's writer declares (rank, alpha)."""
    root = tmp_path_factory.mktemp("evaluations")
    done: dict[str, Evaluated] = {}

    def get(name: str) -> Evaluated:
        if name not in done:
            built = lora_files.get(name) or pickle_files[name]
            base = bases[built.arch]
            facts = facts_for(base, built.arch, rank=built.rank, alpha=built.alpha)
            res = evaluate(base, built.arch, built.path, root / name, facts=facts)
            done[name] = Evaluated(built, base, res, root / name)
            TABLE[name] = {"format": built.fmt, "arch": built.arch, "verdict": res.verdict,
                           "codes": sorted({f.code for f in res.findings if f.severity == "error"}),
                           "lora_trigger_renders": len(done[name].trigger_pngs), "notes": built.notes}
        return done[name]

    return get


def pytest_terminal_summary(terminalreporter):
    if not TABLE:
        return
    tr = terminalreporter
    tr.section("LoRA files: production verdicts (tests/lora_files)")
    for name, row in TABLE.items():
        tr.write_line(f"{name:32s} {row['arch']:5s} {row['format']:18s} {row['verdict']:20s} "
                      f"renders={row['lora_trigger_renders']} errors={','.join(row['codes']) or '-'}")
        for key in ("match", "control"):
            if key in row:
                tr.write_line(f"{'':32s} {key}: {row[key]}")
