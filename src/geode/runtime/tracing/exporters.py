"""Span exporters: OTLP/HTTP to Phoenix (or any collector), OTLP-JSON lines files, and redaction.

Exporters run on the export worker thread only (see :mod:`geode.runtime.tracing.processor`). Each
keeps the reason of its last failure in ``last_error`` so the processor can say once, in one log
line, why spans are being dropped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from openinference.semconv.resource import ResourceAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from geode.runtime.tracing._fork import renew_after_fork
from geode.runtime.tracing.otlp_proto import encode_request
from geode.runtime.tracing.redaction import SpanRedactor
from geode.traces.otlp_json import dumps_request, encode_spans
from geode.traces.vocab import GeodeAttributes

__all__ = [
    "OtlpHttpSpanExporter",
    "OtlpJsonFileExporter",
    "ProjectRoutingExporter",
    "RedactingExporter",
    "program_project",
    "traces_url",
]

_TRACES_PATH: Final = "/v1/traces"
_RETRYABLE: Final = frozenset({429, 502, 503, 504})
_LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})
_FIRST_REST_S: Final = 1.0
_MAX_REST_S: Final = 30.0


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for a collector endpoint given as a base URL or the full URL.

    Example:
        >>> traces_url("http://127.0.0.1:6006")
        'http://127.0.0.1:6006/v1/traces'
    """
    base = endpoint.rstrip("/")
    return base if base.endswith(_TRACES_PATH) else base + _TRACES_PATH


class OtlpHttpSpanExporter(SpanExporter):
    """OTLP/HTTP (protobuf) exporter with one hard deadline per export and no log output of its own.

    Unlike the SDK's exporter, a failed export is not retried with exponential backoff while the
    batch waits (a collector that is down stays down for the next batch too), only once after a short
    pause for 429/5xx answers, and nothing is logged: the processor counts the dropped spans and logs
    once. After a failure the exporter rests (1 s, doubling up to 30 s, reset by a success): batches
    in that window fail at once, without being encoded or sent, so an outage costs next to nothing.

    Args:
        endpoint: Collector base URL (``http://127.0.0.1:6006``) or full ``.../v1/traces`` URL.
        headers: Extra request headers (``authorization``...).
        timeout_s: Deadline for one export, connection included.
    """

    def __init__(
        self, endpoint: str, *, headers: Mapping[str, str] | None = None, timeout_s: float = 5.0
    ) -> None:
        self.url = traces_url(endpoint)
        self.timeout_s = timeout_s
        self.last_error: str | None = None
        self.last_failure: str | None = None
        """The kind of the last failure: ``unreachable`` (no answer: refused, reset, timed out),
        ``unauthorized`` (401/403: the API key) or ``rejected`` (any other status: 429/503 at capacity)."""
        self._headers = dict(headers or {})
        self._client = self._new_client()
        self._closed = threading.Event()
        self._rest_s = 0.0
        self._resume_at = 0.0
        renew_after_fork(self)

    def _new_client(self) -> Any:
        # Imported here: this module loads on every runtime start, an HTTP exporter only with a collector.
        import httpx

        host = (urlsplit(self.url).hostname or "").lower()
        return httpx.Client(
            headers={"content-type": "application/x-protobuf", **self._headers},
            timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 2.0)),
            # A local Phoenix must not be reached through an HTTP(S)_PROXY from the environment.
            trust_env=host not in _LOOPBACK,
        )

    def _after_fork_in_child(self) -> None:
        """In a forked child: a client of its own.

        The inherited one is left unused, not closed: its pooled connections are the parent's sockets too.
        """
        closed = self._closed.is_set()
        self._closed = threading.Event()
        if closed:
            self._closed.set()
            return
        self._client = self._new_client()
        self._rest_s = 0.0
        self._resume_at = 0.0

    def ready(self) -> bool:
        """False while resting after a failure: an export now would fail without trying."""
        return not self._closed.is_set() and time.monotonic() >= self._resume_at

    def _failed(self) -> SpanExportResult:
        self._rest_s = min(max(self._rest_s * 2, _FIRST_REST_S), _MAX_REST_S)
        self._resume_at = time.monotonic() + self._rest_s
        return SpanExportResult.FAILURE

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Send one batch; ``FAILURE`` (with :attr:`last_error`) if the collector did not take it."""
        if self._closed.is_set():
            self.last_error = "exporter is shut down"
            return SpanExportResult.FAILURE
        if time.monotonic() < self._resume_at:
            return SpanExportResult.FAILURE  # resting; last_error still says why
        result = self._send(spans)
        if result is SpanExportResult.SUCCESS:
            self._rest_s = 0.0
            return result
        return self._failed()

    def _send(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        import httpx

        body = encode_request(spans)
        deadline = time.monotonic() + self.timeout_s
        for attempt in range(2):
            try:
                response = self._client.post(self.url, content=body)
            except httpx.HTTPError as err:
                self.last_error = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                self.last_failure = "unreachable"
                return SpanExportResult.FAILURE
            if response.is_success:
                return SpanExportResult.SUCCESS
            self.last_error = f"HTTP {response.status_code} from {self.url}"
            self.last_failure = "unauthorized" if response.status_code in (401, 403) else "rejected"
            pause = 0.5
            if attempt or response.status_code not in _RETRYABLE or time.monotonic() + pause >= deadline:
                break
            if self._closed.wait(pause):
                break
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        """Close the HTTP client; an export in flight fails at once."""
        self._closed.set()
        self._client.close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Nothing is buffered here."""
        return True


class OtlpJsonFileExporter(SpanExporter):
    """Appends each export batch to a file as one OTLP-JSON ``ExportTraceServiceRequest`` per line.

    Args:
        path: The file; its folder is created on first write.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.last_error: str | None = None
        self._lock = threading.Lock()
        renew_after_fork(self)

    def _after_fork_in_child(self) -> None:
        """In a forked child: a lock of its own (the parent's export thread may have held this one)."""
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Append one line; ``FAILURE`` if the file cannot be written."""
        if not spans:
            return SpanExportResult.SUCCESS
        line = dumps_request(encode_spans(spans)) + "\n"
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # One write call per line keeps concurrent appenders (two processes) from interleaving.
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write(line)
        except OSError as err:
            self.last_error = f"cannot write {self.path}: {err}"
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release: the file is opened per batch."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Lines are written through at export."""
        return True


class RedactingExporter(SpanExporter):
    """Applies a :class:`SpanRedactor` to every span, then hands the batch to ``exporter``.

    Args:
        exporter: Where redacted spans go.
        redactor: The hiding, redaction and truncation rules.
    """

    def __init__(self, exporter: SpanExporter, redactor: SpanRedactor) -> None:
        self.exporter = exporter
        self.redactor = redactor

    @property
    def last_error(self) -> str | None:
        """The wrapped exporter's last failure."""
        return getattr(self.exporter, "last_error", None)

    @property
    def last_failure(self) -> str | None:
        """The kind of the wrapped exporter's last failure (see :class:`OtlpHttpSpanExporter`)."""
        return getattr(self.exporter, "last_failure", None)

    def ready(self) -> bool:
        """Whether the wrapped exporter would try an export now."""
        ready = getattr(self.exporter, "ready", None)
        return bool(ready()) if callable(ready) else True

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Redact, then export."""
        return self.exporter.export([self.redactor.redact(span) for span in spans])

    def shutdown(self) -> None:
        """Shut the wrapped exporter down."""
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Flush the wrapped exporter."""
        return self.exporter.force_flush(timeout_millis)


def program_project(template: str, program: str) -> str:
    """The Phoenix project of a program's spans, from a project template with a ``{program}`` field.

    Characters Phoenix dislikes in a project name become ``-``. The exporter names projects with it,
    and feedback finds a run's project again with it.

    Example:
        >>> program_project("geode-{program}", "app.agents:support agent")
        'geode-app.agents-support-agent'
    """
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in program).strip("-") or "program"
    return template.format(program=safe)


class ProjectRoutingExporter(SpanExporter):
    """Sends each span to a Phoenix project named after its program.

    Phoenix files spans under the project in their resource's ``openinference.project.name``; this
    rewrites that attribute per span from ``template`` (``"geode-{program}"``), with the span's
    ``geode.program.name`` (characters Phoenix dislikes become ``-``).

    Args:
        exporter: Where the re-labelled spans go.
        template: A ``str.format`` template with a ``{program}`` field.
        default: The project of spans without a program name.
    """

    def __init__(self, exporter: SpanExporter, template: str, *, default: str) -> None:
        self.exporter = exporter
        self.template = template
        self.default = default
        self._resources: dict[tuple[int, str], Resource] = {}

    @property
    def last_error(self) -> str | None:
        """The wrapped exporter's last failure."""
        return getattr(self.exporter, "last_error", None)

    @property
    def last_failure(self) -> str | None:
        """The kind of the wrapped exporter's last failure (see :class:`OtlpHttpSpanExporter`)."""
        return getattr(self.exporter, "last_failure", None)

    def ready(self) -> bool:
        """Whether the wrapped exporter would try an export now."""
        ready = getattr(self.exporter, "ready", None)
        return bool(ready()) if callable(ready) else True

    def project(self, program: object) -> str:
        """The project name for a program name."""
        if not isinstance(program, str) or not program:
            return self.default
        return program_project(self.template, program)

    def _relabel(self, span: ReadableSpan) -> ReadableSpan:
        project = self.project((span.attributes or {}).get(GeodeAttributes.PROGRAM_NAME))
        key = (id(span.resource), project)
        resource = self._resources.get(key)
        if resource is None:
            if len(self._resources) > 256:
                self._resources.clear()
            resource = span.resource.merge(Resource({ResourceAttributes.PROJECT_NAME: project}))
            self._resources[key] = resource
        return ReadableSpan(
            name=span.name,
            context=span.get_span_context(),
            parent=span.parent,
            resource=resource,
            attributes=span.attributes,
            events=span.events,
            links=span.links,
            kind=span.kind,
            status=span.status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Re-label, then export."""
        return self.exporter.export([self._relabel(span) for span in spans])

    def shutdown(self) -> None:
        """Shut the wrapped exporter down."""
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Flush the wrapped exporter."""
        return self.exporter.force_flush(timeout_millis)
