"""A child span started directly is the span the SDK's ``start_span`` would have started."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from geode.runtime.instrumentation._fast_span import start_child
from geode.runtime.settings import TracingSettings
from geode.runtime.tracing import make_provider


def _fields(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    assert context is not None and span.parent is not None
    return {
        "name": span.name,
        "trace_id": context.trace_id,
        "flags": int(context.trace_flags),
        "state": context.trace_state,
        "remote": context.is_remote,
        "parent": span.parent.span_id,
        "resource": span.resource,
        "scope": span.instrumentation_scope,
        "kind": span.kind,
        "attributes": dict(span.attributes or {}),
    }


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_same_span_as_the_sdk(ratio: float) -> None:
    provider = make_provider(TracingSettings.model_construct(sample_ratio=ratio))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    parent = tracer.start_span("parent")
    while not parent.get_span_context().trace_flags.sampled:  # a sampled parent, at ratio 0.5
        parent = tracer.start_span("parent")
    fast = start_child(tracer, "child", parent.get_span_context(), None)
    assert fast is not None
    fast.end()
    with trace.use_span(parent):
        sdk = tracer.start_span("child")
    sdk.end()
    first, second = exporter.get_finished_spans()
    assert _fields(first) == _fields(second)
    assert first.context is not None and second.context is not None
    assert first.context.span_id != second.context.span_id


def test_not_sure_means_none() -> None:
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.5), local_parent_sampled=ALWAYS_OFF))
    parent = SpanContext(1, 2, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    assert start_child(provider.get_tracer("t"), "s", parent, None) is None  # an unusual sampler
    tracer = TracerProvider(sampler=ALWAYS_ON).get_tracer("t")
    remote = SpanContext(1, 2, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    unsampled = SpanContext(1, 2, is_remote=False, trace_flags=TraceFlags(0))
    assert start_child(tracer, "s", remote, None) is None
    assert start_child(tracer, "s", unsampled, None) is None
    no_parent = NonRecordingSpan(SpanContext(0, 0, False)).get_span_context()
    assert start_child(provider.get_tracer("t"), "s", no_parent, None) is None  # a root, not ALWAYS_ON
    assert start_child(trace.NoOpTracer(), "s", SpanContext(1, 2, False, TraceFlags(1)), None) is None


def test_trace_state_carries_over() -> None:
    tracer = TracerProvider(sampler=ALWAYS_ON).get_tracer("t")
    state = TraceState([("vendor", "value")])
    parent = SpanContext(7, 8, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED), trace_state=state)
    span = start_child(tracer, "s", parent, None)
    assert span is not None and span.get_span_context().trace_state == state
    assert span.get_span_context().trace_id == 7


def test_set_ok_and_end_span_behave_as_the_sdk() -> None:
    from opentelemetry.trace import StatusCode

    from geode.runtime.instrumentation._fast_span import end_span, set_ok

    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    outcomes = []
    for fast in (True, False):
        span = tracer.start_span("s", attributes={"a": 1})
        span.set_status(StatusCode.ERROR, "first")
        if fast:
            set_ok(span)
            end_span(span)
            end_span(span)  # a second end: the SDK's warning, nothing else
            set_ok(span)  # after the end: ignored
        else:
            span.set_status(StatusCode.OK)
            span.end()
            span.end()
            span.set_status(StatusCode.OK)
        (finished,) = exporter.get_finished_spans()
        exporter.clear()
        assert finished.end_time is not None and finished.start_time is not None
        with pytest.raises(TypeError):
            finished.attributes["b"] = 2  # type: ignore[index]  # frozen once ended
        outcomes.append((finished.name, finished.status.status_code, dict(finished.attributes or {})))
    assert outcomes[0] == outcomes[1] == ("s", StatusCode.OK, {"a": 1})


def test_end_span_of_a_span_that_is_not_the_sdks_ends_it() -> None:
    from geode.runtime.instrumentation._fast_span import end_span, set_ok

    span = NonRecordingSpan(SpanContext(1, 2, False))
    set_ok(span)
    end_span(span)
    assert not span.is_recording()


def test_a_root_under_always_on_is_the_sdks_root() -> None:
    provider = make_provider(TracingSettings.model_construct(sample_ratio=1.0))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    invalid = trace.INVALID_SPAN.get_span_context()
    fast = start_child(tracer, "root", invalid, None)
    assert fast is not None
    fast.end()
    tracer.start_span("root").end()
    first, second = exporter.get_finished_spans()
    assert first.parent is None and second.parent is None
    assert first.context is not None and second.context is not None
    assert first.context.trace_id != second.context.trace_id
    assert first.context.trace_flags == second.context.trace_flags
    assert first.context.trace_state == second.context.trace_state
    assert (first.resource, first.instrumentation_scope) == (second.resource, second.instrumentation_scope)
    ratio = make_provider(TracingSettings.model_construct(sample_ratio=0.5)).get_tracer("t")
    assert start_child(ratio, "root", invalid, None) is None  # a ratio decides on the trace id


def test_the_kind_is_the_one_asked_for() -> None:
    from opentelemetry.trace import SpanKind

    tracer = TracerProvider(sampler=ALWAYS_ON).get_tracer("t")
    span = start_child(tracer, "served", trace.INVALID_SPAN.get_span_context(), None, kind=SpanKind.SERVER)
    assert isinstance(span, ReadableSpan) and span.kind is SpanKind.SERVER
    child = start_child(tracer, "c", span.get_span_context(), None)
    assert isinstance(child, ReadableSpan) and child.kind is SpanKind.INTERNAL
