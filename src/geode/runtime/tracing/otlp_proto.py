"""OTLP/protobuf encoding of finished spans, written straight to the wire format.

The OpenTelemetry exporter builds a protobuf message object per span, attribute and value, then
serializes the tree; for Geode's spans (a dozen string attributes each) that costs about three times
as much CPU as writing the same bytes directly, and that CPU is spent on the export thread, in the
server's process, competing for the GIL with the requests. :func:`encode_request` writes an
``ExportTraceServiceRequest`` that parses to the same message the SDK's ``encode_spans`` builds
(``tests/unit/runtime/tracing/test_otlp_proto.py`` checks it field by field), with two differences:

- a string that is not valid Unicode (lone surrogates) is sent with ``?`` in their place, where the
  SDK drops the attribute (and logs a stack trace per value);
- spans are grouped by resource and scope *object* (the SDK hashes every resource's attributes as
  JSON per span to group them); spans from one tracer provider share both objects.

Field numbers are those of ``opentelemetry/proto/trace/v1/trace.proto`` and ``common/v1/common.proto``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, Status

__all__ = ["attribute_dict", "encode_request"]

_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack
_double = struct.Struct("<d").pack
_BYTE: Final = tuple(bytes((i,)) for i in range(128))
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_UINT64: Final = (1 << 64) - 1
# Span.flags / Link.flags: the W3C trace flags are not set by the SDK's encoder; bit 8 says whether the
# parent's is_remote is known (always), bit 9 that it is remote.
_FLAGS_LOCAL: Final = _fixed32(0x100)
_FLAGS_REMOTE: Final = _fixed32(0x300)
_MAX_CACHED_KEYS: Final = 4096
_keys: dict[str, bytes] = {}
_MAX_CACHED_PAIRS: Final = 4096
_MAX_CACHED_PAIR: Final = 8192
_MAX_CACHED_PAIR_BYTES: Final = 4_000_000
_pairs: dict[tuple[bytes, str, str], bytes] = {}
"""Encoded string ``KeyValue`` fields by (field tag, key, value), up to about 4 MB in all."""
_pair_bytes = 0


def attribute_dict(span: ReadableSpan) -> Mapping[str, Any]:
    """A finished span's attributes, for reading: the dict behind the SDK's mapping when there is one.

    ``span.attributes`` is a read-only proxy of the SDK's ``BoundedAttributes``, an abstract-base-class
    mapping whose iteration runs in Python (about 0.3 µs per attribute); the plain dict inside it holds
    the same items in the same order. Nothing may write to what this returns.
    """
    stored = getattr(span, "_attributes", None)
    if type(stored) is BoundedAttributes:
        return stored._dict
    if type(stored) is dict:
        return stored
    return span.attributes or {}


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _BYTE[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    n = len(payload)
    return tag + (_BYTE[n] if n < 0x80 else _varint(n)) + payload


def _text(value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace")


def _any_value(value: Any) -> bytes | None:
    """The fields of an ``AnyValue`` (without its own tag and length); None if it cannot be encoded."""
    if isinstance(value, str):
        return _field(b"\x0a", _text(value))
    if isinstance(value, bool):  # before int: bool is an int
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            return None
        return b"\x18" + _varint(value & _UINT64)
    if isinstance(value, float):
        return b"\x21" + _double(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if value is None:
        return b""
    if isinstance(value, Sequence):
        items: list[bytes] = []
        for item in value:
            encoded = _any_value(item)
            if encoded is None:
                return None
            items.append(_field(b"\x0a", encoded))
        return _field(b"\x2a", b"".join(items))
    if isinstance(value, Mapping):
        return _field(b"\x32", _key_values(value, b"\x0a"))
    return None


def _key(key: str) -> bytes:
    """``KeyValue.key`` with its tag and length; cached, since the same few keys recur on every span."""
    encoded = _keys.get(key)
    if encoded is None:
        encoded = _field(b"\x0a", _text(str(key)))
        if len(_keys) < _MAX_CACHED_KEYS:
            _keys[key] = encoded
    return encoded


def _key_values(attributes: Mapping[str, Any] | None, tag: bytes) -> bytes:
    """Repeated ``KeyValue`` fields under ``tag``; values that cannot be encoded are left out."""
    if not attributes:
        return b""
    global _pair_bytes
    parts: list[bytes] = []
    pairs = _pairs
    for key, value in attributes.items():
        text = type(value) is str  # the common case, inlined and remembered
        if text:
            cached = pairs.get((tag, key, value))
            if cached is not None:
                parts.append(cached)
                continue
            raw = _text(value)
            n = len(raw)
            inner = b"\x0a" + (_BYTE[n] if n < 0x80 else _varint(n)) + raw
        else:
            encoded = _any_value(value)
            if encoded is None:
                continue
            inner = encoded
        m = len(inner)
        pair = _key(key) + b"\x12" + (_BYTE[m] if m < 0x80 else _varint(m)) + inner
        k = len(pair)
        field = tag + (_BYTE[k] if k < 0x80 else _varint(k)) + pair
        parts.append(field)
        if text and k <= _MAX_CACHED_PAIR:
            # Most string attributes recur span after span (kinds, names, roles, a signature's
            # system prompt, invocation parameters): encode each once.
            _pair_bytes += k
            if len(pairs) >= _MAX_CACHED_PAIRS or _pair_bytes > _MAX_CACHED_PAIR_BYTES:
                pairs.clear()
                _pair_bytes = k
            pairs[(tag, key, value)] = field
    return b"".join(parts)


def _flags(parent: SpanContext | None) -> bytes:
    return _FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL


def _event(event: Event) -> bytes:
    fields = [b"\x09" + _fixed64(event.timestamp)] if event.timestamp else []
    if event.name:
        fields.append(_field(b"\x12", _text(event.name)))
    fields.append(_key_values(event.attributes, b"\x1a"))
    if event.dropped_attributes:
        fields.append(b"\x20" + _varint(event.dropped_attributes))
    return _field(b"\x5a", b"".join(fields))


def _link(link: Link) -> bytes:
    linked = link.context
    fields = [
        b"\x0a\x10",
        linked.trace_id.to_bytes(16, "big"),
        b"\x12\x08",
        linked.span_id.to_bytes(8, "big"),
        _key_values(link.attributes, b"\x22"),
    ]
    if link.dropped_attributes:
        fields.append(b"\x28" + _varint(link.dropped_attributes))
    fields.append(b"\x35" + _flags(linked))
    return _field(b"\x6a", b"".join(fields))


def _status(status: Status) -> bytes:
    fields = [_field(b"\x12", _text(status.description))] if status.description else []
    if status.status_code.value:
        fields.append(b"\x18" + _BYTE[status.status_code.value])
    return _field(b"\x7a", b"".join(fields))


def _span(span: ReadableSpan) -> bytes:
    context = span.get_span_context()
    assert context is not None  # every SDK span has one
    parent = span.parent
    out = [b"\x0a\x10", context.trace_id.to_bytes(16, "big"), b"\x12\x08", context.span_id.to_bytes(8, "big")]
    if context.trace_state:
        state = ",".join(f"{k}={v}" for k, v in context.trace_state.items())
        out.append(_field(b"\x1a", _text(state)))
    if parent is not None:
        out += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
    if span.name:
        out.append(_field(b"\x2a", _text(span.name)))
    out.append(b"\x30" + _BYTE[span.kind.value + 1])  # OTLP's SpanKind has UNSPECIFIED at 0
    if span.start_time:
        out.append(b"\x39" + _fixed64(span.start_time))
    if span.end_time:
        out.append(b"\x41" + _fixed64(span.end_time))
    out.append(_key_values(attribute_dict(span), b"\x4a"))
    if span.dropped_attributes:
        out.append(b"\x50" + _varint(span.dropped_attributes))
    out.extend(_event(event) for event in span.events)
    if span.dropped_events:
        out.append(b"\x60" + _varint(span.dropped_events))
    out.extend(_link(link) for link in span.links)
    if span.dropped_links:
        out.append(b"\x70" + _varint(span.dropped_links))
    out.append(_status(span.status))
    out.append(b"\x85\x01" + _flags(parent))
    return b"".join(out)


def _scope(scope: InstrumentationScope | None) -> bytes:
    if scope is None:
        return b""
    fields = [_field(b"\x0a", _text(scope.name))] if scope.name else []
    if scope.version:
        fields.append(_field(b"\x12", _text(scope.version)))
    fields.append(_key_values(scope.attributes, b"\x1a"))
    return b"".join(fields)


def encode_request(spans: Sequence[ReadableSpan]) -> bytes:
    """Serialize ``spans`` as one OTLP ``ExportTraceServiceRequest`` (the body of ``POST /v1/traces``).

    Example:
        >>> from opentelemetry.sdk.trace import TracerProvider
        >>> from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ...     ExportTraceServiceRequest,
        ... )
        >>> span = TracerProvider().get_tracer("demo").start_span("hello", attributes={"n": 1})
        >>> span.end()
        >>> request = ExportTraceServiceRequest.FromString(encode_request([span]))
        >>> request.resource_spans[0].scope_spans[0].spans[0].name
        'hello'
    """
    groups: dict[int, tuple[Resource, dict[int, tuple[InstrumentationScope | None, list[bytes]]]]] = {}
    for span in spans:
        resource = span.resource
        group = groups.get(id(resource))
        if group is None:
            group = groups[id(resource)] = (resource, {})
        scope = span.instrumentation_scope
        scoped = group[1].get(id(scope))
        if scoped is None:
            scoped = group[1][id(scope)] = (scope, [])
        scoped[1].append(_field(b"\x12", _span(span)))
    out: list[bytes] = []
    for resource, scopes in groups.values():
        fields = [_field(b"\x0a", _key_values(resource.attributes, b"\x0a"))]
        for scope, encoded in scopes.values():
            body = [_field(b"\x0a", _scope(scope)), *encoded]
            if scope is not None and scope.schema_url:
                body.append(_field(b"\x1a", _text(scope.schema_url)))
            fields.append(_field(b"\x12", b"".join(body)))
        if resource.schema_url:
            fields.append(_field(b"\x1a", _text(resource.schema_url)))
        out.append(_field(b"\x0a", b"".join(fields)))
    return b"".join(out)
