"""Where spans go: the tracer provider and export pipeline Geode builds from :class:`TracingSettings`.

:func:`build_tracing` returns a :class:`TracingPipeline`: an OpenTelemetry SDK ``TracerProvider``
whose spans pass through one :class:`~geode.runtime.tracing.processor.BatchExportProcessor` (bounded
queue, worker thread, redaction and truncation, drop counting) to

- OTLP/HTTP: the configured collector (``PHOENIX_COLLECTOR_ENDPOINT``/``GEODE_TRACING_ENDPOINT``), or,
  when none is configured, the local Phoenix if something answers on its port right now;
- an OTLP-JSON lines file, when ``tracing.otlp_file`` is set (offline mining and crystallization).

The project is the ``openinference.project.name`` resource attribute; a ``{program}`` field in the
project setting (``"geode-{program}"``) gives each program its own Phoenix project.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from openinference.semconv.resource import ResourceAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import Tracer
from opentelemetry.trace import TracerProvider as TracerProviderApi

from geode.errors import ConfigError
from geode.runtime.instrumentation import release, retain, tracing_to
from geode.runtime.phoenix import started_phoenix_url
from geode.runtime.settings import PhoenixSettings, Settings, TracingSettings
from geode.runtime.tracing.exporters import (
    OtlpHttpSpanExporter,
    OtlpJsonFileExporter,
    ProjectRoutingExporter,
    RedactingExporter,
    traces_url,
)
from geode.runtime.tracing.processor import BatchExportProcessor, Destination, ExportStats
from geode.runtime.tracing.redaction import SpanRedactor

__all__ = [
    "BatchExportProcessor",
    "Destination",
    "ExportStats",
    "OtlpHttpSpanExporter",
    "OtlpJsonFileExporter",
    "ProjectRoutingExporter",
    "RedactingExporter",
    "RuntimeTracing",
    "SpanRedactor",
    "TracingPipeline",
    "build_tracing",
    "make_provider",
    "make_redactor",
    "phoenix_headers",
    "phoenix_reachable",
    "resolve_endpoint",
]

_SERVICE_NAME = "geode"
# Flattened LLM messages and retrieved documents need far more than the SDK's default 128 attributes.
_MAX_SPAN_ATTRIBUTES = 4096
_PROGRAM_FIELD = "{program}"


def make_redactor(tracing: TracingSettings) -> SpanRedactor:
    """The redaction and truncation rules of these settings.

    Raises:
        ConfigError: A redact pattern is not a valid regular expression.
    """
    return SpanRedactor(
        hide_inputs=tracing.hide_inputs,
        hide_outputs=tracing.hide_outputs,
        hide_messages=tracing.hide_messages,
        patterns=tracing.redact_patterns,
        max_attribute_length=tracing.max_attribute_length,
        redact_pii=tracing.redact_pii,
    )


def _project(tracing: TracingSettings) -> str:
    if _PROGRAM_FIELD in tracing.project:
        return tracing.project.replace(_PROGRAM_FIELD, "").strip("-_. ") or _SERVICE_NAME
    return tracing.project


def make_provider(tracing: TracingSettings) -> TracerProvider:
    """A tracer provider with Geode's resource, sampler and span limits, and no processor yet."""
    resource = Resource.create(
        {"service.name": _SERVICE_NAME, ResourceAttributes.PROJECT_NAME: _project(tracing)}
    )
    sampler: Sampler = (
        ALWAYS_ON if tracing.sample_ratio >= 1.0 else ParentBased(TraceIdRatioBased(tracing.sample_ratio))
    )
    # No length limit here: the SDK would cut silently and log a warning per long value; the export
    # path truncates to the configured length and marks the span (geode.truncated).
    limits = SpanLimits(max_span_attributes=_MAX_SPAN_ATTRIBUTES)
    return TracerProvider(resource=resource, sampler=sampler, span_limits=limits)


def phoenix_reachable(phoenix: PhoenixSettings, *, timeout_s: float = 0.05) -> bool:
    """Whether something accepts TCP connections on the local Phoenix's port (a quick probe)."""
    host = "127.0.0.1" if phoenix.host in ("0.0.0.0", "") else phoenix.host
    try:
        with socket.create_connection((host, phoenix.port), timeout=timeout_s):
            return True
    except OSError:
        return False


def phoenix_headers(settings: Settings) -> dict[str, str]:
    """The headers every request to Phoenix carries: its API key, when one is set."""
    key = settings.phoenix.api_key
    return {"authorization": f"Bearer {key.get_secret_value()}"} if key is not None else {}


def resolve_endpoint(settings: Settings) -> str | None:
    """The collector to export to: the configured one, else the local Phoenix if it is up now.

    Raises:
        ConfigError: The configured endpoint is not an http(s) URL.
    """
    endpoint = settings.tracing.endpoint
    if endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"tracing endpoint {endpoint!r} is not an http(s) URL",
                hint="set PHOENIX_COLLECTOR_ENDPOINT to e.g. http://127.0.0.1:6006",
            )
        return endpoint
    if phoenix_reachable(settings.phoenix):
        host = "127.0.0.1" if settings.phoenix.host in ("0.0.0.0", "") else settings.phoenix.host
        return f"http://{host}:{settings.phoenix.port}"
    # `geode phoenix` moves to a free port when the configured one is taken; it records where.
    return started_phoenix_url(settings)


@dataclass
class TracingPipeline:
    """A tracer provider and the export processor feeding its destinations."""

    provider: TracerProvider
    processor: BatchExportProcessor
    endpoint: str | None
    """The OTLP/HTTP traces URL spans are sent to, if any."""
    otlp_file: Path | None
    """The OTLP-JSON lines file spans are appended to, if any."""
    timeout_s: float
    """Deadline of :meth:`force_flush` and :meth:`shutdown`."""

    @property
    def stats(self) -> ExportStats:
        """Spans queued, exported and dropped so far."""
        return self.processor.stats

    def force_flush(self, timeout_s: float | None = None) -> bool:
        """Export everything queued; return within the deadline either way.

        Returns:
            True if everything queued was handed to the exporters in time.
        """
        timeout = self.timeout_s if timeout_s is None else timeout_s
        return self.processor.force_flush(int(timeout * 1000))

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Flush and stop exporting; return within the deadline whatever the collector does."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        self.processor.shutdown(int(timeout * 1000))
        # The provider's own shutdown calls the processor again (a no-op now) and unregisters atexit.
        if time.monotonic() < deadline:
            self.provider.shutdown()


def build_tracing(
    settings: Settings, *, exporters: Sequence[tuple[str, SpanExporter]] = ()
) -> TracingPipeline:
    """Build the tracer provider and export pipeline for these settings.

    Never blocks start-up for long: the only network call is a TCP probe of the local Phoenix
    (50 ms at most) when no endpoint is configured.

    Args:
        settings: Geode settings (``settings.tracing`` and ``settings.phoenix`` are used).
        exporters: Extra ``(name, exporter)`` destinations, e.g. an in-memory exporter in tests.

    Raises:
        ConfigError: The endpoint or a redact pattern is invalid.
    """
    tracing = settings.tracing
    redactor = make_redactor(tracing)
    destinations: list[Destination] = []
    endpoint = resolve_endpoint(settings)
    url = traces_url(endpoint) if endpoint else None
    routed = _PROGRAM_FIELD in tracing.project
    if url is not None:
        exporter: SpanExporter = OtlpHttpSpanExporter(
            url, headers=phoenix_headers(settings), timeout_s=tracing.export_timeout_s
        )
        if routed:
            exporter = ProjectRoutingExporter(exporter, tracing.project, default=_project(tracing))
        destinations.append(Destination(url, exporter))
    if tracing.otlp_file is not None:
        file_exporter: SpanExporter = OtlpJsonFileExporter(tracing.otlp_file)
        if routed:
            file_exporter = ProjectRoutingExporter(file_exporter, tracing.project, default=_project(tracing))
        destinations.append(Destination(str(tracing.otlp_file), file_exporter))
    destinations.extend(Destination(name, exporter) for name, exporter in exporters)
    provider = make_provider(tracing)
    processor = BatchExportProcessor(
        destinations,
        redactor=redactor,
        max_queue_size=tracing.queue_size,
        timeout_s=tracing.export_timeout_s,
    )
    provider.add_span_processor(processor)
    return TracingPipeline(
        provider=provider,
        processor=processor,
        endpoint=url,
        otlp_file=tracing.otlp_file,
        timeout_s=tracing.export_timeout_s,
    )


class RuntimeTracing:
    """The tracing one :class:`~geode.runtime.runtime.Runtime` owns.

    Builds the export pipeline from settings (unless given a tracer provider, or tracing is
    disabled), keeps Geode's DSPy instrumentation on while the runtime lives, routes the runtime's
    calls to its own provider, and flushes within the export deadline on :meth:`close`.

    Args:
        settings: The runtime's settings.
        tracer_provider: Use this provider (the caller owns it: it is flushed, never shut down).
    """

    def __init__(self, settings: Settings, tracer_provider: TracerProviderApi | None = None) -> None:
        self.timeout_s = settings.tracing.export_timeout_s
        self.pipeline: TracingPipeline | None = None
        provider: TracerProviderApi | None = tracer_provider
        if provider is None and settings.tracing.enabled:
            self.pipeline = build_tracing(settings)
            provider = self.pipeline.provider
        self.provider = provider
        self._tracer: Tracer | None = None
        self._closed = False
        if provider is not None:
            from geode import __version__

            self._tracer = provider.get_tracer("geode", __version__)
            retain(provider)

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Route the spans of the DSPy calls made in this block to this runtime's provider."""
        if self._tracer is None or self._closed:
            yield
            return
        with tracing_to(self._tracer):
            yield

    def close(self, timeout_s: float | None = None) -> None:
        """Flush and stop (idempotent); returns within the deadline whatever the collector does."""
        if self._closed:
            return
        self._closed = True
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if self.provider is not None:
            release(self.provider)
        if self.pipeline is not None:
            self.pipeline.shutdown(timeout)
        elif self.provider is not None:
            flush = getattr(self.provider, "force_flush", None)
            if callable(flush):
                flush(int(timeout * 1000))
