"""Compare served program versions from their traces and feedback (``geode compare-versions``).

Each served request is one trace whose root span carries ``geode.program.version`` and
``geode.serve.role``; feedback arrives as Phoenix annotations and in the local feedback log, keyed by
trace id. This module turns both into one row per version: runs, error rate, latency percentiles,
tokens and cost per run, and the feedback score.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from geode.runtime.feedback_sinks import FeedbackRecord
from geode.traces.records import TraceRecord
from geode.traces.vocab import GeodeAttributes, SpanAttributes

__all__ = ["VersionStats", "compare_versions", "feedback_from_annotations"]


@dataclass(frozen=True)
class VersionStats:
    """One version's figures over the compared window."""

    version: str
    roles: tuple[str, ...]
    """How it was served: ``primary``, ``canary`` and/or ``shadow``."""
    runs: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    tokens_per_run: float
    cost_per_run: float | None
    feedback: int
    """Feedback records with a score."""
    mean_score: float | None

    @property
    def error_rate(self) -> float:
        """Share of runs that ended in an error."""
        return self.errors / self.runs if self.runs else 0.0


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def _cost(trace: TraceRecord) -> float | None:
    costs = [s.get(SpanAttributes.LLM_COST_TOTAL) for s in trace.spans if s.kind == "LLM"]
    found = [float(c) for c in costs if isinstance(c, int | float)]
    return sum(found) if found else None


def compare_versions(
    traces: Iterable[TraceRecord],
    feedback: Iterable[FeedbackRecord] = (),
    *,
    feedback_name: str | None = None,
) -> list[VersionStats]:
    """One :class:`VersionStats` per version seen in ``traces`` (``base`` for unversioned runs).

    Args:
        traces: Traces of one program (e.g. a :class:`~geode.traces.sources.TraceFilter` by program
            and time).
        feedback: Feedback records; those whose trace is among ``traces`` are counted.
        feedback_name: Count only feedback with this name (default: every name).

    Returns:
        Rows sorted by number of runs, most first.
    """
    by_trace: dict[str, str] = {}
    durations: dict[str, list[float]] = defaultdict(list)
    runs: dict[str, int] = defaultdict(int)
    errors: dict[str, int] = defaultdict(int)
    tokens: dict[str, int] = defaultdict(int)
    costs: dict[str, list[float]] = defaultdict(list)
    roles: dict[str, set[str]] = defaultdict(set)
    for trace in traces:
        version = str(trace.attribute(GeodeAttributes.PROGRAM_VERSION) or "base")
        by_trace[trace.trace_id] = version
        runs[version] += 1
        role = trace.attribute(GeodeAttributes.SERVE_ROLE)
        roles[version].add(str(role) if role else "primary")
        if trace.status == "ERROR":
            errors[version] += 1
        if trace.duration_ms is not None:
            durations[version].append(trace.duration_ms)
        tokens[version] += trace.total_tokens
        cost = _cost(trace)
        if cost is not None:
            costs[version].append(cost)
    scores: dict[str, list[float]] = defaultdict(list)
    for record in feedback:
        if feedback_name is not None and record.name != feedback_name:
            continue
        version = by_trace.get(record.trace_id)
        if version is not None and record.score is not None:
            scores[version].append(record.score)
    rows = []
    for version, count in runs.items():
        ordered = sorted(durations[version])
        rows.append(
            VersionStats(
                version=version,
                roles=tuple(sorted(roles[version])),
                runs=count,
                errors=errors[version],
                p50_ms=_percentile(ordered, 0.50),
                p95_ms=_percentile(ordered, 0.95),
                tokens_per_run=tokens[version] / count,
                cost_per_run=(sum(costs[version]) / count) if costs[version] else None,
                feedback=len(scores[version]),
                mean_score=statistics.fmean(scores[version]) if scores[version] else None,
            )
        )
    return sorted(rows, key=lambda r: (-r.runs, r.version))


def feedback_from_annotations(
    annotations: Iterable[Mapping[str, object]], trace_of_span: Mapping[str, str]
) -> list[FeedbackRecord]:
    """Feedback records from Phoenix span annotations (``{"span_id", "name", "result": {...}}`` dicts).

    Args:
        annotations: What ``client.spans.get_span_annotations`` returns.
        trace_of_span: The trace id of each annotated span (annotations name only the span).
    """
    found = []
    for item in annotations:
        result = item.get("result")
        score = result.get("score") if isinstance(result, Mapping) else None
        label = result.get("label") if isinstance(result, Mapping) else None
        trace_id = trace_of_span.get(str(item.get("span_id")))
        if trace_id is None:
            continue
        found.append(
            FeedbackRecord(
                trace_id=trace_id,
                span_id=str(item.get("span_id")),
                name=str(item.get("name") or "feedback"),
                score=float(score) if isinstance(score, int | float) else None,
                label=str(label) if label is not None else None,
            )
        )
    return found
