"""``geode compare-versions``: served versions of a program side by side, from traces and feedback."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import typer
from rich.table import Table

from geode.cli._common import (
    PROJECT_OPTION,
    SOURCE_OPTION,
    make_settings,
    open_source,
    parse_since,
    run_feedback,
)
from geode.cli._console import make_console
from geode.cli._names import no_runs_hint, one_program, program_name
from geode.cli._tables import print_table
from geode.errors import InputError
from geode.runtime.serving.compare import VersionStats, compare_versions
from geode.traces.sources import TraceFilter

__all__ = ["parse_since", "register", "run_feedback"]


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
