"""The render manifest: every fact that produced an image, in the PNG and beside it.

Each PNG carries two text chunks (CONTRACT section 3): `parameters` (A1111 infotext) and
`lora_pipeline` (the manifest as JSON), and has a sidecar `<name>.json` holding the same manifest.
Both are written atomically. Manifests are validated by ONE pandera schema (`RenderManifestSchema`,
over the flattened manifest rows); a missing fact -> PROVENANCE.INCOMPLETE.

Manifest shape (schema_version 1):
    {schema_version, run_id, checkpoint_id, arm (the model mode), prompt_index, prompt_template,
     base_model {name, path, sha256, architecture}, lora null | {path, sha256, adapter_name, scale,
     alpha_source, applied (as_file | partial), short_hash (A1111/civitai)}, trigger, prompt, negative_prompt, token_counts {prompt: {tokenizer: n},
     negative_prompt: {...}}, seed, width, height, steps, guidance_scale, scheduler, dtype, device,
     generator ("cpu"), memory_settings, library_versions, phase_timings {pipeline_load_s,
     pipeline_load (cold|warm), lora_load_s, lora_verify_s, encode_s, text_encoder_s {encoder: s}, denoise_s,
     step_s[], decode_s},
     observed {steps_run, width, height, guidance_scale, scheduler}, sampler_a1111 {sampler,
     schedule_type, known (false: no A1111 name, the class name is written)}, pixels_sha256,
     dagster_run_id (null outside Dagster), created_at}
The save phase is timed outside the manifest (it is written inside the file being saved); it is in
evaluation.json and the logs.
"""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path
from typing import Any

import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData

from lora_pipeline.findings import Finding
from lora_pipeline.fsutil import atomic_write_bytes, atomic_write_json
from lora_pipeline.render import infotext, recent

SCHEMA_VERSION = 1
PARAMETERS_CHUNK = "parameters"
MANIFEST_CHUNK = "lora_pipeline"


class RenderManifestSchema(pa.DataFrameModel):
    """One row per render (flattened manifest). Nullable only where a fact may truly be absent."""

    schema_version: int = pa.Field(eq=SCHEMA_VERSION)
    run_id: str
    checkpoint_id: str
    arm: str = pa.Field(isin=["base", "lora_no_trigger", "lora_trigger"])
    prompt_index: int = pa.Field(ge=0)
    seed: int
    prompt: str
    negative_prompt: str
    trigger: str = pa.Field(nullable=True)
    token_counts: str  # JSON
    base_model_name: str
    base_model_path: str
    base_model_sha256: str = pa.Field(str_length={"min_value": 64, "max_value": 64})
    lora_path: str = pa.Field(nullable=True)
    lora_sha256: str = pa.Field(nullable=True)
    adapter_name: str = pa.Field(nullable=True)
    lora_scale: float = pa.Field(nullable=True)
    alpha_source: str = pa.Field(nullable=True)
    width: int = pa.Field(gt=0)
    height: int = pa.Field(gt=0)
    steps: int = pa.Field(gt=0)
    guidance_scale: float
    scheduler: str
    dtype: str = pa.Field(isin=["float32", "float16", "bfloat16"])
    device: str
    library_versions: str  # JSON
    phase_timings: str  # JSON
    pixels_sha256: str
    dagster_run_id: str = pa.Field(nullable=True)
    created_at: str

    @pa.dataframe_check
    def lora_facts_on_lora_arms(cls, data: PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(_lora_facts_on_lora_arms().alias("lora_facts"))

    class Config:
        strict = True
        coerce = False


def _lora_facts_on_lora_arms() -> pl.Expr:
    cols = ["lora_path", "lora_sha256", "adapter_name", "lora_scale", "alpha_source"]
    return (pl.col("arm") == "base") | pl.all_horizontal([pl.col(x).is_not_null() for x in cols])


_SCHEMA = RenderManifestSchema.to_schema()
_COLUMNS = list(_SCHEMA.columns)


def flatten(m: dict[str, Any]) -> dict[str, Any]:
    base, lora = m.get("base_model") or {}, m.get("lora") or {}
    row = {k: m.get(k) for k in _COLUMNS}
    row.update(base_model_name=base.get("name"), base_model_path=base.get("path"),
               base_model_sha256=base.get("sha256"), lora_path=lora.get("path"), lora_sha256=lora.get("sha256"),
               adapter_name=lora.get("adapter_name"), lora_scale=lora.get("scale"),
               alpha_source=lora.get("alpha_source"))
    for k in ("token_counts", "library_versions", "phase_timings"):
        row[k] = json.dumps(m[k], sort_keys=True) if isinstance(m.get(k), dict) else None
    if isinstance(row.get("guidance_scale"), int):
        row["guidance_scale"] = float(row["guidance_scale"])
    if isinstance(row.get("lora_scale"), int):
        row["lora_scale"] = float(row["lora_scale"])
    return row


_POLARS_TYPES = {int: pl.Int64, float: pl.Float64, str: pl.Utf8}


def manifests_frame(manifests: list[dict[str, Any]]) -> pl.DataFrame:
    fields = RenderManifestSchema.to_schema().columns
    schema = {name: _POLARS_TYPES.get(_py_type(col), pl.Utf8) for name, col in fields.items()}
    rows = [flatten(m) for m in manifests]
    data = {c: [r.get(c) for r in rows] for c in schema}
    try:
        return pl.DataFrame(data, schema=schema, strict=False)
    except (TypeError, ValueError, pl.exceptions.PolarsError):
        return pl.DataFrame({c: [str(v) if v is not None else None for v in vals] for c, vals in data.items()})


def _py_type(col: Any) -> type:
    s = str(col.dtype)
    return int if "Int" in s else float if "Float" in s else str


# The checks `passes_schema` evaluates itself, by pandera name: the predicate of pandera's builtin check
# of that name (pandera/backends/polars/builtin_checks.py), and our own dataframe check.
_COLUMN_CHECKS = {
    "equal_to": lambda c, st: c.eq(st["value"]),
    "isin": lambda c, st: c.is_in(sorted(st["allowed_values"])),
    "greater_than": lambda c, st: c.gt(st["min_value"]),
    "greater_than_or_equal_to": lambda c, st: c.ge(st["min_value"]),
    "str_length": lambda c, st: (c.str.len_chars().eq(st["exact_value"]) if st.get("exact_value") is not None else
                                 c.str.len_chars().is_between(st.get("min_value") or 0, st.get("max_value") or 2**62)),
}
_FRAME_CHECKS = {"lora_facts_on_lora_arms": _lora_facts_on_lora_arms}


def passes_schema(df: pl.DataFrame) -> bool:
    """True only when `df` passes every part of RenderManifestSchema (columns, dtypes, nulls, checks),
    evaluated in one polars pass; pandera collects each column and check on its own (~75 collects,
    30-70 ms a checkpoint). False when anything fails, or when the schema holds something not
    evaluated here: pandera then validates and says what failed."""
    try:
        if (not _SCHEMA.strict or _SCHEMA.coerce or _SCHEMA.unique or len(df.columns) != len(_SCHEMA.columns)
                or set(df.columns) != set(_SCHEMA.columns)):
            return False
        exprs = []
        for name, col in _SCHEMA.columns.items():
            if (col.regex or col.unique or col.coerce or not col.required or col.dtype is None
                    or not col.dtype.check(df.schema[name])):
                return False
            c = pl.col(name)
            if not col.nullable:  # pandera counts NaN as null in a float column
                exprs.append(c.is_not_null() & c.is_not_nan() if df.schema[name].is_float() else c.is_not_null())
            for check in col.checks:
                if check.name not in _COLUMN_CHECKS or check.element_wise or check.groupby is not None:
                    return False
                ok = _COLUMN_CHECKS[check.name](c, check.statistics)
                exprs.append(ok | c.is_null() if check.ignore_na else ok.fill_null(False))
        for check in _SCHEMA.checks:
            if check.name not in _FRAME_CHECKS or check.element_wise or check.groupby is not None:
                return False
            ok = _FRAME_CHECKS[check.name]()
            exprs.append(ok | ok.is_null() if check.ignore_na else ok.fill_null(False))
        row = df.select([e.all().alias(f"check_{i}") for i, e in enumerate(exprs)]).row(0)
        return all(v is True for v in row)
    except Exception:  # noqa: BLE001 - anything unexpected: pandera decides
        return False


def validate_manifests(manifests: list[dict[str, Any]], subject: str) -> list[Finding]:
    """PROVENANCE.INCOMPLETE for the renders whose manifest fails the schema (every failure listed)."""
    if not manifests:
        return []
    df = manifests_frame(manifests)
    if passes_schema(df):  # the common case, in one pass; pandera names what failed otherwise
        return []
    try:
        RenderManifestSchema.validate(df, lazy=True)
    except pa.errors.SchemaErrors as e:
        failures = e.failure_cases
        rows = failures.to_dicts() if hasattr(failures, "to_dicts") else []
        problems = sorted({f"{r.get('column') or r.get('check')}: {r.get('check')}" for r in rows})
        return [Finding("PROVENANCE.INCOMPLETE", subject,
                        f"{len(problems)} manifest fact(s) missing or malformed in the render manifests.",
                        {"problems": problems[:40], "renders": len(manifests)})]
    return []


def library_versions() -> dict[str, str]:
    """Python's and the rendering libraries' versions (read once per process: they cannot change in it)."""
    return dict(_library_versions())


@functools.cache
def _library_versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg, key in (("torch", "torch"), ("diffusers", "diffusers"), ("peft", "peft"),
                     ("transformers", "transformers"), ("lora-pipeline", "lora_pipeline")):
        try:
            out[key] = version(pkg)
        except PackageNotFoundError:
            out[key] = "unknown"
    return out


def png_bytes(image: Any, manifest: dict[str, Any]) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PARAMETERS_CHUNK, infotext.infotext(manifest))
    info.add_text(MANIFEST_CHUNK, json.dumps(manifest, sort_keys=True, ensure_ascii=True))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS = {b"tEXt", b"zTXt", b"iTXt"}


def _chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_text(encoded: bytes, texts: dict[str, str]) -> bytes:
    """`encoded` (a PNG we wrote) with its text chunks replaced by `texts`, placed before the first
    IDAT as PIL places them: the pixels are not encoded again (one PNG encode per image: the render
    cache's file gives the checkpoint's copy its pixels). tEXt when Latin-1, else iTXt (UTF-8)."""
    import struct

    if not encoded.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG")
    out, pos, placed = [_PNG_SIGNATURE], len(_PNG_SIGNATURE), False
    while pos + 8 <= len(encoded):
        (n,) = struct.unpack(">I", encoded[pos:pos + 4])
        kind, end = encoded[pos + 4:pos + 8], pos + 12 + n
        if end > len(encoded):
            raise ValueError("truncated PNG")
        if kind == b"IDAT" and not placed:
            for key, value in texts.items():
                try:
                    out.append(_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")))
                except UnicodeEncodeError:
                    out.append(_chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8")))
            placed = True
        if kind not in _TEXT_CHUNKS:
            out.append(encoded[pos:end])
        pos = end
    if not placed:
        raise ValueError("PNG without IDAT")
    return b"".join(out)


def write_render(png_path: Path, image: Any, manifest: dict[str, Any], encoded: bytes | None = None) -> Path:
    """PNG (with both chunks) and sidecar JSON, each atomically; the sidecar last. With `encoded` (the
    same pixels already PNG-encoded, e.g. the render cache's file) only the text chunks are written anew."""
    if encoded is not None:
        data = png_with_text(encoded, {PARAMETERS_CHUNK: infotext.infotext(manifest),
                                       MANIFEST_CHUNK: json.dumps(manifest, sort_keys=True, ensure_ascii=True)})
    else:
        data = png_bytes(image, manifest)
    atomic_write_bytes(png_path, data)
    atomic_write_json(png_path.with_suffix(".json"), manifest)
    recent.remember(png_path, image)  # the report's grid, next in this process, reads it from memory
    return png_path


def read_png_chunks(path: Path) -> dict[str, Any]:
    """{'parameters': str, 'lora_pipeline': dict} from a PNG (works on a copied file)."""
    from PIL import Image

    with Image.open(path) as im:
        text = dict(getattr(im, "text", {}) or {})
    out: dict[str, Any] = {"parameters": text.get(PARAMETERS_CHUNK)}
    raw = text.get(MANIFEST_CHUNK)
    out[MANIFEST_CHUNK] = json.loads(raw) if raw else None
    return out
