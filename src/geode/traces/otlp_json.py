"""The OTLP-JSON encoding of spans, shared by the runtime's file exporter and the trace readers.

One line of an OTLP-JSON lines file is one ``ExportTraceServiceRequest`` in the standard OTLP JSON
mapping (the format the OpenTelemetry Collector's ``file`` exporter writes): trace and span ids are
lowercase hex, 64-bit integers (times, ``intValue``) are decimal strings, enums (span kind, status
code) are integers, and attributes are ``[{"key": ..., "value": {"stringValue": ...}}]`` lists.

Writers call :func:`encode_spans`; readers call :func:`iter_requests` (or :func:`read_requests` for a
file) and :func:`iter_spans` to get each span dict with the resource and scope it was exported under,
then decode attributes with :func:`decode_attributes`.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, cast

from geode.errors import TraceSourceError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

__all__ = [
    "OtlpSpan",
    "decode_any_value",
    "decode_attributes",
    "dumps_request",
    "encode_any_value",
    "encode_attributes",
    "encode_span",
    "encode_spans",
    "iter_requests",
    "iter_spans",
    "read_requests",
]

JsonObject = dict[str, Any]

_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})
"""Stands in for an absent OTLP message, so a missing field reads as missing."""

# OpenTelemetry's Python SpanKind starts at INTERNAL=0; OTLP reserves 0 for UNSPECIFIED.
_OTLP_KIND_OFFSET: Final = 1


def encode_any_value(value: object) -> JsonObject:
    """Encode one attribute value as an OTLP ``AnyValue``.

    Example:
        >>> encode_any_value(3)
        {'intValue': '3'}
        >>> encode_any_value(("a", "b"))
        {'arrayValue': {'values': [{'stringValue': 'a'}, {'stringValue': 'b'}]}}
    """
    # bool before int: bool is a subclass of int.
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        if math.isfinite(value):
            return {"doubleValue": value}
        # The proto3 JSON mapping spells non-finite doubles as strings.
        return {"doubleValue": "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bytes | bytearray):
        return {"bytesValue": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Mapping):
        return {"kvlistValue": {"values": encode_attributes(cast("Mapping[str, object]", value))}}
    if isinstance(value, Sequence):
        return {"arrayValue": {"values": [encode_any_value(v) for v in cast("Sequence[object]", value)]}}
    if value is None:
        return {}
    return {"stringValue": str(value)}


def encode_attributes(attributes: Mapping[str, object] | None) -> list[JsonObject]:
    """Encode an attribute mapping as an OTLP ``KeyValue`` list."""
    if not attributes:
        return []
    return [{"key": key, "value": encode_any_value(value)} for key, value in attributes.items()]


def _ns(value: int | None) -> str:
    return str(value or 0)


def encode_span(span: ReadableSpan) -> JsonObject:
    """Encode one SDK span as an OTLP-JSON ``Span`` object."""
    context = span.get_span_context()
    encoded: JsonObject = {
        "traceId": format(context.trace_id, "032x") if context else "",
        "spanId": format(context.span_id, "016x") if context else "",
    }
    if context is not None and context.trace_state:
        encoded["traceState"] = context.trace_state.to_header()
    if span.parent is not None:
        encoded["parentSpanId"] = format(span.parent.span_id, "016x")
    encoded["flags"] = int(context.trace_flags) if context else 0
    encoded["name"] = span.name
    encoded["kind"] = span.kind.value + _OTLP_KIND_OFFSET
    encoded["startTimeUnixNano"] = _ns(span.start_time)
    encoded["endTimeUnixNano"] = _ns(span.end_time)
    encoded["attributes"] = encode_attributes(span.attributes)
    if span.dropped_attributes:
        encoded["droppedAttributesCount"] = span.dropped_attributes
    if span.events:
        encoded["events"] = [
            {"timeUnixNano": _ns(e.timestamp), "name": e.name, "attributes": encode_attributes(e.attributes)}
            for e in span.events
        ]
    if span.dropped_events:
        encoded["droppedEventsCount"] = span.dropped_events
    if span.links:
        encoded["links"] = [
            {
                "traceId": format(link.context.trace_id, "032x"),
                "spanId": format(link.context.span_id, "016x"),
                "attributes": encode_attributes(link.attributes),
            }
            for link in span.links
        ]
    status: JsonObject = {"code": span.status.status_code.value}
    if span.status.description:
        status["message"] = span.status.description
    encoded["status"] = status
    return encoded


def encode_spans(spans: Iterable[ReadableSpan]) -> JsonObject:
    """Encode spans as one OTLP-JSON ``ExportTraceServiceRequest``, grouped by resource and scope.

    Returns:
        ``{"resourceSpans": [{"resource": ..., "scopeSpans": [{"scope": ..., "spans": [...]}]}]}``.
    """
    by_resource: dict[int, tuple[Any, dict[tuple[str, str | None, str | None], list[JsonObject]]]] = {}
    for span in spans:
        resource = span.resource
        slot = by_resource.get(id(resource))
        if slot is None:
            slot = by_resource[id(resource)] = (resource, {})
        span_scope = span.instrumentation_scope
        key = (
            (span_scope.name, span_scope.version, span_scope.schema_url)
            if span_scope is not None
            else ("", None, None)
        )
        slot[1].setdefault(key, []).append(encode_span(span))
    resource_spans: list[JsonObject] = []
    for resource, scopes in by_resource.values():
        scope_spans: list[JsonObject] = []
        for (name, version, schema_url), encoded in scopes.items():
            scope: JsonObject = {"name": name}
            if version:
                scope["version"] = version
            entry: JsonObject = {"scope": scope, "spans": encoded}
            if schema_url:
                entry["schemaUrl"] = schema_url
            scope_spans.append(entry)
        item: JsonObject = {
            "resource": {"attributes": encode_attributes(resource.attributes)},
            "scopeSpans": scope_spans,
        }
        if resource.schema_url:
            item["schemaUrl"] = resource.schema_url
        resource_spans.append(item)
    return {"resourceSpans": resource_spans}


def dumps_request(request: Mapping[str, Any]) -> str:
    """Serialize one request as a single JSON line (no trailing newline)."""
    return json.dumps(request, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# -- reading -----------------------------------------------------------------------------------------


def decode_any_value(value: Mapping[str, Any]) -> Any:
    """Decode an OTLP ``AnyValue`` to a Python value (arrays become tuples, kvlists dicts)."""
    if "stringValue" in value:
        return str(value["stringValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "arrayValue" in value:
        return tuple(decode_any_value(v) for v in (value["arrayValue"] or _EMPTY).get("values") or ())
    if "kvlistValue" in value:
        return decode_attributes((value["kvlistValue"] or _EMPTY).get("values") or ())
    if "bytesValue" in value:
        return base64.b64decode(value["bytesValue"])
    return None


def decode_attributes(pairs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Decode an OTLP ``KeyValue`` list to a flat dict."""
    return {str(pair["key"]): decode_any_value(pair.get("value") or {}) for pair in pairs}


@dataclass(frozen=True)
class OtlpSpan:
    """One span of an OTLP-JSON request, with the resource and scope it was exported under."""

    span: Mapping[str, Any]
    """The OTLP-JSON ``Span`` object, undecoded."""
    resource: Mapping[str, Any]
    """Decoded resource attributes (``service.name``, ``openinference.project.name``...)."""
    scope: str
    """Instrumentation scope name."""


def iter_spans(request: Mapping[str, Any]) -> Iterator[OtlpSpan]:
    """Every span of one ``ExportTraceServiceRequest``, with its resource and scope."""
    for resource_spans in request.get("resourceSpans") or ():
        resource = decode_attributes(((resource_spans.get("resource") or _EMPTY).get("attributes")) or ())
        for scope_spans in resource_spans.get("scopeSpans") or ():
            scope = str((scope_spans.get("scope") or _EMPTY).get("name") or "")
            for span in scope_spans.get("spans") or ():
                yield OtlpSpan(span=span, resource=resource, scope=scope)


def iter_requests(lines: Iterable[str], *, source: str = "<lines>") -> Iterator[JsonObject]:
    """Parse OTLP-JSON lines, one request per non-blank line.

    A last line cut short (the writer was killed mid-write) is skipped; any other unparseable line
    raises.

    Raises:
        TraceSourceError: A line that is not the last one is not a JSON object.
    """
    pending: tuple[int, str] | None = None
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        if pending is not None:
            raise TraceSourceError(f"{source}:{pending[0]} is not OTLP-JSON: {pending[1]}")
        try:
            request = json.loads(text)
        except json.JSONDecodeError as err:
            pending = (number, str(err))
            continue
        if not isinstance(request, dict):
            raise TraceSourceError(f"{source}:{number} is not an OTLP-JSON request object")
        yield request


def read_requests(path: str | Path) -> Iterator[JsonObject]:
    """Read an OTLP-JSON lines file written by Geode (or an OpenTelemetry Collector file exporter).

    Raises:
        TraceSourceError: The file cannot be read, or a line other than the last is corrupt.
    """
    file = Path(path)
    try:
        with file.open(encoding="utf-8") as handle:
            yield from iter_requests(handle, source=str(file))
    except OSError as err:
        raise TraceSourceError(f"cannot read OTLP-JSON file {file}: {err}") from err
