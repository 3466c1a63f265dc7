"""A streaming client that disconnects mid-run (plan row T11).

Injects: a client opens `POST /programs/<name>/stream`, receives the response start, and disconnects
while the program is still running (its generator is abandoned).
Must hold: no "Failed to detach context" error from OpenTelemetry (a context token detached in another
context than it was attached in); every span the run started has ended, the request's root span with
status ERROR `client_closed` (not `internal_error`, as it read before this test); the server counts a 499,
no 5xx.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import dspy
import pytest

from geode.runtime.runtime import Runtime
from geode.runtime.serving import HostedProgram, create_app
from geode.runtime.settings import ServeSettings, Settings, TracingSettings
from geode.testing import ScriptedLM, in_memory_tracing

pytestmark = pytest.mark.reliability


class _Slow(dspy.Module):
    """Calls the LM, then takes a while: the client leaves in between."""

    geode_signature = "question -> answer"

    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.Predict("question -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        first = self.answer(question=question)
        time.sleep(1.0)
        return first


def _scope(path: str, body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


def test_t11_a_client_leaving_a_stream_leaves_no_context_error_and_no_open_span(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    provider, exporter = in_memory_tracing()
    runtime = Runtime(
        lm=ScriptedLM(lambda messages: {"answer": "partial"}),
        settings=Settings(home=tmp_path / "home", tracing=TracingSettings(enabled=False)),
        tracer_provider=provider,
    )
    app = create_app(runtime, [HostedProgram(_Slow(), name="slow")], ServeSettings())
    body = json.dumps({"question": "q"}).encode()
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def scenario() -> None:
        started = asyncio.Event()

        async def receive() -> MutableMapping[str, Any]:
            if pending:
                return pending.pop(0)
            await started.wait()
            await asyncio.sleep(0.2)
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(dict(message))
            if message["type"] == "http.response.start":
                started.set()

        await asyncio.wait_for(app(_scope("/programs/slow/stream", body), receive, send), timeout=10)

    caplog.set_level(logging.ERROR)
    asyncio.run(scenario())
    time.sleep(1.5)  # the abandoned run's thread finishes its sleep and ends its spans
    runtime.close()

    assert sent[0]["status"] == 200
    assert "Failed to detach context" not in caplog.text, caplog.text
    spans = exporter.get_finished_spans()
    roots = [s for s in spans if s.parent is None]
    assert len(roots) == 1, [s.name for s in spans]
    root = roots[0]
    ids = {s.context.span_id for s in spans if s.context}
    orphans = [s.name for s in spans if s.parent is not None and s.parent.span_id not in ids]
    print(
        f"\n[figure] T11: {len(spans)} spans ended after the client left; root {root.name!r} status "
        f"{root.status.status_code.name} ({root.status.description}); orphans {orphans}"
    )
    assert orphans == []  # every child's parent ended and was exported too
    assert root.status.status_code.name == "ERROR"
    assert (root.status.description or "").startswith("client_closed"), root.status.description
    assert dict(root.attributes or {}).get("geode.serve.error_code") == "client_closed"
    metrics = app.state.geode.metrics.exposition().decode()
    assert 'status="499"' in metrics and 'status="5' not in metrics
