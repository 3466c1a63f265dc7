"""CPU the span export worker spends per served request: OTLP encoding and redaction, ours vs the anchors.

The spans are real: a ``dspy.Predict`` served by :func:`geode.runtime.serving.create_app` on ScriptedLM
(in process), three spans per request (server root, module, LM). On them, in this process:

- encoding a 512-span batch to OTLP/protobuf bytes with the OpenTelemetry SDK's encoder (what
  ``opentelemetry-exporter-otlp-proto-http`` sends) vs Geode's direct wire encoder (the same message);
- redacting them with Geode's ``SpanRedactor`` with and without the substring prefilter that skips
  the secret patterns.

Run: ``.venv/bin/python benchmarks/bench_export.py`` (``--requests N`` for more spans).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dspy
from fastapi.testclient import TestClient
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich.console import Console
from rich.table import Table

from geode.runtime.runtime import Runtime
from geode.runtime.serving import HostedProgram, create_app
from geode.runtime.settings import Settings, TracingSettings
from geode.runtime.tracing import make_provider
from geode.runtime.tracing.otlp_proto import encode_request
from geode.runtime.tracing.redaction import SpanRedactor
from geode.testing import ScriptedLM


def served_spans(requests: int) -> list[ReadableSpan]:
    """The spans of ``requests`` served calls, as the export worker receives them."""

    def echo(messages: list[dict[str, str]]) -> dict[str, Any]:
        return {"answer": "echo: " + messages[-1]["content"].split("[[ ## question ## ]]")[-1][:40]}

    provider = make_provider(TracingSettings.model_construct())
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(home=Path(tempfile.mkdtemp()), tracing=TracingSettings(enabled=False))
    rt = Runtime(settings, lm=ScriptedLM(echo), tracer_provider=provider)
    app = create_app(rt, [HostedProgram(dspy.Predict("question -> answer"), name="qa")], feedback_sinks=[])
    with TestClient(app) as client:
        for n in range(requests):
            assert client.post("/programs/qa", json={"question": f"question {n}?"}).status_code == 200
    rt.close()
    return list(exporter.get_finished_spans())


def per_span_us(fn: Callable[[], object], spans: int) -> float:
    """Best of 7 runs (interference only ever adds time), in microseconds per span."""
    return min(timeit.repeat(fn, number=3, repeat=7)) / 3 / spans * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    console = Console()
    spans = served_spans(args.requests)
    per_request = len(spans) / args.requests
    batch: Sequence[ReadableSpan] = spans[:512]
    # Same message either way, or the comparison means nothing.
    ours = ExportTraceServiceRequest.FromString(encode_request(batch))
    assert ours == ExportTraceServiceRequest.FromString(encode_spans(batch).SerializeToString())
    redactor = SpanRedactor()

    def redact_without_prefilter() -> None:
        for span in batch:
            redactor.redact(span)

    import geode.runtime.tracing.redaction as redaction

    prefilter = redaction.may_hold_secret

    def redact_with(enabled: bool) -> Callable[[], None]:
        def run() -> None:
            redaction.may_hold_secret = prefilter if enabled else (lambda text: True)
            try:
                redact_without_prefilter()
            finally:
                redaction.may_hold_secret = prefilter

        return run

    rows = [
        (
            "OTLP/protobuf encoding",
            "OpenTelemetry SDK encoder",
            per_span_us(lambda: encode_spans(batch).SerializeToString(), len(batch)),
            per_span_us(lambda: encode_request(batch), len(batch)),
        ),
        (
            "redaction (secret patterns)",
            "every string through the patterns",
            per_span_us(redact_with(False), len(batch)),
            per_span_us(redact_with(True), len(batch)),
        ),
    ]
    table = Table(title=f"Export worker CPU on served spans ({per_request:.0f} spans per request)")
    for column in ("step", "anchor", "anchor µs/span", "Geode µs/span", "speed-up", "Geode ms/request"):
        table.add_column(column, justify="left" if column in ("step", "anchor") else "right")
    for step, anchor, theirs, mine in rows:
        table.add_row(
            step,
            anchor,
            f"{theirs:.1f}",
            f"{mine:.1f}",
            f"{theirs / mine:.1f}x",
            f"{mine * per_request / 1000:.3f}",
        )
    console.print(table)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    console.print(f"load average (1, 5, 15 min): {load} on {os.cpu_count()} CPUs; best of 7 runs")


if __name__ == "__main__":
    main()
