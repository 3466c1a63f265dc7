"""The export pipeline against real loopback collectors: up, refusing, hanging; files; projects; limits."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tests.unit.runtime.tracing.conftest import Sink

from geode.errors import ConfigError
from geode.runtime.phoenix import PhoenixServer
from geode.runtime.settings import PhoenixSettings, Settings, TracingSettings
from geode.runtime.tracing import TracingPipeline, build_tracing, resolve_endpoint
from geode.traces.otlp_json import decode_attributes, iter_spans, read_requests
from geode.traces.records import SpanRecord


def _pipeline(tmp_path: Path, **tracing: Any) -> TracingPipeline:
    settings = Settings(
        home=tmp_path / "home",
        tracing=TracingSettings(**tracing),
        # Nothing answers here, so no test picks up a Phoenix running on the machine.
        phoenix=PhoenixSettings(port=_free_port()),
    )
    return build_tracing(settings)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _emit(provider: TracerProvider, count: int, **attributes: Any) -> float:
    """End ``count`` spans as the application would; returns the seconds it took."""
    tracer = provider.get_tracer("test")
    started = time.perf_counter()
    for i in range(count):
        with tracer.start_as_current_span(
            f"span {i}", attributes={"geode.program.name": "prog", **attributes}
        ):
            pass
    return time.perf_counter() - started


def _drop_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "geode.tracing" and r.levelno >= logging.WARNING]


def test_spans_reach_a_running_collector(tmp_path: Path, sink: Sink) -> None:
    pipeline = _pipeline(tmp_path, endpoint=sink.url, project="shop")
    _emit(pipeline.provider, 20)
    assert pipeline.force_flush(timeout_s=5)
    assert len(sink.spans()) == 20
    assert sink.resources()[0]["openinference.project.name"] == "shop"
    assert sink.headers[0]["content-type"] == "application/x-protobuf"
    assert pipeline.stats.exported == {pipeline.endpoint: 20}
    assert pipeline.stats.dropped == 0
    pipeline.shutdown(timeout_s=2)


def test_refusing_collector_drops_are_counted_and_logged_once(
    tmp_path: Path, refusing_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = _pipeline(tmp_path, endpoint=refusing_url, export_timeout_s=1.0)
    with caplog.at_level(logging.WARNING, logger="geode.tracing"):
        _emit(pipeline.provider, 30)
        assert pipeline.force_flush(timeout_s=5)
        _emit(pipeline.provider, 30)
        assert pipeline.force_flush(timeout_s=5)
    assert pipeline.stats.failed == {pipeline.endpoint: 60}
    assert pipeline.stats.dropped == 60
    warnings = _drop_warnings(caplog)
    assert len(warnings) == 1
    assert refusing_url in warnings[0].getMessage()
    pipeline.shutdown(timeout_s=1)


def test_hanging_collector_never_blocks_the_app_and_shutdown_keeps_its_deadline(
    tmp_path: Path, hanging_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = _pipeline(tmp_path, endpoint=hanging_url, export_timeout_s=3.0, queue_size=64)
    with caplog.at_level(logging.WARNING, logger="geode.tracing"):
        _emit(pipeline.provider, 70)
        time.sleep(0.3)  # the worker is now stuck sending the first batch
        # Ending spans never waits for the exporter: 1000 spans take far less than one export timeout.
        elapsed = _emit(pipeline.provider, 1000)
        assert elapsed < 2.0
        assert pipeline.stats.dropped_queue_full > 800

        started = time.monotonic()
        assert pipeline.force_flush(timeout_s=0.3) is False
        assert time.monotonic() - started < 1.5

        started = time.monotonic()
        pipeline.shutdown(timeout_s=0.5)
        assert time.monotonic() - started < 1.5
    stats = pipeline.stats
    assert stats.dropped_after_shutdown > 0
    assert len(_drop_warnings(caplog)) == 1


def test_an_oversized_attribute_is_truncated_and_its_batch_still_arrives(tmp_path: Path, sink: Sink) -> None:
    pipeline = _pipeline(tmp_path, endpoint=sink.url, max_attribute_length=1000)
    _emit(pipeline.provider, 5)
    _emit(pipeline.provider, 1, **{"input.value": "x" * 5_000_000})
    _emit(pipeline.provider, 5)
    assert pipeline.force_flush(timeout_s=10)
    spans = sink.spans()
    assert len(spans) == 11
    (big,) = [s for s in spans if any(kv.key == "input.value" for kv in s.attributes)]
    values = {kv.key: kv.value for kv in big.attributes}
    assert len(values["input.value"].string_value) == 1000
    assert values["geode.truncated"].bool_value is True
    pipeline.shutdown(timeout_s=2)


def test_otlp_json_file_holds_one_request_per_batch_readable_by_trace_readers(tmp_path: Path) -> None:
    path = tmp_path / "traces" / "spans.jsonl"
    pipeline = _pipeline(tmp_path, otlp_file=path, project="offline")
    assert pipeline.endpoint is None
    _emit(
        pipeline.provider, 3, **{"input.value": "token sk-abcdefghijklmnopqrstuvwxyz", "tag.tags": ("a", "b")}
    )
    assert pipeline.force_flush(timeout_s=5)
    _emit(pipeline.provider, 2)
    pipeline.shutdown(timeout_s=5)

    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert all(isinstance(json.loads(line)["resourceSpans"], list) for line in lines)
    found = [span for request in read_requests(path) for span in iter_spans(request)]
    assert len(found) == 5
    assert found[0].resource["openinference.project.name"] == "offline"
    first = found[0].span
    assert len(first["traceId"]) == 32 and len(first["spanId"]) == 16
    assert isinstance(first["startTimeUnixNano"], str)
    attributes = decode_attributes(first["attributes"])
    assert attributes["input.value"] == "token [REDACTED]"
    assert attributes["tag.tags"] == ("a", "b")
    record = SpanRecord.from_otlp_json(first)
    assert record.name == "span 0"
    assert record.attributes["geode.redacted"] is True


def test_program_field_in_project_gives_each_program_its_project(tmp_path: Path, sink: Sink) -> None:
    pipeline = _pipeline(tmp_path, endpoint=sink.url, project="geode-{program}")
    tracer = pipeline.provider.get_tracer("t")
    for program in ("examples:qa", "billing agent"):
        with tracer.start_as_current_span("x", attributes={"geode.program.name": program}):
            pass
    with tracer.start_as_current_span("no program"):
        pass
    assert pipeline.force_flush(timeout_s=5)
    projects = sorted(r["openinference.project.name"] for r in sink.resources())
    assert projects == ["geode", "geode-billing-agent", "geode-examples-qa"]
    pipeline.shutdown(timeout_s=2)


def test_sample_ratio_zero_exports_nothing(tmp_path: Path, sink: Sink) -> None:
    pipeline = _pipeline(tmp_path, endpoint=sink.url, sample_ratio=0.0)
    _emit(pipeline.provider, 10)
    assert pipeline.force_flush(timeout_s=5)
    assert sink.spans() == []
    assert pipeline.stats.dropped == 0
    pipeline.shutdown(timeout_s=2)


def test_default_endpoint_is_the_local_phoenix_only_when_something_listens(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        up = Settings(home=tmp_path, tracing=TracingSettings(), phoenix=PhoenixSettings(port=port))
        assert resolve_endpoint(up) == f"http://127.0.0.1:{port}"
    finally:
        listener.close()
    started = time.monotonic()
    down = Settings(home=tmp_path, tracing=TracingSettings(), phoenix=PhoenixSettings(port=port))
    assert resolve_endpoint(down) is None
    assert time.monotonic() - started < 0.5


def test_default_endpoint_follows_a_geode_phoenix_that_moved_to_another_port(tmp_path: Path) -> None:
    """`geode phoenix` picks a free port when the configured one is taken and records it in its state."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    configured = socket.socket()
    configured.bind(("127.0.0.1", 0))
    unused_port = configured.getsockname()[1]
    configured.close()  # nothing listens on the configured port
    settings = Settings(home=tmp_path, tracing=TracingSettings(), phoenix=PhoenixSettings(port=unused_port))
    server = PhoenixServer.from_settings(settings)
    server.state_path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "pid": os.getpid(),
        "host": "127.0.0.1",
        "port": port,
        "grpc_port": 0,
        "url": f"http://127.0.0.1:{port}",
        "working_dir": str(tmp_path),
        "started_at": time.time(),
    }
    server.state_path.write_text(json.dumps(state))
    try:
        assert resolve_endpoint(settings) == f"http://127.0.0.1:{port}"
    finally:
        listener.close()
    assert resolve_endpoint(settings) is None  # recorded, but no longer listening


def test_invalid_endpoint_and_patterns_fail_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an http"):
        _pipeline(tmp_path, endpoint="localhost:6006")
    with pytest.raises(ConfigError, match="regular expression"):
        _pipeline(tmp_path, redact_patterns=("[",))


def test_spans_ended_after_shutdown_are_counted(tmp_path: Path, sink: Sink) -> None:
    pipeline = _pipeline(tmp_path, endpoint=sink.url)
    pipeline.shutdown(timeout_s=1)
    provider = pipeline.provider
    # The provider is shut down too; a tracer obtained earlier still ends spans into the processor.
    pipeline.processor.on_end(_finished_span(provider))
    assert pipeline.stats.dropped_after_shutdown == 1


def _finished_span(provider: TracerProvider) -> Any:
    other = TracerProvider()
    exporter = InMemorySpanExporter()
    other.add_span_processor(SimpleSpanProcessor(exporter))
    with other.get_tracer("t").start_as_current_span("late"):
        pass
    return exporter.get_finished_spans()[0]


def test_after_a_failure_the_exporter_rests_then_recovers(tmp_path: Path, sink: Sink) -> None:
    pipeline = _pipeline(tmp_path, endpoint=sink.url)
    sink.status = 500
    _emit(pipeline.provider, 3)
    assert pipeline.force_flush(timeout_s=5)
    assert sink.posts == 1
    sink.status = 200
    _emit(pipeline.provider, 3)
    assert pipeline.force_flush(timeout_s=5)
    assert sink.posts == 1, "a batch right after a failure is dropped without being sent"
    time.sleep(1.1)
    _emit(pipeline.provider, 4)
    assert pipeline.force_flush(timeout_s=5)
    assert sink.posts == 2
    assert len(sink.spans()) == 4
    assert pipeline.stats.failed == {pipeline.endpoint: 6}
    pipeline.shutdown(timeout_s=2)
