"""Flat elicitation schemas (what MCP lets a form ask for) and validation of answers.

MCP restricts `requestedSchema` to an object of primitive properties — string (optionally
with a format or an enum), number, integer, boolean, and enum arrays. Checking the schema
before anything is sent means a recipient never sees a form its client cannot render;
checking the answer means the caller never receives content its schema does not allow.
"""

from __future__ import annotations

import math
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


MAX_PROPERTIES: Final = 50
MAX_ENUM: Final = 500
MAX_TEXT: Final = 1000  # a title, description, enum value or property name


def check_schema(schema: object) -> dict[str, Any]:
    """Return the schema if it is a valid flat elicitation schema, else raise SchemaError.

    Every keyword's type is checked here, once, at the ask: a schema that passes can be
    rendered by the recipient's client and used by `check_content` without a type error
    (``minLength: "5"`` or ``enum: [["x"]]`` would otherwise surface only when answering).
    """
    if not isinstance(schema, dict):
        raise SchemaError("schema must be a JSON object")
    if schema.get("type") != "object":
        raise SchemaError('schema.type must be "object"')
    unknown = set(schema) - {"type", "properties", "required", "title", "description", "$schema"}
    if unknown:
        raise SchemaError(f"schema has unsupported keys: {sorted(unknown)}")
    for key in ("title", "description", "$schema"):
        _text(schema, key, "schema")
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        raise SchemaError("schema.properties must be a non-empty object")
    if len(props) > MAX_PROPERTIES:
        raise SchemaError(f"schema.properties has {len(props)} entries; at most {MAX_PROPERTIES}")
    for name, prop in props.items():
        if not name or len(name) > 64 or not name.isprintable():
            raise SchemaError(f"schema.properties: {name[:64]!r} is not a usable property name")
        _check_property(name, prop)
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise SchemaError("schema.required must be a list of property names")
    missing = [r for r in required if r not in props]
    if missing:
        raise SchemaError(f"schema.required names unknown properties: {missing}")
    return schema


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)  # type: ignore[arg-type]


def _text(obj: dict[str, Any], key: str, where: str) -> None:
    if key in obj and not (isinstance(obj[key], str) and len(obj[key]) <= MAX_TEXT):
        raise SchemaError(f"{where}.{key} must be a string of at most {MAX_TEXT} characters")


def _bounds(prop: dict[str, Any], low: str, high: str, where: str, *, counts: bool) -> None:
    """`low`/`high` of the right type (non-negative integers for lengths and counts,
    finite numbers otherwise) and in order."""
    for key in (low, high):
        if key not in prop:
            continue
        value = prop[key]
        ok = (_is_int(value) and value >= 0) if counts else _is_number(value)
        if not ok:
            kind = "a non-negative integer" if counts else "a number"
            raise SchemaError(f"{where}.{key} must be {kind}")
    if low in prop and high in prop and prop[low] > prop[high]:
        raise SchemaError(f"{where}.{low} must not exceed {high}")


def _strings(value: object, where: str) -> list[str]:
    if (
        not isinstance(value, list)
        or not value
        or len(value) > MAX_ENUM
        or not all(isinstance(v, str) and len(v) <= MAX_TEXT for v in value)
    ):
        raise SchemaError(f"{where} must be a non-empty list of at most {MAX_ENUM} strings")
    return value


def _options(value: object, where: str) -> None:
    """`oneOf` / `anyOf` choices: [{"const": "...", "title": "..."}, …]."""
    if not isinstance(value, list) or not value or len(value) > MAX_ENUM:
        raise SchemaError(f"{where} must be a non-empty list of at most {MAX_ENUM} choices")
    for i, option in enumerate(value):
        if (
            not isinstance(option, dict)
            or set(option) - {"const", "title"}
            or not isinstance(option.get("const"), str)
        ):
            raise SchemaError(f'{where}[{i}] must be {{"const": string, "title": string}}')
        _text(option, "title", f"{where}[{i}]")


def _check_property(name: str, prop: object) -> None:
    where = f"schema.properties.{name}"
    if not isinstance(prop, dict):
        raise SchemaError(f"{where} must be an object")
    kind = prop.get("type")
    if not isinstance(kind, str) or kind not in _ALLOWED_KEYS:
        raise SchemaError(
            f"{where}.type must be one of string, number, integer, boolean, array "
            "(nested objects are not allowed in elicitation)"
        )
    extra = set(prop) - _ALLOWED_KEYS[kind]
    if extra:
        raise SchemaError(f"{where} has unsupported keys: {sorted(extra)}")
    _text(prop, "title", where)
    _text(prop, "description", where)
    if kind == "string":
        _check_string(prop, where)
    elif kind in ("number", "integer"):
        _bounds(prop, "minimum", "maximum", where, counts=False)
        if kind == "integer":
            for key in ("minimum", "maximum"):
                if key in prop and not float(prop[key]).is_integer():
                    raise SchemaError(f"{where}.{key} must be an integer")
    elif kind == "array":
        _bounds(prop, "minItems", "maxItems", where, counts=True)
        items = prop.get("items")
        if (
            not isinstance(items, dict)
            or items.get("type") != "string"
            or set(items) - {"type", "enum", "anyOf"}
            or ("enum" in items) == ("anyOf" in items)
        ):
            raise SchemaError(f"{where}.items must be a string enum (multi-select)")
        if "enum" in items:
            _strings(items["enum"], f"{where}.items.enum")
        else:
            _options(items["anyOf"], f"{where}.items.anyOf")
    if "default" in prop and _value_errors(prop, prop["default"]):
        raise SchemaError(f"{where}.default does not match the property's own type")


def _check_string(prop: dict[str, Any], where: str) -> None:
    _bounds(prop, "minLength", "maxLength", where, counts=True)
    if "format" in prop and prop["format"] not in _STRING_FORMATS:
        raise SchemaError(f"{where}.format must be one of {sorted(_STRING_FORMATS)}")
    if "enum" in prop:
        values = _strings(prop["enum"], f"{where}.enum")
        if "enumNames" in prop:
            names = _strings(prop["enumNames"], f"{where}.enumNames")
            if len(names) != len(values):
                raise SchemaError(f"{where}.enumNames must have one name per enum value")
    elif "enumNames" in prop:
        raise SchemaError(f"{where}.enumNames needs an enum")
    if "oneOf" in prop:
        _options(prop["oneOf"], f"{where}.oneOf")


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
