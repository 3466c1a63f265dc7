"""The OTLP-JSON encoding: standard field spellings, and a lossless round trip through the decoders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from geode.errors import TraceSourceError
from geode.traces.otlp_json import (
    decode_any_value,
    dumps_request,
    encode_any_value,
    encode_spans,
    iter_requests,
    iter_spans,
    read_requests,
)


def _spans() -> list[ReadableSpan]:
    provider = TracerProvider(resource=Resource({"service.name": "svc", "openinference.project.name": "p"}))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("scope-a", "1.2")
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER, attributes={"n": 3, "f": 0.5, "b": True}):
        with tracer.start_as_current_span("child", attributes={"tags": ("x", "y"), "ints": (1, 2)}) as child:
            child.add_event("note", {"k": "v"})
            child.set_status(StatusCode.ERROR, "bad thing")
    return list(exporter.get_finished_spans())


def test_any_values_use_the_otlp_json_spellings() -> None:
    assert encode_any_value("s") == {"stringValue": "s"}
    assert encode_any_value(True) == {"boolValue": True}
    assert encode_any_value(2**40) == {"intValue": str(2**40)}
    assert encode_any_value(1.5) == {"doubleValue": 1.5}
    assert encode_any_value(math.inf) == {"doubleValue": "Infinity"}
    assert encode_any_value(b"\x00\xff") == {"bytesValue": "AP8="}
    assert encode_any_value({"a": 1}) == {
        "kvlistValue": {"values": [{"key": "a", "value": {"intValue": "1"}}]}
    }
    for value in ("s", True, 7, 1.5, ("a", "b"), {"a": 1}, b"\x01"):
        decoded = decode_any_value(json.loads(json.dumps(encode_any_value(value))))
        assert decoded == value


def test_spans_encode_to_a_standard_export_request() -> None:
    spans = _spans()
    request = json.loads(dumps_request(encode_spans(spans)))
    (resource_spans,) = request["resourceSpans"]
    (scope_spans,) = resource_spans["scopeSpans"]
    assert scope_spans["scope"] == {"name": "scope-a", "version": "1.2"}
    by_name = {s["name"]: s for s in scope_spans["spans"]}
    root, child = by_name["root"], by_name["child"]
    assert root["kind"] == 2  # SPAN_KIND_SERVER
    assert child["kind"] == 1  # SPAN_KIND_INTERNAL
    assert "parentSpanId" not in root
    assert child["parentSpanId"] == root["spanId"]
    assert child["traceId"] == root["traceId"] and len(root["traceId"]) == 32
    assert int(root["endTimeUnixNano"]) >= int(root["startTimeUnixNano"]) > 0
    assert child["status"] == {"code": 2, "message": "bad thing"}
    assert root["status"] == {"code": 0}
    assert child["events"][0]["name"] == "note"
    assert {"key": "n", "value": {"intValue": "3"}} in root["attributes"]

    (found_root,) = [s for s in iter_spans(request) if s.span["name"] == "root"]
    assert found_root.resource == {"service.name": "svc", "openinference.project.name": "p"}
    assert found_root.scope == "scope-a"


def test_a_truncated_last_line_is_skipped_but_corruption_elsewhere_raises(tmp_path: Path) -> None:
    good = dumps_request(encode_spans(_spans()))
    path = tmp_path / "spans.jsonl"
    path.write_text(good + "\n" + good + "\n" + good[: len(good) // 2])
    assert len(list(read_requests(path))) == 2

    with pytest.raises(TraceSourceError, match=":1 is not OTLP-JSON"):
        list(iter_requests(["{oops", good]))
    with pytest.raises(TraceSourceError, match="cannot read"):
        list(read_requests(tmp_path / "missing.jsonl"))
