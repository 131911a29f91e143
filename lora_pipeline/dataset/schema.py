"""The manifest of a snapshot (CONTRACT section 3): one row per image of the dataset, validated by
one pandera polars model before it is written.

Columns: `path` (relative, POSIX), `sha256`, `size`, `width`, `height`, `caption` (text, null when
the image has no caption), `caption_sha256` (of the caption text, UTF-8), `phash` (64-bit
perceptual hash, 16 hex digits), plus `caption_path` (the caption file or metadata file it came
from), `repeats` (kohya `N_name` folders), `caption_decode_error` (the caption was not UTF-8 and
was read with replacement characters) and `image_error` (why the image could not be decoded).
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

HEX64 = r"^[0-9a-f]{64}$"
HEX16 = r"^[0-9a-f]{16}$"

MANIFEST_SCHEMA: dict[str, pl.DataType] = {
    "path": pl.String(),
    "sha256": pl.String(),
    "size": pl.Int64(),
    "width": pl.Int64(),
    "height": pl.Int64(),
    "caption": pl.String(),
    "caption_sha256": pl.String(),
    "phash": pl.String(),
    "caption_path": pl.String(),
    "repeats": pl.Int64(),
    "caption_decode_error": pl.Boolean(),
    "image_error": pl.String(),
}


class ManifestModel(pa.DataFrameModel):
    path: str = pa.Field(unique=True, str_length={"min_value": 1})
    sha256: str = pa.Field(str_matches=HEX64)
    size: int = pa.Field(ge=0)
    width: int = pa.Field(nullable=True, ge=1)
    height: int = pa.Field(nullable=True, ge=1)
    caption: str = pa.Field(nullable=True)
    caption_sha256: str = pa.Field(nullable=True, str_matches=HEX64)
    phash: str = pa.Field(nullable=True, str_matches=HEX16)
    caption_path: str = pa.Field(nullable=True)
    repeats: int = pa.Field(ge=1)
    caption_decode_error: bool
    image_error: str = pa.Field(nullable=True)

    class Config:
        strict = True
        coerce = False


def manifest_frame(rows: list[dict]) -> pl.DataFrame:
    """Rows (dicts with the columns above) -> a validated, path-sorted frame."""
    df = pl.DataFrame(rows, schema=MANIFEST_SCHEMA, orient="row") if rows else pl.DataFrame(
        schema=MANIFEST_SCHEMA)
    return validate_manifest(df.sort("path"))


def manifest_frame_from_columns(columns: dict[str, list]) -> pl.DataFrame:
    """The same frame as `manifest_frame`, from one list per column (cheaper than a dict per row)."""
    return validate_manifest(pl.DataFrame(columns, schema=MANIFEST_SCHEMA).sort("path"))


def validate_manifest(df: pl.DataFrame) -> pl.DataFrame:
    return ManifestModel.validate(df)
