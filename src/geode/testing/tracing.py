"""In-memory tracing for tests: a tracer provider whose spans land in an ``InMemorySpanExporter``.

Spans pass through the same redaction and truncation as the runtime's export pipeline, synchronously,
so a test sees them as soon as they end.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from geode.runtime.settings import TracingSettings
from geode.runtime.tracing import make_provider, make_redactor
from geode.runtime.tracing.exporters import RedactingExporter
from geode.traces.vocab import SpanAttributes

__all__ = ["in_memory_tracing", "span_tree"]


def in_memory_tracing(settings: TracingSettings | None = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    """A tracer provider exporting synchronously to an in-memory exporter.

    Args:
        settings: Redaction, truncation and sampling settings; default: no hiding, 32k limit, all
            spans sampled (environment variables are ignored).

    Returns:
        ``(provider, exporter)``; pass the provider to ``geode.instrument`` or ``Runtime``, read
        ``exporter.get_finished_spans()``.

    Example:
        >>> provider, exporter = in_memory_tracing()
        >>> with provider.get_tracer("t").start_as_current_span("hello"):
        ...     pass
        >>> [s.name for s in exporter.get_finished_spans()]
        ['hello']
    """
    tracing = settings if settings is not None else TracingSettings.model_construct()
    provider = make_provider(tracing)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(RedactingExporter(exporter, make_redactor(tracing))))
    return provider, exporter


def _sort_key(span: ReadableSpan) -> tuple[int, int]:
    context = span.get_span_context()
    return (span.start_time or 0, context.span_id if context else 0)


def span_tree(spans: Iterable[ReadableSpan]) -> list[dict[str, Any]]:
    """Project spans onto nested ``{"name", "kind", "children"}`` dicts, one per root, in start order.

    ``kind`` is the OpenInference span kind (``AGENT``, ``CHAIN``, ``LLM``, ``TOOL``...). A span whose
    parent is not among ``spans`` counts as a root.

    Example:
        >>> provider, exporter = in_memory_tracing()
        >>> tracer = provider.get_tracer("t")
        >>> with tracer.start_as_current_span("a"):
        ...     with tracer.start_as_current_span("b"):
        ...         pass
        >>> span_tree(exporter.get_finished_spans())
        [{'name': 'a', 'kind': None, 'children': [{'name': 'b', 'kind': None, 'children': []}]}]
    """
    ordered: Sequence[ReadableSpan] = sorted(spans, key=_sort_key)
    nodes: dict[int, dict[str, Any]] = {}
    roots: list[dict[str, Any]] = []
    for span in ordered:
        kind = (span.attributes or {}).get(SpanAttributes.OPENINFERENCE_SPAN_KIND)
        node: dict[str, Any] = {"name": span.name, "kind": kind, "children": []}
        context = span.get_span_context()
        if context is not None:
            nodes[context.span_id] = node
    for span in ordered:
        context = span.get_span_context()
        if context is None:
            continue
        node = nodes[context.span_id]
        parent = span.parent.span_id if span.parent is not None else None
        if parent is not None and parent in nodes:
            nodes[parent]["children"].append(node)
        else:
            roots.append(node)
    return roots
