"""Geode's plain attribute values stored past the SDK's cleaning end up exactly as the SDK would store them."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.trace import NonRecordingSpan, Span

from geode.runtime.instrumentation._fast_attributes import set_attributes
from geode.testing import in_memory_tracing

PLAIN: dict[str, Any] = {"a": "text", "b": 3, "c": 1.5, "d": True, "e": ""}


def _stored(setter: Any, *batches: dict[str, Any], limits: SpanLimits | None = None) -> dict[str, Any]:
    provider = TracerProvider(span_limits=limits) if limits is not None else in_memory_tracing()[0]
    span = provider.get_tracer("t").start_span("s")
    for batch in batches:
        setter(span, batch)
    span.end()
    return dict(span.attributes or {})  # pyright: ignore[reportAttributeAccessIssue]


def _sdk(span: Span, attributes: dict[str, Any]) -> None:
    span.set_attributes(attributes)


@pytest.mark.parametrize(
    "batches",
    [
        (PLAIN,),
        (PLAIN, {"a": "again", "f": 2}),  # a re-set key moves last, as in the SDK
        ({"t": ("x", "y")}, PLAIN),  # a tuple of strings: stored as the SDK stores it
        ({"t": ()}, PLAIN),
        ({"t": ("x", 1)}, PLAIN),  # a mixed tuple: the SDK's path (it drops the value)
        ({"t": ["x", "y"]}, PLAIN),  # a list: the SDK's path (it stores a tuple)
        ({"n": None, "o": object()}, PLAIN),  # values the SDK drops or turns into text
        ({"": "empty key"}, PLAIN),
    ],
)
def test_same_attributes_in_the_same_order_as_the_sdk(batches: tuple[dict[str, Any], ...]) -> None:
    fast = _stored(set_attributes, *batches)
    sdk = _stored(_sdk, *batches)
    assert fast == sdk
    assert list(fast) == list(sdk)


def test_a_tuple_of_strings_is_stored_as_the_same_tuple() -> None:
    fast = _stored(set_attributes, {"aliases": ("qa", "ask")})
    assert fast == {"aliases": ("qa", "ask")} and type(fast["aliases"]) is tuple


def test_limits_send_values_through_the_sdk() -> None:
    limits = SpanLimits(max_span_attributes=3, max_span_attribute_length=2)
    fast = _stored(set_attributes, PLAIN, limits=limits)
    assert fast == _stored(_sdk, PLAIN, limits=limits)
    assert len(fast) == 3 and all(len(v) <= 2 for v in fast.values() if isinstance(v, str))


def test_an_ended_span_keeps_what_it_had() -> None:
    span = in_memory_tracing()[0].get_tracer("t").start_span("s")
    set_attributes(span, {"a": "before"})
    span.end()
    set_attributes(span, {"a": "after", "b": "new"})
    assert dict(span.attributes or {}) == {"a": "before"}  # pyright: ignore[reportAttributeAccessIssue]


def test_a_non_recording_span_takes_nothing_and_does_not_fail() -> None:
    span = NonRecordingSpan(Span.get_span_context(in_memory_tracing()[0].get_tracer("t").start_span("s")))
    set_attributes(span, PLAIN)
    assert not span.is_recording()
