"""The root span of a served run: opened when the request is admitted, closed with its outcome.

Each request's trace starts at this span whatever trace context the caller sent. It carries the program,
version, role, request id and the visible inputs; it ends with the outputs, or with the error's stable
code.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.trace import INVALID_SPAN_CONTEXT, Link, Span, SpanKind, Status, StatusCode, Tracer

from geode.runtime.instrumentation._fast_attributes import set_attributes
from geode.runtime.instrumentation._fast_span import end_span, open_span, set_ok
from geode.runtime.serving.calls import Call, Outcome, jsonable, visible_inputs
from geode.runtime.serving.errors import describe
from geode.traces.vocab import GeodeAttributes, OpenInferenceMimeTypeValues, SpanAttributes
from geode.traces.vocab import SpanKind as OISpanKind

__all__ = ["finish_span", "start_span"]


def start_span(tracer: Tracer, call: Call, links: Sequence[Link] = ()) -> Span:
    """Open the call's root span (a new trace), linked to ``links`` (a shadow run to its primary)."""
    attrs: dict[str, Any] = {
        SpanAttributes.OPENINFERENCE_SPAN_KIND: OISpanKind.CHAIN.value,
        GeodeAttributes.PROGRAM_NAME: call.hosted.name,
        **({GeodeAttributes.PROGRAM_ALIASES: call.hosted.aliases} if call.hosted.aliases else {}),
        GeodeAttributes.SERVE_ROLE: call.role,
        GeodeAttributes.SERVE_REQUEST_ID: call.request_id,
        SpanAttributes.INPUT_VALUE: json.dumps(jsonable(visible_inputs(call)), ensure_ascii=False),
        SpanAttributes.INPUT_MIME_TYPE: OpenInferenceMimeTypeValues.JSON.value,
    }
    if call.version:
        attrs[GeodeAttributes.PROGRAM_VERSION] = call.version
    if call.session_id:
        attrs[SpanAttributes.SESSION_ID] = call.session_id
    if call.user_id:
        attrs[SpanAttributes.USER_ID] = call.user_id
    # A new root: the request's trace starts here, whatever trace context the caller sent.
    return open_span(
        tracer,
        call.hosted.name,
        INVALID_SPAN_CONTEXT,
        otel_context.Context(),
        attrs,
        kind=SpanKind.SERVER,
        links=links,
    )


def finish_span(call: Call, outcome: Outcome | None, err: BaseException | None) -> None:
    """End the call's span with its outputs, or with the error's code and message."""
    span = call.span
    if span is None:
        return
    with contextlib.suppress(Exception):
        if outcome is not None:
            set_attributes(
                span,
                {
                    SpanAttributes.OUTPUT_VALUE: json.dumps(outcome.outputs, ensure_ascii=False),
                    SpanAttributes.OUTPUT_MIME_TYPE: OpenInferenceMimeTypeValues.JSON.value,
                },
            )
            set_ok(span)
        elif err is not None:
            code, message = describe(err)
            span.set_attribute(GeodeAttributes.SERVE_ERROR_CODE, code)
            span.record_exception(err)
            span.set_status(Status(StatusCode.ERROR, f"{code}: {message}"[:500]))
    end_span(span)
