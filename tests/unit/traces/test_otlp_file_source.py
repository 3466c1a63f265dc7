from __future__ import annotations

import json
from pathlib import Path

import pytest

from geode.errors import TraceSourceError
from geode.testing.spans import SpanTreeBuilder, agent_run_tree, workflow_run_tree
from geode.traces.otlp_json import dumps_request, encode_spans
from geode.traces.records import SpanRecord
from geode.traces.sources import InMemoryTraceSource, OtlpFileTraceSource, TraceFilter


def _append_batches(path: Path, builder: SpanTreeBuilder, batch: int = 3) -> None:
    # As the runtime's file exporter does: one ExportTraceServiceRequest per line, per exported batch.
    spans = builder.spans()
    with path.open("a", encoding="utf-8") as handle:
        for start in range(0, len(spans), batch):
            handle.write(dumps_request(encode_spans(spans[start : start + batch])) + "\n")


def test_round_trip_equals_in_memory(builder: SpanTreeBuilder, tmp_path: Path) -> None:
    builder.emit(agent_run_tree(tool_error="no results"))
    builder.emit(workflow_run_tree(), gap_ms=100)
    path = tmp_path / "spans.jsonl"
    _append_batches(path, builder)
    from_file = list(OtlpFileTraceSource(path).traces())
    in_memory = list(InMemoryTraceSource(builder.exporter).traces())
    assert from_file == in_memory
    assert [t.root.kind for t in from_file if t.root] == ["CHAIN", "AGENT"]


def test_filters_and_project(builder: SpanTreeBuilder, tmp_path: Path) -> None:
    agent = builder.emit(agent_run_tree(program="app:agent"))
    workflow = builder.emit(workflow_run_tree(program="app:workflow"), gap_ms=100)
    other = SpanTreeBuilder(project="elsewhere")
    other_id = other.emit(agent_run_tree(program="app:agent"), gap_ms=500)
    path = tmp_path / "spans.jsonl"
    _append_batches(path, builder)
    _append_batches(path, other)
    other.shutdown()
    source = OtlpFileTraceSource(path)
    assert [t.trace_id for t in source.traces(TraceFilter(program="app:agent"))] == [other_id, agent]
    scoped = OtlpFileTraceSource(path, project="geode-test")
    assert [t.trace_id for t in scoped.traces()] == [workflow, agent]
    assert "project 'geode-test'" in scoped.description
    with pytest.raises(TraceSourceError, match="not in"):
        scoped.trace(other_id)
    with pytest.raises(TraceSourceError, match="SpanQuery"):
        list(source.traces(TraceFilter(where="span_kind == 'LLM'")))


def test_reads_incrementally_and_waits_for_a_growing_file(builder: SpanTreeBuilder, tmp_path: Path) -> None:
    trace_id = builder.emit(agent_run_tree())
    spans = builder.spans()
    path = tmp_path / "spans.jsonl"
    source = OtlpFileTraceSource(path)
    assert source.wait_for([trace_id], timeout_s=0).missing == (trace_id,)  # no file yet: not an error
    line = dumps_request(encode_spans(spans[:-1])) + "\n"
    path.write_text(line)
    assert not source.trace(trace_id).complete  # the root is still missing
    root_line = dumps_request(encode_spans(spans[-1:]))
    with path.open("a") as handle:
        handle.write(root_line[:40])  # the writer is mid-line: not a bad line, just not there yet
    assert not source.trace(trace_id).complete
    assert source.bad_lines == 0
    with path.open("a") as handle:
        handle.write(root_line[40:] + "\n")
    result = source.wait_for([trace_id], timeout_s=2)
    assert result.complete and len(result.traces[0].spans) == len(spans)
    assert result.source == f"OTLP-JSON file {path}"


def test_last_line_without_newline_is_read(builder: SpanTreeBuilder, tmp_path: Path) -> None:
    trace_id = builder.emit(agent_run_tree())
    path = tmp_path / "spans.json"
    path.write_text(dumps_request(encode_spans(builder.spans())))
    assert OtlpFileTraceSource(path).trace(trace_id).complete


def test_pretty_printed_document(builder: SpanTreeBuilder, tmp_path: Path) -> None:
    trace_id = builder.emit(agent_run_tree())
    path = tmp_path / "export.json"
    path.write_text(json.dumps(encode_spans(builder.spans()), indent=2))
    assert OtlpFileTraceSource(path).trace(trace_id).complete


def test_truncated_file_is_read_again(builder: SpanTreeBuilder, tmp_path: Path) -> None:
    first = builder.emit(agent_run_tree())
    path = tmp_path / "spans.jsonl"
    _append_batches(path, builder)
    source = OtlpFileTraceSource(path)
    assert [t.trace_id for t in source.traces()] == [first]
    fresh = SpanTreeBuilder()
    second = fresh.emit(workflow_run_tree())
    path.write_text("")  # rotated/truncated by the writer
    _append_batches(path, fresh)
    fresh.shutdown()
    assert [t.trace_id for t in source.traces()] == [second]


def test_folder_reads_every_span_file(builder: SpanTreeBuilder, tmp_path: Path) -> None:
    first = builder.emit(agent_run_tree())
    _append_batches(tmp_path / "a.jsonl", builder)
    other = SpanTreeBuilder()
    second = other.emit(workflow_run_tree(), gap_ms=100)
    _append_batches(tmp_path / "b.jsonl", other)
    other.shutdown()
    (tmp_path / "notes.txt").write_text("not spans")
    source = OtlpFileTraceSource(tmp_path)
    assert {t.trace_id for t in source.traces()} == {first, second}
    assert source.description == f"OTLP-JSON folder {tmp_path}"


def test_corrupt_middle_line_is_skipped_and_counted(builder: SpanTreeBuilder, tmp_path: Path) -> None:
    trace_id = builder.emit(agent_run_tree())
    path = tmp_path / "spans.jsonl"
    lines = [dumps_request(encode_spans([s])) for s in builder.spans()]
    # A crashed writer left half a line; a new process appended after it.
    path.write_text("\n".join([*lines[:2], '{"resourceSpans": [{"scopeSpans', *lines[2:]]) + "\n")
    source = OtlpFileTraceSource(path)
    assert source.trace(trace_id).complete
    assert source.bad_lines == 1


def test_not_otlp_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "other.jsonl"
    path.write_text('{"hello": "world"}\n{"also": 1}\n')
    with pytest.raises(TraceSourceError, match="not an OTLP-JSON lines file"):
        list(OtlpFileTraceSource(path).traces())
    text = tmp_path / "notes.json"
    text.write_text("hello\nworld\n")
    with pytest.raises(TraceSourceError, match="neither OTLP-JSON lines nor"):
        list(OtlpFileTraceSource(text).traces())
    with pytest.raises(TraceSourceError, match="no OTLP-JSON file at"):
        list(OtlpFileTraceSource(tmp_path / "missing.jsonl").traces())


def test_span_record_from_collector_style_ints() -> None:
    # The Collector's file exporter and hand-written files may carry times and ints as numbers.
    span = SpanRecord.from_otlp_json(
        {
            "traceId": "A" * 32,
            "spanId": "b" * 16,
            "name": "x",
            "startTimeUnixNano": 1_790_000_000_000_000_000,
            "endTimeUnixNano": 1_790_000_000_500_000_000,
            "attributes": [
                {"key": "n", "value": {"intValue": 3}},
                {"key": "ok", "value": {"boolValue": True}},
            ],
            "status": {"code": 2, "message": "bad"},
        }
    )
    assert span.trace_id == "a" * 32
    assert span.duration_ms == pytest.approx(500.0)
    assert span.attributes["n"] == 3 and span.attributes["ok"] is True
    assert (span.status, span.status_message, span.kind) == ("ERROR", "bad", "UNKNOWN")
