"""``geode compare-versions``: served versions of a program side by side, from traces and feedback."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import typer
from rich.table import Table

from geode.cli._common import make_settings
from geode.cli._console import make_console
from geode.cli._names import no_runs_hint, one_program, program_name
from geode.cli._tables import print_table
from geode.cli.trace import PROJECT_OPTION, SOURCE_OPTION, open_source
from geode.errors import InputError
from geode.runtime.feedback import feedback_log_path
from geode.runtime.serving.compare import VersionStats, compare_versions, feedback_from_annotations
from geode.runtime.serving.feedback import FeedbackRecord, read_feedback
from geode.runtime.settings import Settings
from geode.traces.records import TraceRecord
from geode.traces.sources import PhoenixTraceSource, TraceFilter, TraceSource

__all__ = ["parse_since", "register", "run_feedback"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> timedelta:
    """``30m``, ``1h``, ``7d`` → a timedelta.

    Example:
        >>> parse_since("90m")
        datetime.timedelta(seconds=5400)
    """
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if not found:
        raise InputError(f"bad --since {text!r}", hint="use a number and a unit: 30m, 1h, 7d")
    return timedelta(seconds=float(found.group(1)) * _UNITS[found.group(2)])


def _phoenix_feedback(reader: PhoenixTraceSource, traces: list[TraceRecord]) -> list[FeedbackRecord]:
    roots = {t.root.span_id: t.trace_id for t in traces if t.root is not None}
    if not roots:
        return []
    client = reader.client  # shares the reader's connections and its API key
    ids = list(roots)
    annotations: list[Any] = []
    for start in range(0, len(ids), 100):
        found = client.spans.get_span_annotations(
            span_ids=ids[start : start + 100], project_identifier=reader.project
        )
        annotations.extend(dict(a) for a in found)
    return feedback_from_annotations(annotations, roots)


def run_feedback(settings: Settings, reader: TraceSource, traces: list[TraceRecord]) -> list[FeedbackRecord]:
    """The local feedback log, plus the annotations on these runs' root spans when reading from Phoenix."""
    feedback = list(read_feedback(feedback_log_path(settings)))
    if isinstance(reader, PhoenixTraceSource) and traces:
        feedback.extend(_phoenix_feedback(reader, traces))
    return feedback


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _table(name: str, rows: list[VersionStats], since: str) -> Table:
    table = Table(title=f"{name}: versions over the last {since}")
    for column in (
        "version",
        "served as",
        "runs",
        "errors",
        "p50 ms",
        "p95 ms",
        "tokens/run",
        "cost/run",
        "feedback",
        "score",
    ):
        table.add_column(column, justify="left" if column in ("version", "served as") else "right")
    for row in rows:
        table.add_row(
            row.version,
            ", ".join(row.roles),
            str(row.runs),
            f"{row.error_rate:.1%}",
            _fmt(row.p50_ms, "{:.0f}"),
            _fmt(row.p95_ms, "{:.0f}"),
            f"{row.tokens_per_run:.0f}",
            _fmt(row.cost_per_run, "${:.5f}"),
            str(row.feedback),
            _fmt(row.mean_score, "{:.3f}"),
        )
    return table


def compare(
    name: str = typer.Argument(..., help="The program's name (geode.program.name on its spans)."),
    since: str = typer.Option("1h", "--since", help="How far back: 30m, 1h, 7d."),
    source: str = SOURCE_OPTION,
    project: str | None = PROJECT_OPTION,
    feedback_name: str | None = typer.Option(None, "--feedback-name", help="Only feedback with this name."),
    limit: int = typer.Option(10_000, "--limit", min=1, help="At most this many traces (newest first)."),
    as_json: bool = typer.Option(False, "--json", help="Print rows as JSON."),
) -> None:
    """Compare the versions of a served program: runs, errors, latency, tokens, cost and feedback score.

    Example: geode compare-versions qa --since 1h
    """
    window = parse_since(since)
    settings = make_settings()
    name = program_name(name)
    with open_source(settings, source, project) as reader:
        wanted = TraceFilter(program=name, start=datetime.now(UTC) - window, limit=limit)
        traces = one_program(reader.traces(wanted), name)
        feedback = run_feedback(settings, reader, traces)
        hint = None if traces else no_runs_hint(reader)
    # The local log and Phoenix may both hold one record: count each (trace, name, score) once.
    unique = {(r.trace_id, r.name, r.score, r.label): r for r in feedback}
    rows = compare_versions(traces, unique.values(), feedback_name=feedback_name)
    if as_json:
        typer.echo(json.dumps([{**r.__dict__, "error_rate": r.error_rate} for r in rows], indent=2))
        return
    if not rows:
        raise InputError(
            f"no runs of {name!r} in the last {since} in {reader.description}",
            hint=f"widen --since; {hint}" if hint else "widen --since",
        )
    print_table(make_console(), _table(name, rows, since))


def register(app: typer.Typer) -> None:
    """Add ``geode compare-versions`` to the CLI."""
    app.command("compare-versions")(compare)
