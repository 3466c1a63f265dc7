"""Typed, frozen span and trace records that every trace reader produces.

A :class:`SpanRecord` is one finished span, whatever it was read from: Phoenix's REST span dicts or a
row of its spans dataframe (:meth:`SpanRecord.from_phoenix`, :meth:`SpanRecord.from_phoenix_row`), an
OTLP-JSON span (:meth:`SpanRecord.from_otlp_json`) or an OpenTelemetry SDK ``ReadableSpan``
(:meth:`SpanRecord.from_readable_span`). A :class:`TraceRecord` holds the spans of one trace with tree
helpers (:attr:`TraceRecord.root`, :meth:`TraceRecord.children`, :meth:`TraceRecord.walk`).

The span record is in :mod:`geode.traces.spans` and attribute values in :mod:`geode.traces.values`;
this module re-exports them, so ``geode.traces.records`` stays the one import for readers and writers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

from geode.errors import TraceSourceError
from geode.traces.spans import ExceptionInfo, SpanEvent, SpanRecord, program_names
from geode.traces.values import AttributeValue, SpanStatus
from geode.traces.vocab import GeodeAttributes

__all__ = [
    "AttributeValue",
    "ExceptionInfo",
    "SpanEvent",
    "SpanRecord",
    "SpanStatus",
    "TraceRecord",
    "group_traces",
]


@dataclass(frozen=True)
class TraceRecord:
    """The spans of one trace, ordered by start time, with tree helpers.

    Example:
        >>> from datetime import UTC, datetime
        >>> now = datetime.now(UTC)
        >>> root = SpanRecord("a" * 32, "1" * 16, None, "agent", "AGENT", now, now)
        >>> llm = SpanRecord("a" * 32, "2" * 16, "1" * 16, "lm", "LLM", now, now)
        >>> trace = TraceRecord.from_spans([llm, root])
        >>> [(span.name, depth) for span, depth in trace.walk()]
        [('agent', 0), ('lm', 1)]
    """

    trace_id: str
    spans: tuple[SpanRecord, ...]

    def __post_init__(self) -> None:
        for span in self.spans:
            if span.trace_id != self.trace_id:
                raise TraceSourceError(
                    f"span {span.span_id} belongs to trace {span.trace_id}, not {self.trace_id}"
                )

    @classmethod
    def from_spans(cls, spans: Iterable[SpanRecord]) -> TraceRecord:
        """Build a trace from the spans of exactly one trace (duplicates by span id are dropped).

        Raises:
            TraceSourceError: No spans, or spans of more than one trace.
        """
        traces = group_traces(spans)
        if len(traces) != 1:
            raise TraceSourceError(f"expected the spans of one trace, got {len(traces)} traces")
        return traces[0]

    # -- tree --------------------------------------------------------------------------------------

    @cached_property
    def _by_id(self) -> dict[str, SpanRecord]:
        return {span.span_id: span for span in self.spans}

    @cached_property
    def _children(self) -> dict[str | None, tuple[SpanRecord, ...]]:
        grouped: dict[str | None, list[SpanRecord]] = defaultdict(list)
        for span in self.spans:
            # A span whose parent never arrived hangs off the top, next to the root.
            parent = span.parent_id if span.parent_id in self._by_id else None
            grouped[parent].append(span)
        return {key: tuple(value) for key, value in grouped.items()}

    @property
    def roots(self) -> tuple[SpanRecord, ...]:
        """Spans without a parent in this trace: the root, plus any orphans whose parent is missing."""
        return self._children.get(None, ())

    @property
    def root(self) -> SpanRecord | None:
        """The span without a parent (the earliest one if there are several); ``None`` if it is missing."""
        return next((span for span in self.roots if span.parent_id is None), None)

    @property
    def complete(self) -> bool:
        """True when the root is present and every span's parent is in the trace."""
        return self.root is not None and all(
            s.parent_id is None or s.parent_id in self._by_id for s in self.spans
        )

    def span(self, span_id: str) -> SpanRecord | None:
        """The span with this id, if present."""
        return self._by_id.get(span_id)

    def parent(self, span: SpanRecord) -> SpanRecord | None:
        """A span's parent, if present in this trace."""
        return self._by_id.get(span.parent_id) if span.parent_id else None

    def children(self, span: SpanRecord | str) -> tuple[SpanRecord, ...]:
        """A span's direct children, ordered by start time."""
        span_id = span if isinstance(span, str) else span.span_id
        return self._children.get(span_id, ())

    def walk(self, start: SpanRecord | None = None) -> Iterator[tuple[SpanRecord, int]]:
        """Depth-first, pre-order ``(span, depth)`` pairs; from ``start``, or from every top-level span."""
        stack: list[tuple[SpanRecord, int]] = (
            [(start, 0)] if start is not None else [(s, 0) for s in self.roots]
        )
        stack.reverse()
        while stack:
            span, depth = stack.pop()
            yield span, depth
            stack.extend((child, depth + 1) for child in reversed(self.children(span)))

    def descendants(self, span: SpanRecord) -> Iterator[SpanRecord]:
        """Every span below ``span``, depth-first."""
        walker = self.walk(span)
        next(walker)
        for descendant, _ in walker:
            yield descendant

    def find(self, *, kind: str | None = None, name: str | None = None) -> list[SpanRecord]:
        """Spans with this OpenInference kind and/or name, ordered by start time."""
        return [
            span
            for span in self.spans
            if (kind is None or span.kind == kind) and (name is None or span.name == name)
        ]

    # -- summary -----------------------------------------------------------------------------------

    @property
    def start_time(self) -> datetime:
        """When the trace's root (or its earliest span) started."""
        root = self.root
        return root.start_time if root is not None else self.spans[0].start_time

    @property
    def duration_ms(self) -> float | None:
        """The root's duration; without a root, from the first start to the last end."""
        root = self.root
        if root is not None:
            return root.duration_ms
        ends = [s.end_time for s in self.spans if s.end_time is not None]
        return (max(ends) - self.start_time).total_seconds() * 1000.0 if ends else None

    @property
    def status(self) -> SpanStatus:
        """The root's status; ``ERROR`` if there is no root and any span failed."""
        root = self.root
        if root is not None:
            return root.status
        return "ERROR" if any(s.status == "ERROR" for s in self.spans) else "UNSET"

    @property
    def program_names(self) -> tuple[str, ...]:
        """The run's program name then its aliases (as :meth:`attribute` finds them)."""
        return program_names(
            self.attribute(GeodeAttributes.PROGRAM_NAME), self.attribute(GeodeAttributes.PROGRAM_ALIASES)
        )

    def attribute(self, key: str) -> AttributeValue | None:
        """The value of ``key`` on the root, or else on the first span that has it."""
        root = self.root
        if root is not None and key in root.attributes:
            return root.attributes[key]
        return next((s.attributes[key] for s in self.spans if key in s.attributes), None)

    @property
    def total_tokens(self) -> int:
        """Tokens summed over LLM spans (the way Phoenix counts a trace's tokens)."""
        return sum(s.total_tokens or 0 for s in self.spans if s.kind == "LLM")


def group_traces(spans: Iterable[SpanRecord]) -> list[TraceRecord]:
    """Group spans into traces (spans sorted by start time, duplicate span ids dropped).

    Traces come back newest first, by their start time.
    """
    by_trace: dict[str, dict[str, SpanRecord]] = defaultdict(dict)
    for span in spans:
        by_trace[span.trace_id].setdefault(span.span_id, span)
    traces = [
        TraceRecord(trace_id, tuple(sorted(by_span.values(), key=lambda s: (s.start_time, s.span_id))))
        for trace_id, by_span in by_trace.items()
    ]
    traces.sort(key=lambda t: t.start_time, reverse=True)
    return traces
