"""Traces held in memory: OpenTelemetry SDK spans (an ``InMemorySpanExporter``) or ready-made records."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from geode.errors import TraceSourceError
from geode.traces.records import SpanRecord, TraceRecord, group_traces
from geode.traces.sources.base import TraceFilter, TraceWait, normalize_trace_id, poll_until_complete

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["FinishedSpans", "InMemoryTraceSource"]


@runtime_checkable
class FinishedSpans(Protocol):
    """Anything that hands out finished spans, like OpenTelemetry's ``InMemorySpanExporter``."""

    def get_finished_spans(self) -> Sequence[ReadableSpan]:
        """The spans finished so far."""
        ...


class InMemoryTraceSource:
    """A :class:`~geode.traces.sources.TraceSource` over spans in this process.

    Args:
        spans: An exporter with ``get_finished_spans()`` (read again on every call, so spans that finish
            later show up), or a fixed collection of SDK spans and/or :class:`SpanRecord` objects.

    Example:
        >>> from opentelemetry.sdk.trace import TracerProvider
        >>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        >>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        >>> exporter = InMemorySpanExporter()
        >>> provider = TracerProvider()
        >>> provider.add_span_processor(SimpleSpanProcessor(exporter))
        >>> with provider.get_tracer("doc").start_as_current_span("run"):
        ...     pass
        >>> [trace.root.name for trace in InMemoryTraceSource(exporter).traces()]
        ['run']
    """

    def __init__(self, spans: FinishedSpans | Iterable[ReadableSpan | SpanRecord]) -> None:
        self._exporter: FinishedSpans | None = None
        self._fixed: tuple[SpanRecord, ...] = ()
        if isinstance(spans, FinishedSpans):
            self._exporter = spans
        else:
            self._fixed = tuple(_record(s) for s in spans)

    @property
    def description(self) -> str:
        """Where the traces come from."""
        return "in-memory spans"

    def records(self) -> list[SpanRecord]:
        """Every span currently held, as records."""
        if self._exporter is None:
            return list(self._fixed)
        return [SpanRecord.from_readable_span(s) for s in self._exporter.get_finished_spans()]

    def traces(self, filter: TraceFilter | None = None) -> Iterator[TraceRecord]:
        """The traces matching ``filter``, newest first."""
        wanted = filter or TraceFilter()
        wanted.require_no_where(self.description)
        count = 0
        for trace in group_traces(self.records()):
            if wanted.limit is not None and count >= wanted.limit:
                return
            if wanted.matches(trace):
                count += 1
                yield trace

    def run_programs(self, filter: TraceFilter | None = None) -> Iterator[tuple[str, ...]]:
        """The program names of each run matching ``filter``, newest first."""
        return (trace.program_names for trace in self.traces(filter))

    def trace(self, trace_id: str) -> TraceRecord:
        """One trace by id.

        Raises:
            TraceSourceError: No span of that trace is held.
        """
        found = self._read([normalize_trace_id(trace_id)])
        if not found:
            raise TraceSourceError(f"trace {trace_id} is not among the {self.description}")
        return next(iter(found.values()))

    def wait_for(
        self, trace_ids: Iterable[str], *, timeout_s: float = 60.0, poll_s: float = 0.05
    ) -> TraceWait:
        """Wait until these traces are complete (an exporter may still be receiving their spans)."""
        return poll_until_complete(
            self._read, trace_ids, source=self.description, timeout_s=timeout_s, poll_s=poll_s
        )

    def _read(self, trace_ids: list[str]) -> Mapping[str, TraceRecord]:
        wanted = set(trace_ids)
        return {t.trace_id: t for t in group_traces(s for s in self.records() if s.trace_id in wanted)}


def _record(span: ReadableSpan | SpanRecord) -> SpanRecord:
    return span if isinstance(span, SpanRecord) else SpanRecord.from_readable_span(span)
