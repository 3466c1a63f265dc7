"""Trace sampling for a busy server: keep a share of each program's runs, every error, every run with feedback.

Phoenix on a small machine ingests about 125 spans/s, far less than a server can produce. A plain
head sampler (a ratio decided when the trace starts) would also drop the runs that matter most: the
ones that fail and the ones users comment on. :class:`TraceGate` sits in front of the export processor:

- spans of a trace wait in memory until the trace's root span ends;
- the trace is then exported if its trace id falls in the program's ratio (deterministic, like
  ``TraceIdRatioBased``), or if any of its spans has an error status;
- otherwise it is held for ``hold_s`` seconds: feedback on it (:meth:`TraceGate.keep`) exports it,
  else it is dropped and counted.

Everything is bounded (traces waiting, spans per trace, traces held); what overflows is dropped and
counted, never waited for. The gate runs on the application's thread in ``on_end``, so it only does
dictionary work there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.trace import StatusCode

from geode.traces.vocab import GeodeAttributes

__all__ = ["GateStats", "TraceGate", "install_trace_gate"]

logger = logging.getLogger("geode.serve")

_MAX_ID = 2**64


@dataclass
class GateStats:
    """What the gate did with the traces it saw."""

    sampled: int = 0
    """Traces exported because their id fell in the ratio."""
    errors: int = 0
    """Traces exported because a span failed."""
    feedback: int = 0
    """Held traces exported because feedback arrived."""
    dropped: int = 0
    """Traces dropped: not sampled and no feedback in time, or evicted when a bound was hit."""
    spans_dropped: int = 0
    """Spans dropped with them."""


class TraceGate(SpanProcessor):
    """A span processor deciding per trace whether the ``delegate`` export processor sees it.

    Args:
        delegate: The processor that exports (e.g. the runtime's batch export processor).
        ratio_for: The export ratio for a program name (``None`` for spans without one).
        hold_s: How long an unsampled trace waits for feedback.
        max_traces: Traces waiting for their root plus traces held for feedback; beyond it the oldest
            go first.
        max_spans_per_trace: Spans kept per waiting trace; beyond it the trace is decided early.
        clock: Monotonic clock (for tests).
    """

    def __init__(
        self,
        delegate: SpanProcessor,
        ratio_for: Callable[[str | None], float],
        *,
        hold_s: float = 600.0,
        max_traces: int = 10_000,
        max_spans_per_trace: int = 2_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.delegate = delegate
        self.ratio_for = ratio_for
        self.hold_s = hold_s
        self.max_traces = max_traces
        self.max_spans_per_trace = max_spans_per_trace
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[int, list[ReadableSpan]] = {}
        self._held: OrderedDict[int, tuple[float, list[ReadableSpan]]] = OrderedDict()
        self._kept: OrderedDict[int, float] = OrderedDict()
        self.stats = GateStats()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Pass the start on (the delegate may want it)."""
        self.delegate.on_start(span, parent_context)

    def _sampled(self, trace_id: int, program: str | None) -> bool:
        ratio = self.ratio_for(program)
        return ratio >= 1.0 or (trace_id % _MAX_ID) < ratio * _MAX_ID

    def on_end(self, span: ReadableSpan) -> None:
        """Buffer the span; at the trace's root, export, hold or drop the trace."""
        context = span.context
        if context is None:
            return
        trace_id = context.trace_id
        forward: list[ReadableSpan] = []
        with self._lock:
            now = self._clock()
            self._expire(now)
            if trace_id in self._kept:
                forward = [span]
            else:
                spans = self._open.setdefault(trace_id, [])
                spans.append(span)
                is_root = span.parent is None or span.parent.is_remote
                if is_root or len(spans) >= self.max_spans_per_trace:
                    del self._open[trace_id]
                    forward = self._decide(trace_id, spans, span, now)
                elif len(self._open) + len(self._held) > self.max_traces:
                    self._evict_one()
        for item in forward:
            self.delegate.on_end(item)

    def _decide(
        self, trace_id: int, spans: list[ReadableSpan], last: ReadableSpan, now: float
    ) -> list[ReadableSpan]:
        program = last.attributes.get(GeodeAttributes.PROGRAM_NAME) if last.attributes else None
        if any(s.status.status_code is StatusCode.ERROR for s in spans):
            self.stats.errors += 1
            self._mark_kept(trace_id, now)
            return spans
        if self._sampled(trace_id, program if isinstance(program, str) else None):
            self.stats.sampled += 1
            self._mark_kept(trace_id, now)
            return spans
        self._held[trace_id] = (now, spans)
        while len(self._open) + len(self._held) > self.max_traces and self._held:
            self._evict_one()
        return []

    def _mark_kept(self, trace_id: int, now: float) -> None:
        # Late spans of a kept trace (a shadow run, a streaming tail) go straight through for a while.
        self._kept[trace_id] = now
        while len(self._kept) > self.max_traces:
            self._kept.popitem(last=False)

    def _evict_one(self) -> None:
        if self._held:
            _, (_, spans) = self._held.popitem(last=False)
        elif self._open:
            key = next(iter(self._open))
            spans = self._open.pop(key)
        else:
            return
        self.stats.dropped += 1
        self.stats.spans_dropped += len(spans)

    def _expire(self, now: float) -> None:
        while self._held:
            key, (since, spans) = next(iter(self._held.items()))
            if now - since < self.hold_s:
                break
            del self._held[key]
            self.stats.dropped += 1
            self.stats.spans_dropped += len(spans)
        while self._kept:
            key, since = next(iter(self._kept.items()))
            if now - since < self.hold_s:
                break
            del self._kept[key]

    def keep(self, trace_id: int | str) -> bool:
        """Export a trace after all (feedback arrived); ``True`` if it was held and is now exported."""
        key = int(trace_id, 16) if isinstance(trace_id, str) else trace_id
        with self._lock:
            now = self._clock()
            self._mark_kept(key, now)
            held = self._held.pop(key, None)
            if held is None:
                return False
            self.stats.feedback += 1
        for span in held[1]:
            self.delegate.on_end(span)
        return True

    def shutdown(self) -> None:
        """Shut the delegate down (held traces are dropped)."""
        self.delegate.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Flush the delegate."""
        return self.delegate.force_flush(timeout_millis)


def install_trace_gate(
    provider: TracerProvider,
    ratios: Mapping[str, float],
    default_ratio: float,
    *,
    hold_s: float = 600.0,
) -> TraceGate | None:
    """Put a :class:`TraceGate` in front of the span processors of ``provider``.

    The SDK has no public way to wrap processors already added to a provider, so this replaces the
    provider's processor list in place (``SynchronousMultiSpanProcessor._span_processors``, stable
    across SDK 1.x). When that is not possible the gate is not installed, a warning says so, and every
    trace is exported.

    Returns:
        The gate, or ``None`` when it could not be installed.
    """
    multi = getattr(provider, "_active_span_processor", None)
    processors = getattr(multi, "_span_processors", None)
    lock = getattr(multi, "_lock", None)
    if multi is None or not isinstance(processors, tuple) or lock is None:
        logger.warning(
            "per-program trace sampling is unavailable with this tracer provider; exporting every trace"
        )
        return None
    if len(processors) == 1 and isinstance(processors[0], TraceGate):
        return processors[0]
    inner = processors[0] if len(processors) == 1 else _Fanout(processors)

    def ratio_for(program: str | None) -> float:
        return ratios.get(program, default_ratio) if program is not None else default_ratio

    gate = TraceGate(inner, ratio_for, hold_s=hold_s)
    with lock:
        multi._span_processors = (gate,)
    return gate


class _Fanout(SpanProcessor):
    def __init__(self, processors: tuple[SpanProcessor, ...]) -> None:
        self.processors = processors

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for p in self.processors:
            p.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for p in self.processors:
            p.on_end(span)

    def shutdown(self) -> None:
        for p in self.processors:
            p.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return all(p.force_flush(timeout_millis) for p in self.processors)
