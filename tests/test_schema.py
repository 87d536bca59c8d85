"""Flat elicitation schemas and answer validation."""

from __future__ import annotations

import pytest

from bridge.schema import ContentError, SchemaError, check_content, check_schema

FORM = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 2, "maxLength": 5},
        "email": {"type": "string", "format": "email"},
        "when": {"type": "string", "format": "date"},
        "size": {"type": "string", "enum": ["s", "m", "l"]},
        "count": {"type": "integer", "minimum": 1, "maximum": 3},
        "ratio": {"type": "number"},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}},
    },
    "required": ["name"],
}


def test_valid_schema_and_content() -> None:
    assert check_schema(FORM) is FORM
    content = {
        "name": "ann",
        "email": "a@b.io",
        "when": "2026-11-23",
        "size": "m",
        "count": 2,
        "ratio": 0.5,
        "ok": True,
        "tags": ["a"],
    }
    assert check_content(FORM, content) == content


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ([], "must be a JSON object"),
        ({"type": "array"}, 'schema.type must be "object"'),
        ({"type": "object", "properties": {}}, "non-empty"),
        ({"type": "object", "properties": {"x": {"type": "object"}}}, "nested objects"),
        (
            {"type": "object", "properties": {"x": {"type": "string", "pattern": ".*"}}},
            "unsupported keys",
        ),
        ({"type": "object", "properties": {"x": {"type": "string", "format": "ipv4"}}}, "format"),
        (
            {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["y"]},
            "unknown properties",
        ),
    ],
)
def test_invalid_schemas_are_named(schema: object, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        check_schema(schema)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ({}, "name: required"),
        ({"name": "a"}, "name: must be at least 2 characters"),
        ({"name": "abcdef"}, "name: must be at most 5 characters"),
        ({"name": "ab", "email": "nope"}, "email: is not a valid email"),
        ({"name": "ab", "when": "2026-13-40"}, "when: is not a valid date"),
        ({"name": "ab", "size": "xl"}, "size: 'xl' is not an allowed choice"),
        ({"name": "ab", "count": 9}, "count: must be <= 3"),
        ({"name": "ab", "count": 1.5}, "count: must be an integer"),
        ({"name": "ab", "ratio": "1"}, "ratio: must be a number"),
        ({"name": "ab", "ok": 1}, "ok: must be true or false"),
        ({"name": "ab", "tags": ["c"]}, "tags: 'c' is not an allowed choice"),
        ({"name": "ab", "extra": 1}, "extra: unknown field"),
    ],
)
def test_invalid_content_lists_each_problem(content: dict, error: str) -> None:
    with pytest.raises(ContentError) as info:
        check_content(FORM, content)
    assert error in info.value.errors


# -- keyword types (issue 16.5) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("prop", "where"),
    [
        ({"type": "string", "minLength": "5"}, "minLength"),
        ({"type": "string", "minLength": True}, "minLength"),
        ({"type": "string", "maxLength": 1.5}, "maxLength"),
        ({"type": "number", "minimum": "zero"}, "minimum"),
        ({"type": "number", "maximum": float("nan")}, "maximum"),
        ({"type": "integer", "minimum": 0.5}, "minimum"),
        ({"type": "string", "enum": [["x"], {"y": 1}]}, "enum"),
        ({"type": "string", "enum": "abc"}, "enum"),
        ({"type": "string", "enum": ["a"], "enumNames": ["A", "B"]}, "enumNames"),
        ({"type": "string", "oneOf": [{"const": 1}]}, "oneOf"),
        ({"type": "array", "items": {"type": "string", "enum": [1]}}, "items.enum"),
        ({"type": "array", "items": {"type": "string", "enum": ["a"]}, "minItems": -1}, "minItems"),
        ({"type": "boolean", "default": "yes"}, "default"),
        ({"type": "string", "description": 5}, "description"),
        ({"type": ["string"]}, "type"),
    ],
)
def test_keyword_types_are_checked(prop: dict, where: str) -> None:
    with pytest.raises(SchemaError, match=where):
        check_schema({"type": "object", "properties": {"x": prop}})


def test_properties_are_capped() -> None:
    props = {f"p{i}": {"type": "string"} for i in range(51)}
    with pytest.raises(SchemaError, match="at most 50"):
        check_schema({"type": "object", "properties": props})


def test_well_typed_schemas_still_pass() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 10, "default": "x"},
            "level": {"type": "integer", "minimum": 0, "maximum": 5},
            "ok": {"type": "boolean", "default": False},
            "pick": {"type": "string", "enum": ["a", "b"], "enumNames": ["A", "B"]},
            "tags": {"type": "array", "items": {"type": "string", "enum": ["x", "y"]}},
        },
        "required": ["name"],
    }
    assert check_schema(schema) is schema
    assert check_content(schema, {"name": "abc", "level": 3, "tags": ["x"]})
