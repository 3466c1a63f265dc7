"""Readers of finished traces behind one interface, :class:`TraceSource`.

- :class:`PhoenixTraceSource`: the Phoenix server the runtime exports to (``arize-phoenix-client``).
- :class:`OtlpFileTraceSource`: the runtime's own OTLP-JSON span files.
- :class:`InMemoryTraceSource`: spans in this process (an ``InMemorySpanExporter``), for tests.

Code that reads right after a run should call :meth:`TraceSource.wait_for` with the trace ids it
expects and a deadline: Phoenix ingests asynchronously and can lag by many seconds.
"""

from geode.traces.sources.base import (
    ProgramRuns,
    TraceFilter,
    TraceSource,
    TraceWait,
    latest_trace,
    normalize_trace_id,
    programs_with_runs,
)
from geode.traces.sources.memory import InMemoryTraceSource
from geode.traces.sources.otlp_file import OtlpFileTraceSource, iter_otlp_spans
from geode.traces.sources.phoenix import PhoenixTraceSource, phoenix_base_url

__all__ = [
    "InMemoryTraceSource",
    "OtlpFileTraceSource",
    "PhoenixTraceSource",
    "ProgramRuns",
    "TraceFilter",
    "TraceSource",
    "TraceWait",
    "iter_otlp_spans",
    "latest_trace",
    "normalize_trace_id",
    "phoenix_base_url",
    "programs_with_runs",
]
