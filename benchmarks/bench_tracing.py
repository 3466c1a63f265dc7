"""Tracing overhead: Geode's instrumentation against untraced, OpenInference and bare OpenTelemetry spans.

Same process, same programs (a ``dspy.Predict`` and a ``dspy.ReAct`` agent with one tool, both on
``ScriptedLM``, so the LM costs next to nothing and the overhead is visible), modes interleaved round
by round so machine load hits them alike; each figure is the median over rounds of the mean ms per
call.

Part 1 — overhead, every traced mode exporting through the same tracer provider (Geode's bounded
batch processor into a discarding exporter):

- ``untraced``: no instrumentation;
- ``DSPy dispatch``: a no-op ``BaseCallback`` registered: DSPy's own cost of calling any callback
  (part of Geode's cost, listed to show where the time goes);
- ``Geode``: ``geode.instrument``;
- ``OpenInference``: ``openinference-instrumentation-dspy``'s ``DSPyInstrumentor``;
- ``bare-span floor``: the spans Geode records for one call (same names, same attributes, same
  nesting) created with the plain OpenTelemetry API, without running the program.

Part 2 — Geode's real export pipeline (``build_tracing``: redaction, OTLP/HTTP) with the collector
up, down (connection refused) and hanging (accepts, never answers). "Up" is a real Phoenix with
``--phoenix``, otherwise a loopback OTLP sink that answers 200 (said so in the output).

Run: ``.venv/bin/python benchmarks/bench_tracing.py [--rounds 15] [--phoenix] [--json out.json]``
"""

from __future__ import annotations

import argparse
import gc
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dspy
from dspy.utils.callback import BaseCallback
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer, set_span_in_context
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from geode.runtime.instrumentation import instrument, uninstrument
from geode.runtime.settings import PhoenixSettings, Settings, TracingSettings
from geode.runtime.tracing import BatchExportProcessor, Destination, TracingPipeline, build_tracing, make_provider
from geode.testing import ScriptedLM

console = Console()

# -- the programs ------------------------------------------------------------------------------------


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def _react_answers(messages: list[dict[str, str]]) -> dict[str, Any]:
    if "next_tool_name" in messages[0]["content"]:
        if "observation_0" in messages[-1]["content"]:
            return {"next_thought": "Done.", "next_tool_name": "finish", "next_tool_args": {}}
        return {"next_thought": "Look it up.", "next_tool_name": "get_weather", "next_tool_args": {"city": "Paris"}}
    return {"reasoning": "The tool said so.", "answer": "sunny"}


@dataclass
class Workload:
    name: str
    program: dspy.Module
    lm: ScriptedLM
    calls: int
    inputs: Callable[[int], dict[str, Any]]

    def run(self) -> None:
        program, inputs = self.program, self.inputs
        with dspy.context(lm=self.lm):
            for i in range(self.calls):
                program(**inputs(i))


def workloads(predict_calls: int, react_calls: int) -> list[Workload]:
    react: Any = dspy.ReAct("question -> answer", tools=[get_weather], max_iters=4)  # type: ignore[arg-type]
    return [
        Workload(
            "Predict",
            dspy.Predict("question -> answer"),
            ScriptedLM(lambda messages: {"answer": "Paris"}),
            predict_calls,
            lambda i: {"question": f"What is the capital of France? ({i})"},
        ),
        Workload(
            "ReAct (3 LM calls, 1 tool)",
            react,
            ScriptedLM(_react_answers),
            react_calls,
            lambda i: {"question": f"Weather in Paris? ({i})"},
        ),
    ]


# -- tracer providers and modes ----------------------------------------------------------------------


class Discard(SpanExporter):
    """Accepts every batch and keeps nothing."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def discarding_provider() -> TracerProvider:
    provider = make_provider(TracingSettings.model_construct())
    provider.add_span_processor(BatchExportProcessor([Destination("discard", Discard())], max_queue_size=1_000_000))
    return provider


class NoOp(BaseCallback):
    """A callback that does nothing: what DSPy's callback dispatch alone costs."""


@dataclass
class SpanShape:
    name: str
    attributes: dict[str, Any]
    children: list[SpanShape] = field(default_factory=list["SpanShape"])


def record_shapes(workload: Workload) -> list[SpanShape]:
    """The spans Geode records for one call of the workload, as a tree of names and attributes."""
    provider = make_provider(TracingSettings.model_construct())
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrument(tracer_provider=provider)
    try:
        with dspy.context(lm=workload.lm):
            workload.program(**workload.inputs(0))
    finally:
        uninstrument()
    spans = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0)
    nodes = {s.context.span_id: SpanShape(s.name, dict(s.attributes or {})) for s in spans if s.context}
    roots: list[SpanShape] = []
    for span in spans:
        if span.context is None:
            continue
        node = nodes[span.context.span_id]
        if span.parent is not None and span.parent.span_id in nodes:
            nodes[span.parent.span_id].children.append(node)
        else:
            roots.append(node)
    return roots


def _replay(tracer: Tracer, shapes: list[SpanShape], context: Any = None) -> None:
    for shape in shapes:
        span = tracer.start_span(shape.name, context=context, attributes=shape.attributes)
        if shape.children:
            _replay(tracer, shape.children, set_span_in_context(span))
        span.end()


def count_spans(shapes: list[SpanShape]) -> int:
    return sum(1 + count_spans(s.children) for s in shapes)


@contextmanager
def mode(name: str, provider: TracerProvider) -> Iterator[None]:
    if name == "Geode":
        instrument(tracer_provider=provider)
        try:
            yield
        finally:
            uninstrument()
    elif name == "OpenInference":
        from openinference.instrumentation.dspy import DSPyInstrumentor

        instrumentor = DSPyInstrumentor()
        instrumentor.instrument(tracer_provider=provider)
        try:
            yield
        finally:
            instrumentor.uninstrument()
    elif name == "DSPy dispatch":
        with dspy.context(callbacks=[NoOp()]):
            yield
    else:
        yield


def timed(fn: Callable[[], None], calls: int) -> float:
    gc.collect()
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000 / calls


# -- part 1 ------------------------------------------------------------------------------------------

MODES = ("untraced", "DSPy dispatch", "Geode", "OpenInference", "bare-span floor")


def overhead(rounds: int, predict_calls: int, react_calls: int) -> dict[str, dict[str, float]]:
    provider = discarding_provider()
    tracer = provider.get_tracer("floor")
    loads = workloads(predict_calls, react_calls)
    shapes = {w.name: record_shapes(w) for w in loads}
    samples: dict[str, dict[str, list[float]]] = {w.name: {m: [] for m in MODES} for w in loads}
    for w in loads:  # warm every path once
        for m in MODES[:-1]:
            with mode(m, provider):
                w.run()
    with progress() as bar:
        task = bar.add_task("overhead rounds", total=rounds)
        for _ in range(rounds):
            for w in loads:
                for m in MODES:
                    if m == "bare-span floor":
                        tree = shapes[w.name]

                        def replay(tree: list[SpanShape] = tree, calls: int = w.calls) -> None:
                            for _ in range(calls):
                                _replay(tracer, tree)

                        samples[w.name][m].append(timed(replay, w.calls))
                    else:
                        with mode(m, provider):
                            samples[w.name][m].append(timed(w.run, w.calls))
            bar.advance(task)
    provider.shutdown()
    result: dict[str, dict[str, float]] = {}
    for w in loads:
        medians = {m: statistics.median(v) for m, v in samples[w.name].items()}
        medians["spans per call"] = count_spans(shapes[w.name])
        result[w.name] = medians
    return result


# -- part 2 ------------------------------------------------------------------------------------------


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def collector(kind: str, use_phoenix: bool) -> Iterator[tuple[str, str]]:
    """``(url, label)`` of a collector that is up, down (refusing) or hanging."""
    if kind == "down":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        yield f"http://127.0.0.1:{port}", "down (connection refused)"
    elif kind == "hanging":
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(256)
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}", "hanging (accepts, never answers)"
        finally:
            sock.close()
    elif use_phoenix:
        with phoenix_server() as url:
            yield url, "up (real Phoenix)"
    else:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}", "up (loopback OTLP sink)"
        finally:
            server.shutdown()
            server.server_close()


@contextmanager
def phoenix_server() -> Iterator[str]:
    from geode.runtime.phoenix import PhoenixServer, find_free_port

    with tempfile.TemporaryDirectory(prefix="geode-bench-phoenix-") as folder:
        settings = PhoenixSettings(port=find_free_port(), grpc_port=find_free_port())
        server = PhoenixServer(settings, working_dir=Path(folder))
        console.print("starting Phoenix (this takes a while)...")
        status = server.start(progress=True)
        try:
            yield status.url
        finally:
            server.stop()


def pipeline_for(url: str) -> TracingPipeline:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    settings = Settings(
        home=Path(tempfile.mkdtemp(prefix="geode-bench-")),
        tracing=TracingSettings(endpoint=url, export_timeout_s=2.0),
        phoenix=PhoenixSettings(port=free),
    )
    return build_tracing(settings)


def export_faults(rounds: int, calls: int, use_phoenix: bool) -> list[dict[str, Any]]:
    workload = workloads(calls, 1)[0]
    rows: list[dict[str, Any]] = []
    stack: list[Any] = []
    pipelines: dict[str, tuple[str, TracingPipeline]] = {}
    try:
        for kind in ("up", "down", "hanging"):
            cm = collector(kind, use_phoenix)
            url, label = cm.__enter__()
            stack.append(cm)
            pipelines[kind] = (label, pipeline_for(url))
        samples: dict[str, list[float]] = {k: [] for k in ("untraced", *pipelines)}
        with mode("Geode", pipelines["up"][1].provider):
            workload.run()
        with progress() as bar:
            task = bar.add_task("export rounds", total=rounds)
            for _ in range(rounds):
                samples["untraced"].append(timed(workload.run, calls))
                for kind, (_, pipeline) in pipelines.items():
                    with mode("Geode", pipeline.provider):
                        samples[kind].append(timed(workload.run, calls))
                bar.advance(task)
        base = statistics.median(samples["untraced"])
        rows.append({"collector": "untraced", "ms_per_call": base, "overhead_ms": 0.0, "exported": "", "dropped": ""})
        for kind, (label, pipeline) in pipelines.items():
            pipeline.force_flush(timeout_s=3)
            stats = pipeline.stats
            ms = statistics.median(samples[kind])
            rows.append(
                {
                    "collector": label,
                    "ms_per_call": ms,
                    "overhead_ms": ms - base,
                    "exported": sum(stats.exported.values()),
                    "dropped": stats.dropped,
                }
            )
        for _, pipeline in pipelines.values():
            started = time.monotonic()
            pipeline.shutdown(timeout_s=1.0)
            rows_shutdown = time.monotonic() - started
            for row in rows:
                if row["collector"] == _:
                    row["shutdown_s"] = rows_shutdown
    finally:
        for cm in reversed(stack):
            cm.__exit__(None, None, None)
    return rows


# -- output ------------------------------------------------------------------------------------------


@contextmanager
def progress() -> Iterator[Progress]:
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        yield bar


def print_overhead(result: dict[str, dict[str, float]]) -> None:
    for name, m in result.items():
        base = m["untraced"]
        geode = m["Geode"] - base
        oi = m["OpenInference"] - base
        dispatch = m["DSPy dispatch"] - base
        floor = m["bare-span floor"]
        table = Table(title=f"{name}: ms per call ({int(m['spans per call'])} spans per call)")
        for column in ("mode", "ms/call", "added ms/call", "vs Geode"):
            table.add_column(column, justify="right" if column != "mode" else "left")
        table.add_row("untraced", f"{base:.3f}", "", "")
        table.add_row("DSPy dispatch (no-op callback)", f"{m['DSPy dispatch']:.3f}", f"{dispatch:.3f}", "")
        table.add_row("Geode", f"{m['Geode']:.3f}", f"{geode:.3f}", "1.00x")
        table.add_row("OpenInference", f"{m['OpenInference']:.3f}", f"{oi:.3f}", f"{oi / geode:.2f}x")
        table.add_row("bare-span floor (spans only)", "", f"{floor:.3f}", f"{floor / geode:.2f}x")
        console.print(table)
        console.print(
            f"  Geode adds {geode:.3f} ms/call; OpenInference adds {oi / geode:.1f}x that; "
            f"Geode is {geode / floor:.2f}x the bare-span floor; "
            f"Geode's own work above DSPy's dispatch: {geode - dispatch:.3f} ms = {(geode - dispatch) / floor:.2f}x the floor"
        )


def print_faults(rows: list[dict[str, Any]]) -> None:
    table = Table(title="Predict with Geode's export pipeline: collector up, down, hanging")
    for column in ("collector", "ms/call", "added ms/call", "exported", "dropped", "shutdown s"):
        table.add_column(column, justify="right" if column != "collector" else "left")
    for row in rows:
        table.add_row(
            row["collector"],
            f"{row['ms_per_call']:.3f}",
            f"{row['overhead_ms']:.3f}",
            str(row["exported"]),
            str(row["dropped"]),
            f"{row['shutdown_s']:.2f}" if "shutdown_s" in row else "",
        )
    console.print(table)
    up = rows[1]["overhead_ms"]
    for row in rows[2:]:
        console.print(f"  {row['collector']}: overhead {row['overhead_ms'] / up:.2f}x the overhead with the collector up")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--predict-calls", type=int, default=200)
    parser.add_argument("--react-calls", type=int, default=40)
    parser.add_argument("--phoenix", action="store_true", help="measure 'up' against a real Phoenix server")
    parser.add_argument("--skip-faults", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    result = overhead(args.rounds, args.predict_calls, args.react_calls)
    print_overhead(result)
    faults: list[dict[str, Any]] = []
    if not args.skip_faults:
        faults = export_faults(args.rounds, args.predict_calls, args.phoenix)
        print_faults(faults)
    if args.json:
        args.json.write_text(json.dumps({"overhead": result, "export": faults}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
