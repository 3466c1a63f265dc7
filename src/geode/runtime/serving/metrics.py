"""Server metrics: requests, errors, latency, tokens and cost per program and version.

Each figure is recorded twice: as OpenTelemetry instruments (on the meter provider the runtime or the
application configured; a no-op otherwise) and in a Prometheus registry of this app, served at
``GET /metrics``. Span export losses (Phoenix down or slow) appear as ``geode_spans_dropped_total``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

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


_MAX_SERIES = 10_000


@dataclass(frozen=True)
class _Series:
    """The labelled children and attribute sets of one (program, version, status)."""

    requests: Any
    latency: Any
    prompt_tokens: Any
    completion_tokens: Any
    attrs: dict[str, str]
    status_attrs: dict[str, Any]
    prompt_attrs: dict[str, str]
    completion_attrs: dict[str, str]


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
        self._shed = Counter(
            "geode_requests_shed",
            "Requests refused with 503 because no run slot freed up within the queue wait",
            registry=self.registry,
        )
        if dropped_spans is not None:
            self.registry.register(_DropCollector(dropped_spans))
        self._series: dict[tuple[str, str, int], _Series] = {}

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
        series = self._series.get((program, v, status))
        if series is None:
            series = self._new_series(program, v, status)
        series.requests.inc()
        series.latency.observe(seconds)
        self._o_requests.add(1, series.status_attrs)
        self._o_latency.record(seconds, series.attrs)
        if error_code is not None:
            self._errors.labels(program, v, error_code).inc()
            self._o_errors.add(1, {**series.attrs, "code": error_code})
        if prompt_tokens:
            series.prompt_tokens.inc(prompt_tokens)
            self._o_tokens.add(prompt_tokens, series.prompt_attrs)
        if completion_tokens:
            series.completion_tokens.inc(completion_tokens)
            self._o_tokens.add(completion_tokens, series.completion_attrs)
        if cost_usd:
            self._cost.labels(program, v).inc(cost_usd)
            self._o_cost.add(cost_usd, series.attrs)

    def _new_series(self, program: str, version: str, status: int) -> _Series:
        # Looking labelled children up costs more than the increments themselves; there are few
        # (program, version, status) combinations, so each is looked up once.
        attrs = {"program": program, "version": version}
        series = _Series(
            requests=self._requests.labels(program, version, str(status)),
            latency=self._latency.labels(program, version),
            prompt_tokens=self._tokens.labels(program, version, "prompt"),
            completion_tokens=self._tokens.labels(program, version, "completion"),
            attrs=attrs,
            status_attrs={**attrs, "status": status},
            prompt_attrs={**attrs, "kind": "prompt"},
            completion_attrs={**attrs, "kind": "completion"},
        )
        if len(self._series) < _MAX_SERIES:
            self._series[(program, version, status)] = series
        return series

    def shadow(self, program: str, outcome: str) -> None:
        """A shadow run ended: ``ok``, ``error`` or ``skipped`` (too many in flight)."""
        self._shadow.labels(program, outcome).inc()

    def shed(self) -> None:
        """A request was refused because every run slot stayed busy (load shedding)."""
        self._shed.inc()

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
