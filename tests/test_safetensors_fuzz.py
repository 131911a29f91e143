"""Seeded fuzz of the safetensors header: a few hundred mutations of two small valid LoRA files (f32
with alphas, and fp8), each checked against the safetensors library itself.

For every mutant: our readers raise nothing but LoraFileError; whenever the library refuses the file
we refuse it too (our parser is at least as strict), so every file we accept the library accepts;
`lora-pipeline inspect` exits 0 or 2 with no traceback. Then run discovery and ingestion over a
training_runs folder full of the mutants never raise, and the good checkpoints beside them count.
"""

from __future__ import annotations

import json
import random
import re
import struct
import time

import numpy as np
import pytest
from safetensors import safe_open

from lora_pipeline.cli import main
from lora_pipeline.config import load_config
from lora_pipeline.lora.inspect import inspect_file
from lora_pipeline.lora.safetensors_file import LoraFileError, read_header, read_safetensors
from lora_pipeline.training.ingest import discover_runs, ingest_run
from lora_pipeline.training.scan import scan_runs
from tests import hostile_safetensors as H

SEED = 20260314
CASES = 300
# Replacements that aim at the rules: sizes, offsets, dtypes, JSON the two parsers read differently.
NUMBERS = [b"0", b"1", b"3", b"4", b"-1", b"-0", b"1.0", b"1e0", b"1e400", b"4294967296", b"18446744073709551615",
           b"18446744073709551616", b"9" * 30, b'"4"', b"null", b"true", b"[]", b"NaN", b"Infinity"]
WORDS = [b'"F8_E4M3"', b'"F8_E5M2"', b'"F8_E4M3FN"', b'"F4"', b'"C64"', b'"U64"', b'"f32"', b"{}", b"[0,0]",
         b'"\\ud800"', b'"__metadata__"', b'"dtype"', b'"shape"', b'"data_offsets"', b"5", b'{"a":[[[[]]]]}']


def _frame(header: bytes, body: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + body


def _parts(data: bytes) -> tuple[bytes, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return data[8 : 8 + n], data[8 + n :]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One mutation of the file: inside the JSON header (length prefix kept right, mostly), of the
    length prefix, or of the file's length."""
    head, body = _parts(data)
    kind = rng.choice(["flip", "byte", "number", "word", "delete", "insert", "shift", "prefix", "truncate",
                       "append", "number", "number"])
    h = bytearray(head)
    i = rng.randrange(len(h))
    spans = [m.span() for m in re.finditer(rb"\d+" if kind == "number" else rb'"[^"]*"', head)]
    entries = _entries(head) if kind == "shift" else []
    if kind == "flip" or (kind in ("number", "word") and not spans) or (kind == "shift" and not entries):
        h[i] ^= 1 << rng.randrange(8)
    elif kind == "byte":
        h[i] = rng.choice(b'{}[]",:0123456789-. \\\x00\xff') if rng.random() < 0.7 else rng.randrange(256)
    elif kind in ("number", "word"):
        a, b = rng.choice(spans)
        h[a:b] = rng.choice(NUMBERS if kind == "number" else WORDS)
    elif kind == "delete":
        del h[i : i + rng.randint(1, 4)]
    elif kind == "insert":
        h[i:i] = rng.choice([b",", b" ", b"0", b'"x":1,', b"]", b"}"])
    elif kind == "shift":  # one tensor's offsets moved: a gap, an overlap or a past-the-end tail
        d, keys = entries
        k = rng.choice(keys)
        d[k]["data_offsets"] = [o + rng.choice([-4, -1, 1, 4]) for o in d[k]["data_offsets"]]
        h = bytearray(json.dumps(d).encode())
    elif kind == "prefix":
        n = rng.choice([len(head) + rng.randint(-16, 16), rng.getrandbits(64), 100_000_001, 0, 2])
        return struct.pack("<Q", n % 2**64) + head + body
    elif kind == "truncate":
        return data[: rng.randrange(len(data))]
    else:
        return data + bytes(rng.randint(1, 16))
    return _frame(bytes(h) + b" " * (-len(h) % 8), body)


def _entries(head: bytes) -> tuple[dict, list[str]] | list:
    """The parsed header and its tensor names with integer offsets, or [] when there are none."""
    try:
        d = json.loads(head)
    except (ValueError, RecursionError):
        return []
    keys = [k for k, v in d.items() if isinstance(v, dict) and isinstance(v.get("data_offsets"), list)
            and all(isinstance(o, int) for o in v["data_offsets"])] if isinstance(d, dict) else []
    return (d, keys) if keys else []


def _library_accepts(path) -> bool:
    try:
        with safe_open(str(path), "np") as f:
            f.keys()
            f.metadata()
        return True
    except Exception:  # noqa: BLE001 - the library's refusals come as several exception types
        return False


def _ours(path) -> str | None:
    """None when all our readers accept the file, else the one-line LoraFileError (any other
    exception fails the test)."""
    errors = []
    for read in (read_header, read_safetensors, inspect_file):
        try:
            read(path)
        except LoraFileError as e:
            assert "\n" not in str(e) and str(path) in str(e), str(e)
            errors.append(str(e))
    assert len(errors) in (0, 3), errors  # header-only and full reads agree
    return errors[0] if errors else None


def _small_lora() -> bytes:
    from safetensors.numpy import save

    rng = np.random.default_rng(0)
    t = {"lora_unet_b_attn2_to_k.lora_down.weight": rng.standard_normal((2, 4)).astype(np.float32),
         "lora_unet_b_attn2_to_k.lora_up.weight": rng.standard_normal((4, 2)).astype(np.float32),
         "lora_unet_b_attn2_to_k.alpha": np.array(1.0, np.float32)}
    return save(t, metadata={"ss_network_dim": "2", "ss_steps": "100"})


@pytest.fixture(scope="module")
def mutants(tmp_path_factory):
    """(path, our error or None, library accepts) for every mutant, written once."""
    d = tmp_path_factory.mktemp("fuzz")
    rng = random.Random(SEED)
    seeds = [_small_lora(), H.fp8_bytes()]
    out = []
    for i in range(CASES):
        data = mutate(rng.choice(seeds), rng)
        if rng.random() < 0.25:  # a second mutation now and then
            data = mutate(data, rng) if len(data) > 16 and _sane_prefix(data) else data
        f = d / f"m{i:04d}-step{i + 1:08d}.safetensors"
        f.write_bytes(data)
        out.append((f, _ours(f), _library_accepts(f)))
    return out


def _sane_prefix(data: bytes) -> bool:
    (n,) = struct.unpack("<Q", data[:8])
    try:
        json.loads(data[8 : 8 + n])
    except (ValueError, RecursionError):
        return False
    return 8 + n <= len(data)


def test_fuzzed_headers_raise_only_lora_file_error_and_are_as_strict_as_the_library(mutants):
    accepted = [f for f, err, _lib in mutants if err is None]
    too_lax = [(f.name, f.read_bytes()[:200]) for f, err, lib in mutants if err is None and not lib]
    assert not too_lax, too_lax
    # the fuzz reaches both sides: files both accept, and files refused for many different reasons
    assert 10 <= len(accepted) <= CASES - 100, len(accepted)
    reasons = {err.split(": ", 1)[1][:25] for _f, err, _lib in mutants if err}
    assert len(reasons) >= 10, reasons


def test_fuzzed_files_through_the_cli(mutants, capsys):
    for f, err, _lib in mutants:
        code = main(["inspect", str(f)])
        out, stderr = capsys.readouterr()
        assert "Traceback" not in out + stderr
        if err is None:
            assert code == 0 and "key format:" in out, (f.name, stderr)
        else:
            assert code == 2 and stderr == f"error: {err}\n", (f.name, code, stderr)


def test_run_discovery_over_fuzzed_files_never_raises(mutants, tmp_path):
    runs = tmp_path / "runs"
    (runs / "fuzzed").mkdir(parents=True)
    for f, _err, _lib in mutants:
        (runs / "fuzzed" / f.name).write_bytes(f.read_bytes())
    H.write(runs / "fuzzed" / "good-step99999999.safetensors", _small_lora())
    H.write(runs / "good" / "lora-step00000010.safetensors", H.lora_bytes())
    (tmp_path / "lora_pipeline.yaml").write_text("storage: storage\ntraining_runs: runs\n")
    config = load_config(tmp_path / "lora_pipeline.yaml")
    later = time.time() + 3600  # every file settled
    scans = {s.run_id: s for s in scan_runs(config, now=later)}
    assert [c.checkpoint_id for c in scans["good"].checkpoints] == ["step-00000010"]
    ready = {c.checkpoint_id for c in scans["fuzzed"].checkpoints}
    assert "step-99999999" in ready
    record = ingest_run(runs / "fuzzed", config, now=later).record
    ids = {c.checkpoint_id for c in record.checkpoints}
    assert "step-99999999" in ids and ready <= ids
    accepted = {f.name for f, err, _lib in mutants if err is None}
    refused = {f.name for f, err, _lib in mutants if err is not None}
    assert {f"step-{n.split('-step')[1][:8]}" for n in accepted} <= ids
    invalid = {f.evidence["file"] for f in record.findings if f.code == "RUNTIME.LORA_INVALID"}
    assert refused <= invalid
    assert all("\n" not in f.message for f in record.findings)
    assert {r.run_id for r in discover_runs(config)} == {"fuzzed", "good"}
