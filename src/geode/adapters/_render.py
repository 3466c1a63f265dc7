"""Rendering a signature's fields as plain chat text, and the JSON schema of its outputs.

Shared by :class:`~geode.adapters.small.SmallModelAdapter` and its users (the agent tightens the schema
for its own steps). Nothing here knows any particular signature: labels come from each field's DSPy
prefix, types from its annotation.
"""

from __future__ import annotations

import copy
import enum
import json
import types
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pydantic
from dspy.adapters.types.base_type import Type as DspyType
from dspy.adapters.utils import format_field_value, serialize_for_json
from pydantic.fields import FieldInfo

__all__ = [
    "field_label",
    "output_schema",
    "render_block",
    "render_value",
    "schema_model",
    "type_hint",
]


def field_label(name: str, info: FieldInfo) -> str:
    """The label a field is shown under: its DSPy prefix (``Question``, ``Next Tool Args``) without the colon.

    DSPy derives the prefix from the field name unless the signature sets ``prefix=``, so a signature
    author controls the label the model reads.
    """
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, Mapping) else {}
    prefix = extra.get("prefix")
    label = str(prefix).strip() if isinstance(prefix, str) and prefix.strip() else name
    return label[:-1].rstrip() if label.endswith(":") else label


def field_desc(name: str, info: FieldInfo) -> str | None:
    """The field's description, or ``None`` when it is DSPy's ``${name}`` placeholder."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, Mapping) else {}
    desc = extra.get("desc")
    if not isinstance(desc, str) or not desc.strip() or desc.strip() == f"${{{name}}}":
        return None
    return desc.strip()


def render_value(info: FieldInfo, value: Any) -> str:
    """A field value as text a small model reads naturally.

    Strings stay as they are; a list of strings becomes numbered lines (``[1] ...``); other values
    become compact JSON. DSPy's own types (images, code...) keep DSPy's rendering.
    """
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, DspyType):
        rendered = format_field_value(info, value)
        return rendered if isinstance(rendered, str) else json.dumps(rendered, ensure_ascii=False)
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        items = [item.strip() for item in value]
        if not items:
            return "(none)"
        if len(items) == 1:
            return items[0]
        return "\n".join(f"[{index}] {item}" for index, item in enumerate(items, start=1))
    jsonable = serialize_for_json(value)
    if isinstance(jsonable, dict | list):
        return json.dumps(jsonable, ensure_ascii=False)
    return str(jsonable)


def render_block(label: str, text: str) -> str:
    """``Label: text`` for one line, the label on its own line above anything longer."""
    if not text:
        return f"{label}:"
    if "\n" in text:
        return f"{label}:\n{text}"
    return f"{label}: {text}"


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)


def type_hint(annotation: Any) -> str:
    """A few words naming a type for the prompt (``an integer``, ``one of "a", "b"``), never a schema.

    A small model copies whatever template it is shown; a JSON schema in the prompt ends up in its answer.
    """
    if annotation is str or annotation is None:
        return "text"
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(json.dumps(m.value) for m in annotation)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        hint = " or ".join(type_hint(a) for a in options)
        return f"{hint} or null" if len(options) < len(args) else hint
    if origin in (list, tuple, set, frozenset):
        inner = type_hint(args[0]) if args else "values"
        return f"a list of {inner}" if args else "a list"
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, dict)):
        return "an object"
    if _is_model(annotation):
        keys = ", ".join(json.dumps(k) for k in annotation.model_fields)
        return f"an object with {keys}"
    if isinstance(annotation, type) and issubclass(annotation, str):
        return "text"
    return "a JSON value"


def _close_objects(schema: Any) -> Any:
    """Every object with declared properties requires all of them and allows no others.

    Grammar-constrained decoding then produces each key exactly once, in order; structured-output APIs
    (OpenAI's strict mode) demand the same. Objects without declared properties (``dict[str, Any]``) are
    left open: closing them would force ``{}``.
    """
    if isinstance(schema, list):
        return [_close_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _close_objects(value) for key, value in schema.items() if key != "title"}
    if out.get("type") == "object" and isinstance(out.get("properties"), dict):
        out["required"] = list(out["properties"])
        out["additionalProperties"] = False
    return out


def output_schema(fields: Mapping[str, FieldInfo]) -> dict[str, Any]:
    """The JSON schema of an object holding ``fields`` in order (types enforced, no extra keys).

    Raises:
        pydantic.PydanticSchemaGenerationError: A field type has no JSON schema.
        pydantic.PydanticInvalidForJsonSchema: Likewise.
    """
    definitions: dict[str, Any] = {}
    for name, info in fields.items():
        annotation = info.annotation if info.annotation is not None else str
        # Declared constraints (max_length, ge, pattern...) are part of the field's type in the schema.
        definitions[name] = (Annotated[annotation, *info.metadata] if info.metadata else annotation, ...)
    model = pydantic.create_model("Outputs", __config__=pydantic.ConfigDict(extra="forbid"), **definitions)
    schema = copy.deepcopy(model.model_json_schema())
    for prop in (schema.get("properties") or {}).values():
        if isinstance(prop, dict):
            prop.pop("json_schema_extra", None)
    return _close_objects(schema)


def schema_model(name: str, schema: dict[str, Any]) -> type[pydantic.BaseModel]:
    """A pydantic model that reports ``schema`` as its JSON schema: how DSPy hands an LM a response schema.

    ``dspy.LM`` turns a pydantic ``response_format`` into the provider's json_schema request from
    ``model_json_schema()``; a hand-built schema (unions of whole objects, length caps) travels the same way.
    """
    model = pydantic.create_model(name, __config__=pydantic.ConfigDict(extra="allow"))
    frozen = copy.deepcopy(schema)
    setattr(model, "model_json_schema", lambda *args, **kwargs: frozen)  # noqa: B010
    return model
