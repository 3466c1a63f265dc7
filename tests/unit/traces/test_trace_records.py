from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from geode.errors import TraceSourceError
from geode.testing.spans import SpanTreeBuilder, agent_run_tree
from geode.traces.otlp_json import encode_spans
from geode.traces.records import SpanRecord, TraceRecord, group_traces
from geode.traces.sources import iter_otlp_spans


def _records(builder: SpanTreeBuilder) -> list[SpanRecord]:
    return [SpanRecord.from_readable_span(s) for s in builder.spans()]


def test_readable_span_becomes_a_record(builder: SpanTreeBuilder) -> None:
    trace_id = builder.emit(agent_run_tree(tool_error="no results"))
    trace = TraceRecord.from_spans(_records(builder))
    assert trace.trace_id == trace_id
    root = trace.root
    assert root is not None and root.is_root
    assert (root.name, root.kind, root.status) == ("Agent.forward", "AGENT", "OK")
    assert root.attributes["openinference.span.kind"] == "AGENT"
    assert root.input_value == "What is 2+2?" and root.output_value == "4"
    assert root.session_id == "s-1"
    assert root.tags == ("demo", "unit")
    assert root.metadata == {"team": "geo", "nested": {"a": 1}}
    assert root.start_time.tzinfo is UTC
    assert root.duration_ms is not None and root.duration_ms > 0
    failed = trace.find(kind="TOOL")[-1]
    assert failed.status == "ERROR" and failed.status_message == "no results"
    assert failed.exception is not None
    assert (failed.exception.type, failed.exception.message) == ("ValueError", "no results")
    assert failed.exception.stacktrace and "ValueError: no results" in failed.exception.stacktrace
    llm = trace.find(kind="LLM")[0]
    assert (llm.prompt_tokens, llm.completion_tokens, llm.total_tokens) == (100, 10, 110)
    assert llm.indexed("llm.input_messages") == [
        {"message.role": "system", "message.content": "You are a careful assistant."},
        {"message.role": "user", "message.content": "step 0"},
    ]


def test_tree_helpers_walk_in_start_order(builder: SpanTreeBuilder) -> None:
    builder.emit(agent_run_tree(iterations=2))
    trace = TraceRecord.from_spans(_records(builder))
    assert [(s.kind, s.name, depth) for s, depth in trace.walk()] == [
        ("AGENT", "Agent.forward", 0),
        ("CHAIN", "Predict.forward", 1),
        ("LLM", "ScriptedLM.__call__", 2),
        ("TOOL", "search", 1),
        ("CHAIN", "Predict.forward", 1),
        ("LLM", "ScriptedLM.__call__", 2),
        ("TOOL", "search", 1),
    ]
    root = trace.root
    assert root is not None
    assert [c.kind for c in trace.children(root)] == ["CHAIN", "TOOL", "CHAIN", "TOOL"]
    chain = trace.children(root)[0]
    assert trace.parent(chain) == root
    assert [s.kind for s in trace.descendants(chain)] == ["LLM"]
    assert trace.span(chain.span_id) == chain
    assert trace.complete
    assert trace.total_tokens == 110 + 111
    assert trace.status == "OK"
    assert trace.attribute("geode.program.name") == "app:agent"


def test_missing_parent_makes_trace_incomplete_but_walkable(builder: SpanTreeBuilder) -> None:
    builder.emit(agent_run_tree())
    records = [r for r in _records(builder) if r.kind != "CHAIN"]  # the LLM spans lose their parent
    trace = TraceRecord.from_spans(records)
    assert not trace.complete
    assert trace.root is not None and trace.root.kind == "AGENT"
    assert {s.kind for s in trace.roots} == {"AGENT", "LLM"}
    assert len(list(trace.walk())) == len(records)
    without_root = TraceRecord.from_spans([r for r in records if not r.is_root])
    assert without_root.root is None and not without_root.complete
    assert without_root.status == "UNSET"  # no root to ask, and no span failed


def test_status_without_root_reflects_failed_spans(builder: SpanTreeBuilder) -> None:
    builder.emit(agent_run_tree(tool_error="boom"))
    orphans = [r for r in _records(builder) if not r.is_root]
    assert TraceRecord.from_spans(orphans).status == "ERROR"


def test_group_traces_newest_first_and_dedupes(builder: SpanTreeBuilder) -> None:
    first = builder.emit(agent_run_tree(program="a"))
    second = builder.emit(agent_run_tree(program="b"), gap_ms=1000)
    records = _records(builder)
    traces = group_traces([*records, *records[:3]])
    assert [t.trace_id for t in traces] == [second, first]
    assert sum(len(t.spans) for t in traces) == len(records)
    with pytest.raises(TraceSourceError, match="one trace"):
        TraceRecord.from_spans(records)
    with pytest.raises(TraceSourceError, match="belongs to trace"):
        TraceRecord(first, tuple(records))


def test_otlp_json_round_trip_equals_sdk_records(builder: SpanTreeBuilder) -> None:
    builder.emit(agent_run_tree(tool_error="boom"))
    direct = sorted(_records(builder), key=lambda s: s.span_id)
    decoded = sorted(iter_otlp_spans(encode_spans(builder.spans())), key=lambda s: s.span_id)
    assert decoded == direct  # every field, attributes and events included


def _as_phoenix_dict(record: SpanRecord) -> dict[str, Any]:
    # The shape Phoenix's GET /v1/projects/{project}/spans returns (probed against Phoenix 20.26):
    # span kind popped out of the attributes, metadata JSON expanded, ISO timestamps.
    attributes: dict[str, Any] = {
        k: list(v) if isinstance(v, tuple) else v for k, v in record.attributes.items()
    }
    attributes.pop("openinference.span.kind")
    if "metadata" in attributes:
        attributes["metadata"] = {"team": "geo", "nested": {"a": 1}}
    return {
        "id": "U3Bhbjox",
        "name": record.name,
        "context": {"trace_id": record.trace_id, "span_id": record.span_id},
        "span_kind": record.kind,
        "parent_id": record.parent_id,
        "start_time": record.start_time.isoformat(),
        "end_time": record.end_time.isoformat() if record.end_time else None,
        "status_code": record.status,
        "status_message": record.status_message,
        "attributes": attributes,
        "events": [
            {"name": e.name, "timestamp": e.time.isoformat(), "attributes": dict(e.attributes)}
            for e in record.events
        ],
    }


def test_phoenix_span_dicts_give_the_same_records(builder: SpanTreeBuilder) -> None:
    builder.emit(agent_run_tree(tool_error="boom"))
    for record in _records(builder):
        from_phoenix = SpanRecord.from_phoenix(_as_phoenix_dict(record))
        assert (from_phoenix.trace_id, from_phoenix.span_id, from_phoenix.parent_id) == (
            record.trace_id,
            record.span_id,
            record.parent_id,
        )
        assert (from_phoenix.kind, from_phoenix.status, from_phoenix.start_time, from_phoenix.end_time) == (
            record.kind,
            record.status,
            record.start_time,
            record.end_time,
        )
        assert from_phoenix.metadata == record.metadata
        assert from_phoenix.tags == record.tags
        assert from_phoenix.exception == record.exception
        same_keys = {k for k in record.attributes if k != "metadata"}
        assert {k: from_phoenix.attributes[k] for k in same_keys} == {
            k: record.attributes[k] for k in same_keys
        }


def test_phoenix_dataframe_rows_give_records(builder: SpanTreeBuilder) -> None:
    builder.emit(agent_run_tree())
    records = _records(builder)
    # Phoenix's spans dataframe: one column per attribute path, NaN where a span lacks it.
    rows = []
    for r in records:
        row: dict[str, Any] = {
            "name": r.name,
            "span_kind": r.kind,
            "parent_id": r.parent_id,
            "start_time": pd.Timestamp(r.start_time),
            "end_time": pd.Timestamp(r.end_time),
            "status_code": r.status,
            "status_message": "",
            "events": [],
            "context.span_id": r.span_id,
            "context.trace_id": r.trace_id,
        }
        row.update(
            {f"attributes.{k}": list(v) if isinstance(v, tuple) else v for k, v in r.attributes.items()}
        )
        rows.append(row)
    frame = pd.DataFrame(rows).set_index("context.span_id")
    rebuilt = [
        SpanRecord.from_phoenix_row({**row.to_dict(), "context.span_id": idx})
        for idx, row in frame.iterrows()
    ]
    by_id = {r.span_id: r for r in records}
    for got in rebuilt:
        want = by_id[got.span_id]
        assert got.parent_id == want.parent_id
        assert got.start_time == want.start_time
        assert dict(got.attributes) == dict(want.attributes)  # NaN columns of other spans dropped


@pytest.mark.parametrize(
    ("span", "message"),
    [
        ({"name": "x"}, "without"),
        (
            {"context": {"trace_id": "a" * 32, "span_id": "b" * 16}, "name": "x", "start_time": "yesterday"},
            "ISO",
        ),
    ],
)
def test_bad_phoenix_dicts_raise(span: dict[str, Any], message: str) -> None:
    with pytest.raises(TraceSourceError, match=message):
        SpanRecord.from_phoenix(span)


@pytest.mark.parametrize(
    "span",
    [
        {"spanId": "b" * 16, "name": "x", "startTimeUnixNano": "1"},
        {"traceId": "nothex" * 5 + "zz", "spanId": "b" * 16, "name": "x", "startTimeUnixNano": "1"},
        {"traceId": "a" * 32, "spanId": "b" * 16, "name": "x", "startTimeUnixNano": "soon"},
    ],
)
def test_bad_otlp_spans_raise(span: dict[str, Any]) -> None:
    with pytest.raises(TraceSourceError, match="not an OTLP-JSON span"):
        SpanRecord.from_otlp_json(span)


def test_records_are_frozen_and_hash_by_identity() -> None:
    now = datetime.now(UTC)
    span = SpanRecord(
        "a" * 32, "b" * 16, None, "x", "CHAIN", now, now + timedelta(milliseconds=2), attributes={"k": 1}
    )
    with pytest.raises(TypeError):
        span.attributes["k"] = 2  # type: ignore[index]
    same = SpanRecord(
        "a" * 32, "b" * 16, None, "x", "CHAIN", now, now + timedelta(milliseconds=2), attributes={"k": 1}
    )
    assert span == same and hash(span) == hash(same) and len({span, same}) == 1
    assert span.duration_ms == pytest.approx(2.0)
    assert span.get_int("k") == 1 and span.get_str("k") is None and span.total_tokens is None


def _span(**attributes: Any) -> SpanRecord:
    now = datetime.now(UTC)
    return SpanRecord("a" * 32, "b" * 16, None, "x", "TOOL", now, now, attributes=attributes)


def test_json_attributes_read_the_same_from_either_shape() -> None:
    # What a writer stores (JSON strings) and what Phoenix returns for it (expanded dotted keys).
    written = _span(
        **{
            "tool.name": "lookup",
            "tool.parameters": '{"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]}',
            "metadata": '{"ticket": "T-1"}',
            "retrieval.documents.0.document.id": "d1",
            "retrieval.documents.0.document.metadata": '{"source": "a.pdf", "pages": [{"n": 1}, {"n": 2}]}',
        }
    )
    from_phoenix = _span(
        **{
            "tool.name": "lookup",
            "tool.parameters.type": "object",
            "tool.parameters.properties.item.type": "string",
            "tool.parameters.required": ("item",),
            "metadata.ticket": "T-1",
            "retrieval.documents.0.document.id": "d1",
            "retrieval.documents.0.document.metadata.source": "a.pdf",
            "retrieval.documents.0.document.metadata.pages.0.n": 1,
            "retrieval.documents.0.document.metadata.pages.1.n": 2,
        }
    )
    assert written.canonical_attributes() == from_phoenix.canonical_attributes()
    assert from_phoenix.json_attribute("tool.parameters") == {
        "type": "object",
        "properties": {"item": {"type": "string"}},
        "required": ["item"],
    }
    assert from_phoenix.metadata == written.metadata == {"ticket": "T-1"}
    assert written.json_attribute("tool.name") == "lookup"  # a plain string that is not JSON
    assert written.json_attribute("missing") is None
    assert _span(metadata="[1, 2]").metadata == {}  # JSON, but not an object
