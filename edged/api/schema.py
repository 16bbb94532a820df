"""The JSON Schema of the messages edged publishes, derived from their declarations in
`edged.api.messages`. The checked-in ``messages.schema.json`` is this module's output; a test
fails when the two differ. Regenerate with ``python -m edged.api.schema --write``;
``--markdown`` prints the README's field reference (also checked)."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from edged.api.messages import KINDS, SCHEMA_VERSION, Published, _hints

SCHEMA_PATH = Path(__file__).with_name("messages.schema.json")
README = Path(__file__).parents[2] / "README.md"  # in a checkout; --write updates its reference
BEGIN = "<!-- BEGIN GENERATED: python -m edged.api.schema --markdown -->\n"
END = "<!-- END GENERATED -->"
_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def _type(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin = get_origin(tp)
    if tp in _JSON_TYPES:
        return {"type": _JSON_TYPES[tp]}
    if origin in (Union, types.UnionType):
        rest = [a for a in get_args(tp) if a is not type(None)]
        nullable = len(rest) < len(get_args(tp))
        (one,) = rest
        inner = _type(one, defs)
        if not nullable:
            return inner
        if set(inner) == {"type"}:
            return {"type": [inner["type"], "null"]}
        return {"oneOf": [{"type": "null"}, inner]}
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _type(args[0], defs)}
        if len(set(args)) != 1:
            raise TypeError(f"mixed tuples have no schema here: {tp!r}")
        return {"type": "array", "items": _type(args[0], defs), "minItems": len(args),
                "maxItems": len(args)}
    if origin is Mapping:
        return {"type": "object", "additionalProperties": _type(get_args(tp)[1], defs)}
    if isinstance(tp, type) and is_dataclass(tp):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # reserve: a recursive type would stop here
            defs[name] = _object(tp, defs)
        return {"$ref": f"#/$defs/{name}"}
    raise TypeError(f"no schema for {tp!r}")


def _with_keywords(sch: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Bounds apply to the numbers themselves, or to the items of an array of numbers."""
    extra = {k: list(v) if isinstance(v, tuple) else v for k, v in extra.items()}
    keys, values = extra.pop("keys", None), extra.pop("values", None)
    if values is not None:  # the allowed values of a mapping
        sch["additionalProperties"] = {**sch["additionalProperties"], "enum": values}
    if keys is not None:  # a mapping with named keys
        value = sch.pop("additionalProperties")
        sch.update(additionalProperties=False, properties={k: value for k in keys})
    if not extra:
        return sch
    if sch.get("type") == "array":
        return {**sch, "items": {**sch["items"], **extra}}
    if "oneOf" in sch:
        return {"oneOf": [s if s == {"type": "null"} else _with_keywords(s, extra)
                          for s in sch["oneOf"]]}
    return {**sch, **extra}


def _object(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    if hasattr(cls, "KIND"):
        props = {"v": {"const": SCHEMA_VERSION}, "kind": {"const": cls.KIND}}
    meta = {f.name: f.metadata for f in fields(cls)}
    for name, tp in _hints(cls):
        sch = _with_keywords(_type(tp, defs), meta[name].get("schema", {}))
        if meta[name].get("doc"):
            sch["description"] = meta[name]["doc"]
        props[name] = sch
    out: dict[str, Any] = {"type": "object", "additionalProperties": False,
                           "required": list(props), "properties": props}
    if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}("):
        out = {"description": " ".join(cls.__doc__.split()), **out}
    return out


def build_schema() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    refs = [_type(cls, defs) for cls in KINDS]
    topics = " or ".join(f"{cls.TOPIC}/<camera>/" if issubclass(cls, Published) else
                         f"{cls.TOPIC}/" for cls in KINDS)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://edged.example/schema/messages-v{SCHEMA_VERSION}.json",
        "title": f"edged messages, version {SCHEMA_VERSION}",
        "description": "Payload (second frame) of every multipart message edged publishes. "
                       f"The first frame is the topic: {topics}. Generated from "
                       "edged/api/messages.py by `python -m edged.api.schema --write`.",
        "oneOf": refs,
        "$defs": defs,  # in the order the kinds reach them
    }


def render() -> str:
    return json.dumps(build_schema(), indent=2) + "\n"


def _type_name(sch: dict[str, Any]) -> str:
    if "$ref" in sch:
        return "object: " + str(sch["$ref"]).rsplit("/", 1)[1]
    if "oneOf" in sch:
        return " or ".join(_type_name(s) for s in sch["oneOf"])
    if "const" in sch:
        return f"`{json.dumps(sch['const'])}`"
    if "enum" in sch:
        return "one of " + ", ".join(f"`{v}`" for v in sch["enum"])
    t = sch.get("type")
    if t == "array":
        n = f"{sch['minItems']} " if "minItems" in sch else ""
        return f"array of {n}{_type_name(sch['items'])}"
    if t == "object" and "properties" not in sch:
        return f"object of {_type_name(sch['additionalProperties'])}"
    if t == "object":
        keys = ", ".join(f"`{k}`" for k in sch.get("properties", {}))
        return f"object ({keys}) of {_type_name(next(iter(sch['properties'].values())))}"
    if isinstance(t, list):
        return " or ".join(t)
    return str(t)


def markdown() -> str:
    """The README's field reference: one table per object of the schema."""
    out = []
    for name, obj in build_schema()["$defs"].items():
        out += [f"**{name}**" + (f": {obj['description']}" if "description" in obj else ""), "",
                "| field | type | meaning |", "|---|---|---|"]
        for field_name, sch in obj["properties"].items():
            bounds = ", ".join(f"{k} {sch.get(k, sch.get('items', {}).get(k))}"
                               for k in ("minimum", "maximum")
                               if k in sch or k in sch.get("items", {}))
            meaning = "; ".join(x for x in (sch.get("description", ""), bounds) if x)
            out.append(f"| `{field_name}` | {_type_name(sch)} | {meaning} |")
        out.append("")
    return "\n".join(out)


def load_schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return data


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        SCHEMA_PATH.write_text(render(), encoding="utf-8")
        if README.is_file():
            text = README.read_text(encoding="utf-8")
            head, _, rest = text.partition(BEGIN)
            README.write_text(head + BEGIN + markdown() + END + rest.partition(END)[2],
                              encoding="utf-8")
    elif sys.argv[1:] == ["--markdown"]:
        sys.stdout.write(markdown())
    else:
        sys.stdout.write(render())
