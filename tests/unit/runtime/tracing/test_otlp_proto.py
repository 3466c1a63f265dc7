"""The direct OTLP/protobuf encoder parses to exactly what the OpenTelemetry SDK's encoder builds."""

from __future__ import annotations

import logging
import math

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.trace.span import TraceState

from geode.runtime.tracing.otlp_proto import encode_request


def _provider(resource: Resource) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(resource=resource)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _spans() -> list[ReadableSpan]:
    """Spans covering every field: kinds, value types, events, links, status, remote parents, two scopes
    and two resources."""
    first, first_spans = _provider(Resource({"service.name": "svc", "n": 3}, schema_url="https://s/1"))
    second, second_spans = _provider(Resource({"service.name": "other"}))
    tracer = first.get_tracer("scope-a", "1.2", schema_url="https://scope/1")
    other_scope = first.get_tracer("scope-b")
    remote = SpanContext(
        trace_id=0x0123456789ABCDEF0123456789ABCDEF,
        span_id=0x0123456789ABCDEF,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "value"), ("k", "v")]),
    )
    attributes = {
        "text": "héllo ✓ " + "x" * 300,  # multi-byte, and longer than a one-byte length
        "empty": "",
        "int": 7,
        "negative": -(2**40),
        "bool": False,
        "float": 0.25,
        "nan": math.nan,
        "bytes": b"\x00\xff",
        "strings": ("a", "b"),
        "ints": (1, -2),
        "floats": [0.5, 1.5],
        "bools": (True, False),
    }
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER, attributes=attributes) as root:
        root.set_status(StatusCode.OK)
        with tracer.start_as_current_span("child", kind=SpanKind.CLIENT) as child:
            child.add_event("note", {"k": "v", "n": 1})
            child.add_event("bare")
            child.set_status(StatusCode.ERROR, "bad thing")
            child.add_link(remote, {"why": "retry"})
        with other_scope.start_as_current_span("other", kind=SpanKind.PRODUCER):
            pass
    with tracer.start_as_current_span(
        "from-remote", context=set_span_in_context(NonRecordingSpan(remote)), kind=SpanKind.CONSUMER
    ):
        pass
    with tracer.start_as_current_span("", links=[Link(remote)]):
        pass
    with second.get_tracer("scope-a").start_as_current_span("second-resource"):
        pass
    return [*first_spans.get_finished_spans(), *second_spans.get_finished_spans()]


def _sdk(spans: list[ReadableSpan]) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(encode_spans(spans).SerializeToString())


def test_encoding_matches_the_sdk_encoder_field_for_field() -> None:
    spans = _spans()
    ours = ExportTraceServiceRequest.FromString(encode_request(spans))
    assert ours == _sdk(spans)
    # Not vacuous: every kind of content made it through.
    (first, second) = ours.resource_spans
    assert [len(s.spans) for s in first.scope_spans] == [4, 1]
    assert second.scope_spans[0].spans[0].name == "second-resource"


def test_each_span_alone_matches_too() -> None:
    for span in _spans():
        assert ExportTraceServiceRequest.FromString(encode_request([span])) == _sdk([span])


def test_values_the_sdk_cannot_encode_are_left_out(caplog: pytest.LogCaptureFixture) -> None:
    provider, exporter = _provider(Resource({}))
    with provider.get_tracer("t").start_as_current_span("s") as span:
        # The SDK's attribute cleaning lets these through to the exporter as given.
        span._attributes._dict.update({"huge": 2**70, "mixed": ("a", object()), "ok": "kept"})  # type: ignore[union-attr]
    spans = list(exporter.get_finished_spans())
    with caplog.at_level(logging.CRITICAL):
        expected = _sdk(spans)
    ours = ExportTraceServiceRequest.FromString(encode_request(spans))
    assert ours == expected
    assert [kv.key for kv in ours.resource_spans[0].scope_spans[0].spans[0].attributes] == ["ok"]


def test_lone_surrogates_become_replacement_marks_instead_of_a_broken_batch() -> None:
    provider, exporter = _provider(Resource({}))
    with provider.get_tracer("t").start_as_current_span("s", attributes={"text": "a\ud800b"}):
        pass
    request = ExportTraceServiceRequest.FromString(encode_request(list(exporter.get_finished_spans())))
    (attribute,) = request.resource_spans[0].scope_spans[0].spans[0].attributes
    assert attribute.value.string_value == "a?b"


def test_empty_batch() -> None:
    assert encode_request([]) == b""
    assert ExportTraceServiceRequest.FromString(b"") == _sdk([])


def test_attribute_dict_reads_the_same_items_in_the_same_order() -> None:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

    from geode.runtime.tracing.otlp_proto import attribute_dict

    started = TracerProvider().get_tracer("t").start_span("s", attributes={"b": 1, "a": "x", "c": (1, 2)})
    started.end()
    assert isinstance(started, ReadableSpan)
    span: ReadableSpan = started
    assert list(attribute_dict(span).items()) == list((span.attributes or {}).items())
    copied = ReadableSpan("r", attributes={"z": 1, "y": 2})
    assert list(attribute_dict(copied).items()) == [("z", 1), ("y", 2)]
    assert dict(attribute_dict(ReadableSpan("empty"))) == {}
