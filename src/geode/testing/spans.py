"""Hand-built span trees in Geode's vocabulary, for testing trace readers, mining and rendering.

:class:`SpanTreeBuilder` emits a :class:`SpanNode` tree as finished OpenTelemetry SDK spans (through a
real ``TracerProvider`` into an ``InMemorySpanExporter``) on a deterministic clock, so traces sort the
same way every run. :func:`agent_run_tree` and :func:`workflow_run_tree` give the shapes Geode's
instrumentation writes: an AGENT run with predictor steps, LLM calls and TOOL calls, and a workflow
CHAIN with fixed steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode
from opentelemetry.util.types import AttributeValue

from geode.traces.vocab import GeodeAttributes, SpanAttributes, ToolAttributes

__all__ = ["SpanNode", "SpanTreeBuilder", "agent_run_tree", "workflow_run_tree"]

_KIND = SpanAttributes.OPENINFERENCE_SPAN_KIND
_T0 = 1_790_000_000_000_000_000
"""A fixed start (2026-09-21, in ns since the epoch), so hand-built traces sort deterministically."""


@dataclass(frozen=True)
class SpanNode:
    """One span to emit, with its children (emitted in order, each after the previous one ends)."""

    name: str
    kind: str
    """OpenInference span kind: ``AGENT``, ``CHAIN``, ``LLM``, ``TOOL``, ``RETRIEVER``..."""
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict[str, AttributeValue])
    children: Sequence[SpanNode] = ()
    error: str | None = None
    """Record a ``ValueError`` with this message and set ERROR status; otherwise the status is OK."""


class SpanTreeBuilder:
    """Emits :class:`SpanNode` trees as finished SDK spans into an ``InMemorySpanExporter``.

    Args:
        project: Recorded as the ``openinference.project.name`` resource attribute.
        step_ms: Simulated time between consecutive span starts and ends.

    Example:
        >>> builder = SpanTreeBuilder()
        >>> trace_id = builder.emit(SpanNode("run", "CHAIN", children=[SpanNode("lm", "LLM")]))
        >>> [s.name for s in builder.spans()]
        ['lm', 'run']
    """

    def __init__(self, project: str = "geode-test", *, step_ms: int = 5) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(resource=Resource.create({"openinference.project.name": project}))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("geode.testing.spans")
        self.step_ns = step_ms * 1_000_000
        self.now_ns = _T0

    def emit(self, node: SpanNode, *, gap_ms: int = 0) -> str:
        """Emit one trace, ``gap_ms`` after the previous one ended; returns its trace id (32 hex digits)."""
        self.now_ns += gap_ms * 1_000_000
        span = self._emit(node, None)
        return format(span.get_span_context().trace_id, "032x")

    def spans(self) -> tuple[ReadableSpan, ...]:
        """Every span emitted so far, in the order they ended."""
        return self.exporter.get_finished_spans()

    def shutdown(self) -> None:
        """Shut the tracer provider down."""
        self.provider.shutdown()

    def _tick(self) -> int:
        self.now_ns += self.step_ns
        return self.now_ns

    def _emit(self, node: SpanNode, parent: otel_trace.Span | None) -> otel_trace.Span:
        context = otel_trace.set_span_in_context(parent) if parent is not None else None
        attributes = {_KIND: node.kind, **node.attributes}
        span = self.tracer.start_span(
            node.name, context=context, attributes=attributes, start_time=self._tick()
        )
        for child in node.children:
            self._emit(child, span)
        if node.error is not None:
            try:
                raise ValueError(node.error)
            except ValueError as err:
                span.record_exception(err, timestamp=self._tick())
            span.set_status(Status(StatusCode.ERROR, node.error))
        else:
            span.set_status(Status(StatusCode.OK))
        span.end(end_time=self._tick())
        return span


def _identity(program: str, session: str | None) -> dict[str, AttributeValue]:
    identity: dict[str, AttributeValue] = {GeodeAttributes.PROGRAM_NAME: program}
    if session is not None:
        identity[SpanAttributes.SESSION_ID] = session
    return identity


def _llm(identity: Mapping[str, AttributeValue], text: str, prompt_tokens: int) -> SpanNode:
    return SpanNode(
        "ScriptedLM.__call__",
        "LLM",
        {
            **identity,
            SpanAttributes.LLM_MODEL_NAME: "scripted",
            SpanAttributes.LLM_TOKEN_COUNT_PROMPT: prompt_tokens,
            SpanAttributes.LLM_TOKEN_COUNT_COMPLETION: 10,
            SpanAttributes.LLM_TOKEN_COUNT_TOTAL: prompt_tokens + 10,
            "llm.input_messages.0.message.role": "system",
            "llm.input_messages.0.message.content": "You are a careful assistant.",
            "llm.input_messages.1.message.role": "user",
            "llm.input_messages.1.message.content": text,
        },
    )


def agent_run_tree(
    *,
    program: str = "app:agent",
    session: str | None = "s-1",
    iterations: int = 2,
    tool_error: str | None = None,
    agent_error: str | None = None,
) -> SpanNode:
    """An AGENT run: per iteration a CHAIN predictor step around an LLM call, then a TOOL call.

    Args:
        program: ``geode.program.name`` on every span.
        session: ``session.id`` on every span (omitted when ``None``).
        iterations: Number of think-act rounds.
        tool_error: Make the last TOOL call fail with this message.
        agent_error: Make the AGENT span itself fail with this message.
    """
    identity = _identity(program, session)
    children: list[SpanNode] = []
    for i in range(iterations):
        step = SpanNode(
            "Predict.forward",
            "CHAIN",
            {**identity, GeodeAttributes.PREDICTOR_NAME: "react", GeodeAttributes.AGENT_ITERATION: i + 1},
            [_llm(identity, f"step {i}", 100 + i)],
        )
        tool = SpanNode(
            "search",
            "TOOL",
            {**identity, ToolAttributes.TOOL_NAME: "search", SpanAttributes.INPUT_VALUE: '{"query": "x"}'},
            error=tool_error if i == iterations - 1 else None,
        )
        children += [step, tool]
    return SpanNode(
        "Agent.forward",
        "AGENT",
        {
            **identity,
            SpanAttributes.INPUT_VALUE: "What is 2+2?",
            SpanAttributes.OUTPUT_VALUE: "4",
            SpanAttributes.METADATA: '{"team": "geo", "nested": {"a": 1}}',
            SpanAttributes.TAG_TAGS: ("demo", "unit"),
            GeodeAttributes.PROGRAM_KIND: "agent",
            GeodeAttributes.AGENT_ITERATIONS: iterations,
            GeodeAttributes.AGENT_TERMINATION: "error" if agent_error else "finish",
        },
        children,
        error=agent_error,
    )


def workflow_run_tree(
    *, program: str = "app:workflow", session: str | None = None, steps: int = 2
) -> SpanNode:
    """A workflow run: a CHAIN root with one CHAIN step per predictor, each around an LLM call."""
    identity = _identity(program, session)
    children = [
        SpanNode(
            f"step_{i}.forward",
            "CHAIN",
            {**identity, GeodeAttributes.WORKFLOW_STEP: i, GeodeAttributes.PREDICTOR_NAME: f"step_{i}"},
            [_llm(identity, f"workflow step {i}", 50 + i)],
        )
        for i in range(steps)
    ]
    return SpanNode(
        "Workflow.forward",
        "CHAIN",
        {**identity, GeodeAttributes.PROGRAM_KIND: "workflow", SpanAttributes.INPUT_VALUE: "hello"},
        children,
    )
