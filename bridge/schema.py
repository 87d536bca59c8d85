"""Flat elicitation schemas (what MCP lets a form ask for) and validation of answers.

MCP restricts `requestedSchema` to an object of primitive properties — string (optionally
with a format or an enum), number, integer, boolean, and enum arrays. Checking the schema
before anything is sent means a recipient never sees a form its client cannot render;
checking the answer means the caller never receives content its schema does not allow.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any, Final

_STRING_FORMATS: Final = {"email", "uri", "date", "date-time"}
_COMMON_KEYS: Final = {"type", "title", "description", "default"}
_ALLOWED_KEYS: Final = {
    "string": _COMMON_KEYS | {"minLength", "maxLength", "format", "enum", "enumNames", "oneOf"},
    "number": _COMMON_KEYS | {"minimum", "maximum"},
    "integer": _COMMON_KEYS | {"minimum", "maximum"},
    "boolean": _COMMON_KEYS,
    "array": _COMMON_KEYS | {"items", "minItems", "maxItems"},
}
_EMAIL: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_URI: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")


class SchemaError(ValueError):
    """The schema is not a flat elicitation schema; the message says where."""


class ContentError(ValueError):
    """An answer does not satisfy the request's schema; `errors` lists each problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def check_schema(schema: object) -> dict[str, Any]:
    """Return the schema if it is a valid flat elicitation schema, else raise SchemaError."""
    if not isinstance(schema, dict):
        raise SchemaError("schema must be a JSON object")
    if schema.get("type") != "object":
        raise SchemaError('schema.type must be "object"')
    unknown = set(schema) - {"type", "properties", "required", "title", "description", "$schema"}
    if unknown:
        raise SchemaError(f"schema has unsupported keys: {sorted(unknown)}")
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        raise SchemaError("schema.properties must be a non-empty object")
    for name, prop in props.items():
        _check_property(name, prop)
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise SchemaError("schema.required must be a list of property names")
    missing = [r for r in required if r not in props]
    if missing:
        raise SchemaError(f"schema.required names unknown properties: {missing}")
    return schema


def _check_property(name: str, prop: object) -> None:
    where = f"schema.properties.{name}"
    if not isinstance(prop, dict):
        raise SchemaError(f"{where} must be an object")
    kind = prop.get("type")
    if kind not in _ALLOWED_KEYS:
        raise SchemaError(
            f"{where}.type must be one of string, number, integer, boolean, array "
            "(nested objects are not allowed in elicitation)"
        )
    extra = set(prop) - _ALLOWED_KEYS[kind]
    if extra:
        raise SchemaError(f"{where} has unsupported keys: {sorted(extra)}")
    if kind == "string" and "format" in prop and prop["format"] not in _STRING_FORMATS:
        raise SchemaError(f"{where}.format must be one of {sorted(_STRING_FORMATS)}")
    if "enum" in prop and (not isinstance(prop["enum"], list) or not prop["enum"]):
        raise SchemaError(f"{where}.enum must be a non-empty list")
    if kind == "array":
        items = prop.get("items")
        if (
            not isinstance(items, dict)
            or items.get("type") != "string"
            or not (isinstance(items.get("enum"), list) or isinstance(items.get("anyOf"), list))
        ):
            raise SchemaError(f"{where}.items must be a string enum (multi-select)")


def check_content(schema: dict[str, Any], content: object) -> dict[str, Any]:
    """Return `content` if it satisfies `schema`, else raise ContentError listing every issue."""
    if not isinstance(content, dict):
        raise ContentError(["content must be an object"])
    props: dict[str, Any] = schema["properties"]
    errors = [f"{name}: unknown field" for name in content if name not in props]
    errors += [f"{name}: required" for name in schema.get("required", []) if name not in content]
    for name, value in content.items():
        if name in props:
            errors += [f"{name}: {e}" for e in _value_errors(props[name], value)]
    if errors:
        raise ContentError(errors)
    return content


def _value_errors(prop: dict[str, Any], value: object) -> list[str]:
    kind = prop["type"]
    if kind == "boolean":
        return [] if isinstance(value, bool) else ["must be true or false"]
    if kind in ("number", "integer"):
        return _number_errors(prop, value, integer=kind == "integer")
    if kind == "array":
        allowed = _enum_values(prop["items"])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return ["must be a list of strings"]
        return [f"{v!r} is not an allowed choice" for v in value if v not in allowed]
    return _string_errors(prop, value)


def _number_errors(prop: dict[str, Any], value: object, *, integer: bool) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ["must be a number"]
    if integer and not (isinstance(value, int) or float(value).is_integer()):
        return ["must be an integer"]
    errors = []
    if "minimum" in prop and value < prop["minimum"]:
        errors.append(f"must be >= {prop['minimum']}")
    if "maximum" in prop and value > prop["maximum"]:
        errors.append(f"must be <= {prop['maximum']}")
    return errors


def _string_errors(prop: dict[str, Any], value: object) -> list[str]:
    if not isinstance(value, str):
        return ["must be a string"]
    errors = []
    if "minLength" in prop and len(value) < prop["minLength"]:
        errors.append(f"must be at least {prop['minLength']} characters")
    if "maxLength" in prop and len(value) > prop["maxLength"]:
        errors.append(f"must be at most {prop['maxLength']} characters")
    allowed = _enum_values(prop)
    if allowed and value not in allowed:
        errors.append(f"{value!r} is not an allowed choice")
    fmt = prop.get("format")
    if fmt and not _format_ok(fmt, value):
        errors.append(f"is not a valid {fmt}")
    return errors


def _enum_values(prop: dict[str, Any]) -> set[str]:
    if isinstance(prop.get("enum"), list):
        return set(prop["enum"])
    options = prop.get("oneOf") or prop.get("anyOf") or []
    return {o["const"] for o in options if isinstance(o, dict) and "const" in o}


def _format_ok(fmt: str, value: str) -> bool:
    try:
        if fmt == "date":
            date.fromisoformat(value)
        elif fmt == "date-time":
            datetime.fromisoformat(value)
        elif fmt == "email":
            return bool(_EMAIL.match(value))
        elif fmt == "uri":
            return bool(_URI.match(value))
    except ValueError:
        return False
    return True
