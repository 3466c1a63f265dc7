"""Server metrics: requests, errors, latency, tokens and cost per program and version.

Each figure is recorded twice: as OpenTelemetry instruments (on the meter provider the runtime or the
application configured; a no-op otherwise) and in a Prometheus registry of this app, served at
``GET /metrics``. Span export losses (Phoenix down or slow) appear as ``geode_spans_dropped_total``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from opentelemetry import metrics as otel_metrics
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

__all__ = ["ServerMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _DropCollector(Collector):
    def __init__(self, source: Callable[[], Mapping[str, int]]) -> None:
        self._source = source

    def collect(self) -> list[CounterMetricFamily]:
        family = CounterMetricFamily(
            "geode_spans_dropped", "Spans lost before export (queue full, export failed)", labels=["reason"]
        )
        try:
            counts = self._source()
        except Exception:
            counts = {}
        for reason, value in counts.items():
            family.add_metric([reason], value)
        return [family]


class ServerMetrics:
    """The server's counters and histograms.

    Args:
        meter_provider: Where the OpenTelemetry instruments live; default: the global one.
        dropped_spans: A function returning span-loss counts by reason, exposed to Prometheus.
    """

    def __init__(
        self,
        meter_provider: otel_metrics.MeterProvider | None = None,
        dropped_spans: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["program", "version"]
        self._requests = Counter(
            "geode_requests", "Requests answered", [*labels, "status"], registry=self.registry
        )
        self._errors = Counter(
            "geode_request_errors", "Failed requests", [*labels, "code"], registry=self.registry
        )
        self._latency = Histogram(
            "geode_request_duration_seconds",
            "Time to answer a request",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._tokens = Counter("geode_lm_tokens", "LM tokens used", [*labels, "kind"], registry=self.registry)
        self._cost = Counter("geode_lm_cost_usd", "LM cost in US dollars", labels, registry=self.registry)
        self._inflight = Gauge("geode_requests_in_flight", "Requests being answered", registry=self.registry)
        self._shadow = Counter(
            "geode_shadow_runs",
            "Shadow runs of candidate versions",
            ["program", "outcome"],
            registry=self.registry,
        )
        self._feedback = Counter(
            "geode_feedback",
            "Feedback records received",
            ["program", "version", "sink"],
            registry=self.registry,
        )
        if dropped_spans is not None:
            self.registry.register(_DropCollector(dropped_spans))

        meter = (meter_provider or otel_metrics.get_meter_provider()).get_meter("geode.serve")
        self._o_requests = meter.create_counter("geode.serve.requests", description="Requests answered")
        self._o_errors = meter.create_counter("geode.serve.errors", description="Failed requests")
        self._o_latency = meter.create_histogram(
            "geode.serve.duration", unit="s", description="Time to answer a request"
        )
        self._o_tokens = meter.create_counter("geode.serve.tokens", description="LM tokens used")
        self._o_cost = meter.create_counter("geode.serve.cost", unit="USD", description="LM cost")

    def started(self) -> None:
        """A request began."""
        self._inflight.inc()

    def finished(
        self,
        program: str,
        version: str | None,
        *,
        status: int,
        seconds: float,
        error_code: str | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost_usd: float | None = None,
    ) -> None:
        """A request ended (successfully or not)."""
        v = version or "base"
        self._inflight.dec()
        self._requests.labels(program, v, str(status)).inc()
        self._latency.labels(program, v).observe(seconds)
        attrs = {"program": program, "version": v}
        self._o_requests.add(1, {**attrs, "status": status})
        self._o_latency.record(seconds, attrs)
        if error_code is not None:
            self._errors.labels(program, v, error_code).inc()
            self._o_errors.add(1, {**attrs, "code": error_code})
        for kind, count in (("prompt", prompt_tokens), ("completion", completion_tokens)):
            if count:
                self._tokens.labels(program, v, kind).inc(count)
                self._o_tokens.add(count, {**attrs, "kind": kind})
        if cost_usd:
            self._cost.labels(program, v).inc(cost_usd)
            self._o_cost.add(cost_usd, attrs)

    def shadow(self, program: str, outcome: str) -> None:
        """A shadow run ended: ``ok``, ``error`` or ``skipped`` (too many in flight)."""
        self._shadow.labels(program, outcome).inc()

    def feedback(self, program: str, version: str | None, sink: str) -> None:
        """A feedback record was stored in ``sink`` (``phoenix`` or ``local``)."""
        self._feedback.labels(program, version or "base", sink).inc()

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """A sample's current value (0 when absent), e.g. ``value("geode_requests_total", {...})``."""
        found = self.registry.get_sample_value(name, dict(labels or {}))
        return float(found or 0.0)

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
