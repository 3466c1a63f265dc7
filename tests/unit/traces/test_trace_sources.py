from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from opentelemetry.sdk.trace import ReadableSpan

from geode.errors import TraceSourceError
from geode.runtime.phoenix import find_free_port
from geode.testing.spans import SpanTreeBuilder, agent_run_tree, workflow_run_tree
from geode.traces.records import SpanRecord
from geode.traces.sources import (
    InMemoryTraceSource,
    PhoenixTraceSource,
    TraceFilter,
    TraceSource,
    latest_trace,
    normalize_trace_id,
    phoenix_base_url,
)
from geode.traces.sources.phoenix import _attribute_param


def _three_runs(builder: SpanTreeBuilder) -> tuple[str, str, str]:
    agent_ok = builder.emit(agent_run_tree(program="app:agent", session="s-1"))
    workflow = builder.emit(workflow_run_tree(program="app:workflow", session="s-2"), gap_ms=1000)
    agent_failed = builder.emit(
        agent_run_tree(program="app:agent", session="s-2", agent_error="boom"), gap_ms=1000
    )
    return agent_ok, workflow, agent_failed


def test_sources_satisfy_the_protocol(builder: SpanTreeBuilder) -> None:
    assert isinstance(InMemoryTraceSource(builder.exporter), TraceSource)
    assert isinstance(PhoenixTraceSource("http://127.0.0.1:1"), TraceSource)


def test_in_memory_filters(builder: SpanTreeBuilder) -> None:
    agent_ok, workflow, agent_failed = _three_runs(builder)
    source = InMemoryTraceSource(builder.exporter)

    def ids(**kwargs: object) -> list[str]:
        return [t.trace_id for t in source.traces(TraceFilter(**kwargs))]  # type: ignore[arg-type]

    assert ids() == [agent_failed, workflow, agent_ok]  # newest first
    assert ids(program="app:agent") == [agent_failed, agent_ok]
    assert ids(session_id="s-2") == [agent_failed, workflow]
    assert ids(status="ERROR") == [agent_failed]
    assert ids(status="OK") == [workflow, agent_ok]
    assert ids(limit=2) == [agent_failed, workflow]
    assert ids(program="app:agent", limit=1) == [agent_failed]
    assert ids(program="nope") == []
    workflow_start = source.trace(workflow).start_time
    assert ids(start=workflow_start) == [agent_failed, workflow]
    assert ids(end=workflow_start) == [agent_ok]
    assert ids(start=workflow_start.replace(tzinfo=None), end=workflow_start + timedelta(microseconds=1)) == [
        workflow
    ]
    latest = latest_trace(source, TraceFilter(program="app:workflow"))
    assert latest is not None and latest.trace_id == workflow
    assert latest_trace(source, TraceFilter(program="none")) is None


def test_in_memory_from_records_and_sdk_spans(builder: SpanTreeBuilder) -> None:
    trace_id = builder.emit(agent_run_tree())
    spans = builder.spans()
    mixed = [SpanRecord.from_readable_span(spans[0]), *spans[1:]]
    source = InMemoryTraceSource(mixed)
    assert source.trace(trace_id).complete
    assert source.trace(trace_id.upper()).trace_id == trace_id
    with pytest.raises(TraceSourceError, match="not among"):
        source.trace("f" * 32)


def test_filter_validation() -> None:
    with pytest.raises(TraceSourceError, match="limit"):
        TraceFilter(limit=0)
    with pytest.raises(TraceSourceError, match="status"):
        TraceFilter(status="FAILED")  # type: ignore[arg-type]
    now = datetime.now(UTC)
    with pytest.raises(TraceSourceError, match="empty"):
        TraceFilter(start=now, end=now)
    assert TraceFilter(start=datetime(2026, 1, 1)).start == datetime(2026, 1, 1, tzinfo=UTC)


def test_where_needs_phoenix(builder: SpanTreeBuilder) -> None:
    with pytest.raises(TraceSourceError, match="SpanQuery"):
        list(InMemoryTraceSource(builder.exporter).traces(TraceFilter(where="span_kind == 'TOOL'")))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A" * 32, "a" * 32),
        ("0x" + "b" * 32, "b" * 32),
        ("12345678-1234-1234-1234-123456789abc", "123456781234123412341234" + "56789abc"),
    ],
)
def test_normalize_trace_id(raw: str, expected: str) -> None:
    assert normalize_trace_id(raw) == expected


@pytest.mark.parametrize("raw", ["", "xyz", "a" * 31, "g" * 32])
def test_normalize_trace_id_rejects(raw: str) -> None:
    with pytest.raises(TraceSourceError, match="not a trace id"):
        normalize_trace_id(raw)


def test_wait_for_returns_found_and_missing_without_overrunning(builder: SpanTreeBuilder) -> None:
    trace_id = builder.emit(agent_run_tree())
    source = InMemoryTraceSource(builder.exporter)
    started = time.monotonic()
    result = source.wait_for([trace_id, "f" * 32], timeout_s=0.3, poll_s=0.02)
    assert time.monotonic() - started < 1.0
    assert [t.trace_id for t in result.traces] == [trace_id]
    assert result.missing == ("f" * 32,)
    assert not result.complete
    assert result.source == "in-memory spans"
    done = source.wait_for([trace_id], timeout_s=5)
    assert done.complete and done.elapsed_s < 1.0


def test_wait_for_sees_a_trace_finish_later() -> None:
    # Spans of a run reach the exporter child-first; the trace only counts once its root has arrived.
    reference = SpanTreeBuilder()
    trace_id = reference.emit(agent_run_tree())
    spans = list(reference.spans())
    reference.shutdown()
    arrived: list[ReadableSpan] = []

    class Trickle:
        def get_finished_spans(self) -> list[ReadableSpan]:
            return list(arrived)

    def feed() -> None:
        for span in spans:
            time.sleep(0.02)
            arrived.append(span)

    source = InMemoryTraceSource(Trickle())
    assert source.wait_for([trace_id], timeout_s=0).missing == (trace_id,)
    worker = threading.Thread(target=feed)
    worker.start()
    result = source.wait_for([trace_id], timeout_s=10, poll_s=0.01)
    worker.join()
    assert result.complete
    assert len(result.traces[0].spans) == len(spans)


def test_phoenix_source_helpers() -> None:
    assert phoenix_base_url("http://127.0.0.1:6006/v1/traces") == "http://127.0.0.1:6006"
    assert phoenix_base_url("http://h:1/") == "http://h:1"
    assert _attribute_param("app:agent") == "app:agent"
    assert _attribute_param("12345") == '"12345"'  # a numeric-looking string still matches as a string
    assert _attribute_param("true") == '"true"'
    assert _attribute_param("") == '""'
    source = PhoenixTraceSource("http://127.0.0.1:6006/v1/traces", project="demo")
    assert source.description == "Phoenix at http://127.0.0.1:6006, project 'demo'"
    with pytest.raises(TraceSourceError, match="project"):
        PhoenixTraceSource("http://127.0.0.1:6006", project="a/b")
    with pytest.raises(TraceSourceError, match="page_size"):
        PhoenixTraceSource("http://127.0.0.1:6006", page_size=5000)


def test_phoenix_source_unreachable_is_a_clear_error() -> None:
    source = PhoenixTraceSource(f"http://127.0.0.1:{find_free_port()}", timeout_s=2)
    with pytest.raises(TraceSourceError, match=r"cannot reach Phoenix.*geode phoenix"):
        list(source.traces())
    with pytest.raises(TraceSourceError, match="cannot reach"):
        source.wait_for(["a" * 32], timeout_s=0.1)
