"""The one render-manifest schema, checked two ways: `manifest.passes_schema` (every column and check in
one polars pass, the common case) must never pass what pandera fails. Each check of the schema has a
planted violation here; a check added to the schema without one fails the coverage test."""

from __future__ import annotations

import copy
import json

import pandera.polars as pa
import pytest

from lora_pipeline.render import manifest
from lora_pipeline.render.manifest import RenderManifestSchema, manifests_frame, passes_schema


def _lora_arm(ms):
    return next(m for m in ms if m["arm"] == "lora_trigger")


def _set(key, value, pick=lambda ms: ms[0]):
    def plant(ms):
        pick(ms)[key] = value
    return plant


def _base(key, value):
    def plant(ms):
        ms[0]["base_model"] = dict(ms[0]["base_model"], **{key: value})
    return plant


# "<check name>:<column>" (a column's own check), "<check name>" (a dataframe check) or what is planted.
VIOLATIONS = {
    "equal_to:schema_version": _set("schema_version", 2),
    "isin:arm": _set("arm", "sideways", _lora_arm),
    "greater_than_or_equal_to:prompt_index": _set("prompt_index", -1),
    "str_length:base_model_sha256": _base("sha256", "abc"),
    "greater_than:width": _set("width", 0),
    "greater_than:height": _set("height", 0),
    "greater_than:steps": _set("steps", 0),
    "isin:dtype": _set("dtype", "int8"),
    "lora_facts_on_lora_arms": lambda ms: _lora_arm(ms).update(lora=None),
    "null in a non-nullable column": _set("run_id", None),
    "NaN in a non-nullable float column": _set("guidance_scale", float("nan")),
    "wrong dtype": _set("seed", {"not": "an int"}),  # the frame falls back to text columns
    "missing fact": lambda ms: ms[1].pop("seed"),
}


@pytest.fixture(scope="module")
def manifests(toy_base, tmp_path_factory):
    from tests.render.conftest import evaluate, make_lora

    tmp = tmp_path_factory.mktemp("manifests")
    r = evaluate(toy_base, "sd1", make_lora(toy_base, tmp / "clean.safetensors"), tmp / "out")
    return [json.loads((tmp / "out" / x["manifest"]).read_text()) for x in r.renders]


def test_real_manifests_pass_both_ways(manifests):
    df = manifests_frame(manifests)
    assert {m["arm"] for m in manifests} == {"base", "lora_no_trigger", "lora_trigger"}
    assert passes_schema(df)
    RenderManifestSchema.validate(df, lazy=True)  # pandera agrees
    assert manifest.validate_manifests(manifests, "s") == []


@pytest.mark.parametrize("name", sorted(VIOLATIONS))
def test_each_planted_violation_fails_the_fast_pass_and_pandera_names_it(manifests, name):
    broken = copy.deepcopy(manifests)
    VIOLATIONS[name](broken)
    df = manifests_frame(broken)
    assert not passes_schema(df)
    with pytest.raises(pa.errors.SchemaErrors):
        RenderManifestSchema.validate(df, lazy=True)
    [finding] = manifest.validate_manifests(broken, "s")
    assert finding.code == "PROVENANCE.INCOMPLETE" and finding.evidence["problems"]


def test_extra_or_missing_column_fails_the_fast_pass(manifests):
    df = manifests_frame(manifests)
    assert not passes_schema(df.drop("seed"))
    assert not passes_schema(df.with_columns(extra=df["seed"]))


def test_every_check_of_the_schema_has_a_planted_violation():
    schema = RenderManifestSchema.to_schema()
    checks = {f"{c.name}:{name}" for name, col in schema.columns.items() for c in col.checks}
    checks |= {c.name for c in schema.checks}
    assert checks <= set(VIOLATIONS), sorted(checks - set(VIOLATIONS))
