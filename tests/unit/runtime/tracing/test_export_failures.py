"""Why spans were lost: a collector at capacity (429/503), refusing the key (401) or down (T06)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from tests.unit.runtime.tracing.test_export import _drop_warnings, _emit, _pipeline


@pytest.fixture
def answering() -> Iterator[list[int]]:
    """A collector answering each export with the next status of the list (the last one repeats)."""
    statuses: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(statuses[0] if len(statuses) == 1 else statuses.pop(0))
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    statuses.append(server.server_address[1])  # the port, read by the test, then replaced
    yield statuses
    server.shutdown()
    server.server_close()


def _url(answering: list[int], *statuses: int) -> str:
    port = answering.pop()
    answering.extend(statuses)
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(("status", "kind"), [(503, "rejected"), (429, "rejected"), (401, "unauthorized")])
def test_a_collector_answering_an_error_is_counted_apart_from_one_that_is_down(
    tmp_path: Path, answering: list[int], status: int, kind: str
) -> None:
    pipeline = _pipeline(tmp_path, endpoint=_url(answering, status), export_timeout_s=2.0)
    _emit(pipeline.provider, 20)
    assert pipeline.force_flush(timeout_s=5)
    assert pipeline.stats.failed_by_kind == {kind: 20}
    assert pipeline.stats.dropped == 20
    pipeline.shutdown(timeout_s=1)


def test_a_refused_connection_is_unreachable(tmp_path: Path, refusing_url: str) -> None:
    pipeline = _pipeline(tmp_path, endpoint=refusing_url, export_timeout_s=1.0)
    _emit(pipeline.provider, 10)
    assert pipeline.force_flush(timeout_s=5)
    assert pipeline.stats.failed_by_kind == {"unreachable": 10}
    pipeline.shutdown(timeout_s=1)


def test_each_kind_of_loss_is_logged_once(
    tmp_path: Path, answering: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    # Phoenix first at capacity, then refusing the key: the second is news, so it is logged too.
    pipeline = _pipeline(tmp_path, endpoint=_url(answering, 503, 503, 401), export_timeout_s=2.0)
    pipeline.processor.schedule_delay_s = 60  # exports only on flush: one batch per flush
    with caplog.at_level(logging.WARNING, logger="geode.tracing"):
        _emit(pipeline.provider, 5)  # 503, retried once after 0.5 s: 503 again
        assert pipeline.force_flush(timeout_s=5)
        _emit(pipeline.provider, 5)  # resting after the failure: lost without sending, same kind
        assert pipeline.force_flush(timeout_s=5)
        _rest_over(pipeline)
        _emit(pipeline.provider, 5)  # 401 from now on
        assert pipeline.force_flush(timeout_s=5)
    assert pipeline.stats.failed_by_kind == {"rejected": 10, "unauthorized": 5}
    messages = [r.getMessage() for r in _drop_warnings(caplog)]
    assert len(messages) == 2, messages
    assert "HTTP 503" in messages[0] and "HTTP 401" in messages[1]
    pipeline.shutdown(timeout_s=1)


def _rest_over(pipeline: Any) -> None:
    # After a failure the exporter rests (1 s, doubling) and counts batches as lost without sending;
    # the test ends the rest so the next batch reaches the collector and its new answer.
    for destination in pipeline.processor.destinations:
        destination.exporter._resume_at = 0.0
