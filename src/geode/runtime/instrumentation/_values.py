"""Turning DSPy's Python values into span attribute values, cheaply and without ever raising."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from enum import Enum
from functools import lru_cache
from pathlib import PurePath
from typing import Any, Final

from openinference.semconv.trace import (
    DocumentAttributes,
    MessageAttributes,
    MessageContentAttributes,
    ToolCallAttributes,
)

from geode.traces.vocab import OpenInferenceMimeTypeValues, SpanAttributes

JSON_MIME: Final = OpenInferenceMimeTypeValues.JSON.value
TEXT_MIME: Final = OpenInferenceMimeTypeValues.TEXT.value

_REPR_LIMIT: Final = 2_000


def _default(value: Any) -> Any:
    # Ordered by how often DSPy hands us each kind of value.
    to_dict = getattr(value, "toDict", None)  # dspy.Example / dspy.Prediction
    if callable(to_dict):
        return to_dict()
    model_dump = getattr(value, "model_dump", None)  # pydantic models, dspy.Type (History, Image...)
    if callable(model_dump):
        try:
            return model_dump(mode="json")
        except Exception:
            return repr(value)[:_REPR_LIMIT]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, type):
        return value.__qualname__
    return repr(value)[:_REPR_LIMIT]


# One encoder for every call: json.dumps(default=...) would build a new JSONEncoder each time.
_ENCODER: Final = json.JSONEncoder(default=_default, ensure_ascii=False)


def to_json(value: Any) -> str:
    """JSON text for any value; objects JSON cannot encode become their dict form or ``repr``."""
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError):
        # Circular or otherwise unencodable structures still get a readable, bounded trace value.
        try:
            return json.dumps(repr(value)[:_REPR_LIMIT])
        except Exception:
            return '"<unrepresentable>"'


def value_and_mime(value: Any) -> tuple[str, str]:
    """An ``input.value``/``output.value`` and its mime type: strings as text, the rest as JSON."""
    if isinstance(value, str):
        return value, TEXT_MIME
    return to_json(value), JSON_MIME


def call_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs of a ``Module.__call__``/``acall``, which DSPy reports as ``{args, kwargs}``."""
    kwargs = inputs.get("kwargs")
    if (type(kwargs) is dict or isinstance(kwargs, Mapping)) and inputs.keys() <= {"args", "kwargs"}:
        result: dict[str, Any] = dict(kwargs)
        args = inputs.get("args")
        if args:
            result["args"] = list(args)
        return result
    return dict(inputs)


def prediction_fields(outputs: Any) -> Any:
    """A prediction's fields (without DSPy's ``completions`` bookkeeping), or the value itself."""
    store = getattr(outputs, "_store", None)
    if isinstance(store, dict):
        return store
    return outputs


# -- LLM messages ---------------------------------------------------------------------------------


@lru_cache(maxsize=512)
def _message_key(prefix: str, index: int, suffix: str) -> str:
    return f"{prefix}.{index}.{suffix}"


_ROLE: Final = MessageAttributes.MESSAGE_ROLE
_CONTENT: Final = MessageAttributes.MESSAGE_CONTENT
_CONTENTS: Final = MessageAttributes.MESSAGE_CONTENTS
_TOOL_CALLS: Final = MessageAttributes.MESSAGE_TOOL_CALLS
_PART_TYPE: Final = MessageContentAttributes.MESSAGE_CONTENT_TYPE
_PART_TEXT: Final = MessageContentAttributes.MESSAGE_CONTENT_TEXT
_PART_IMAGE_URL: Final = f"{MessageContentAttributes.MESSAGE_CONTENT_IMAGE}.image.url"
_CALL_NAME: Final = ToolCallAttributes.TOOL_CALL_FUNCTION_NAME
_CALL_ARGS: Final = ToolCallAttributes.TOOL_CALL_FUNCTION_ARGUMENTS_JSON
_CALL_ID: Final = ToolCallAttributes.TOOL_CALL_ID


def _content_parts(prefix: str, index: int, parts: Sequence[Any], out: dict[str, Any]) -> None:
    for j, part in enumerate(parts):
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        base = _message_key(prefix, index, f"{_CONTENTS}.{j}")
        if kind == "text":
            out[f"{base}.{_PART_TYPE}"] = "text"
            out[f"{base}.{_PART_TEXT}"] = str(part.get("text") or "")
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, Mapping) else url
            out[f"{base}.{_PART_TYPE}"] = "image"
            # Inline images are data URLs of arbitrary size; keep only what identifies them.
            text = str(url or "")
            out[f"{base}.{_PART_IMAGE_URL}"] = text if not text.startswith("data:") else text[:64]
        elif kind is not None:
            out[f"{base}.{_PART_TYPE}"] = str(kind)


def _tool_calls(prefix: str, index: int, calls: Any, out: dict[str, Any]) -> None:
    if not isinstance(calls, Sequence) or isinstance(calls, str):
        return
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, Mapping) else getattr(call, "function", None)
        name = function.get("name") if isinstance(function, Mapping) else getattr(function, "name", None)
        arguments = (
            function.get("arguments")
            if isinstance(function, Mapping)
            else getattr(function, "arguments", None)
        )
        call_id = call.get("id") if isinstance(call, Mapping) else getattr(call, "id", None)
        base = _message_key(prefix, index, f"{_TOOL_CALLS}.{j}")
        if name is not None:
            out[f"{base}.{_CALL_NAME}"] = str(name)
        if arguments is not None:
            out[f"{base}.{_CALL_ARGS}"] = arguments if isinstance(arguments, str) else to_json(arguments)
        if call_id is not None:
            out[f"{base}.{_CALL_ID}"] = str(call_id)


def input_message_attributes(messages: Sequence[Any], out: dict[str, Any]) -> None:
    """Flatten chat messages into ``llm.input_messages.N.message.*`` attributes."""
    for i, message in enumerate(messages):
        # Plain dicts first: DSPy's adapters build them, and an ABC isinstance check costs more.
        if type(message) is not dict and not isinstance(message, Mapping):
            continue
        role_key, content_key = _input_keys(i)
        out[role_key] = str(message.get("role") or "user")
        content = message.get("content")
        if type(content) is str:
            out[content_key] = content
        elif isinstance(content, Sequence) and not isinstance(content, str):
            _content_parts(SpanAttributes.LLM_INPUT_MESSAGES, i, content, out)
        if message.get("tool_calls"):
            _tool_calls(SpanAttributes.LLM_INPUT_MESSAGES, i, message.get("tool_calls"), out)


@lru_cache(maxsize=256)
def _input_keys(index: int) -> tuple[str, str]:
    prefix = SpanAttributes.LLM_INPUT_MESSAGES
    return f"{prefix}.{index}.{_ROLE}", f"{prefix}.{index}.{_CONTENT}"


def output_message_attributes(outputs: Sequence[Any], out: dict[str, Any]) -> str | None:
    """Flatten LM outputs into ``llm.output_messages.N.message.*``; returns the first text."""
    prefix = SpanAttributes.LLM_OUTPUT_MESSAGES
    first: str | None = None
    for i, output in enumerate(outputs):
        out[_message_key(prefix, i, _ROLE)] = "assistant"
        if isinstance(output, str):
            text: Any = output
        elif isinstance(output, Mapping):
            text = output.get("text")
            if output.get("tool_calls"):
                _tool_calls(prefix, i, output.get("tool_calls"), out)
        else:
            text = getattr(output, "text", None)
        if text is not None:
            text = str(text)
            out[_message_key(prefix, i, _CONTENT)] = text
            if first is None:
                first = text
    return first


# -- retrieved documents ---------------------------------------------------------------------------


def _document_text(passage: Any) -> str | None:
    if isinstance(passage, str):
        return passage
    if isinstance(passage, Mapping):
        for key in ("text", "content", "long_text"):
            if passage.get(key) is not None:
                return str(passage[key])
        return None
    for key in ("text", "content", "long_text"):
        value = getattr(passage, key, None)
        if value is not None:
            return str(value)
    return None


def _field(passage: Any, name: str) -> Any:
    if isinstance(passage, Mapping):
        return passage.get(name)
    return getattr(passage, name, None)


def document_attributes(passages: Sequence[Any], out: dict[str, Any]) -> int:
    """``retrieval.documents.N.document.{id,content,score,metadata}`` from duck-typed passages.

    Passages may be strings, mappings or objects with ``id``/``text``/``score``/``metadata``
    attributes (Geode's retriever, ``dspy.Retrieve``'s ``dotdict(long_text=...)``). Returns how many.
    """
    prefix = SpanAttributes.RETRIEVAL_DOCUMENTS
    count = 0
    for i, passage in enumerate(passages):
        base = f"{prefix}.{i}."
        doc_id = _field(passage, "id")
        if doc_id is not None:
            out[base + DocumentAttributes.DOCUMENT_ID] = str(doc_id)
        text = _document_text(passage)
        if text is not None:
            out[base + DocumentAttributes.DOCUMENT_CONTENT] = text
        score = _field(passage, "score")
        if isinstance(score, int | float) and not isinstance(score, bool):
            out[base + DocumentAttributes.DOCUMENT_SCORE] = float(score)
        metadata = _field(passage, "metadata")
        if metadata:
            out[base + DocumentAttributes.DOCUMENT_METADATA] = to_json(metadata)
        count += 1
    return count


def iter_passages(outputs: Any) -> Iterator[Any] | None:
    """The passages a retriever returned: ``outputs.passages`` or a bare list."""
    passages = getattr(outputs, "passages", None)
    if passages is None and isinstance(outputs, Mapping):
        passages = outputs.get("passages")
    if passages is None and isinstance(outputs, list):
        passages = outputs
    if passages is None or isinstance(passages, str):
        return None
    try:
        return iter(passages)
    except TypeError:
        return None
