"""``geode compare``: two programs (an agent and its crystallized workflow) on the same eval set."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from geode.cli._common import ALLOW_CACHE_OPTION, LM_OPTION, make_runtime
from geode.cli._console import make_console
from geode.cli._learning import (
    LABELLED_DATASET_OPTION,
    METRIC_OPTION,
    REPORT_DIR_OPTION,
    THREADS_OPTION,
    default_threads,
    headed_table,
    load_data,
    load_metric,
    measurement_notes,
    pricing_for,
    print_health,
    report_dir,
    say,
)
from geode.cli._tables import print_table
from geode.cli._text import terminal_json_text
from geode.errors import ConfigError
from geode.evals.dataset import Dataset
from geode.evals.evaluate import evaluate
from geode.evals.report import ProgramComparison, ReportFiles, comparison_table, write_comparison_report
from geode.runtime.runtime import Runtime

__all__ = ["print_comparison", "register", "run_comparison"]

_REF_HELP = "'package.module:attribute', 'file.py:attribute', a registered name, or a workflow spec (.json)."


def run_comparison(
    rt: Runtime,
    baseline: str,
    candidate: str,
    data: Dataset,
    scorer: Callable[..., Any],
    *,
    tolerance: float = 2.0,
    threads: int | None = None,
    report: Path | None = None,
    show_progress: bool = True,
) -> tuple[ProgramComparison, ReportFiles]:
    """Score two program refs on the same examples and write the comparison report."""
    served = [rt.serve(baseline), rt.serve(candidate)]
    results = []
    with rt.batch():
        for program in served:
            say(f"scoring {program.name} on {len(data)} examples")
            results.append(
                evaluate(
                    program.module,
                    data,
                    scorer,
                    program_name=program.name,
                    version=program.version,
                    num_threads=default_threads(rt, threads),
                    pricing=pricing_for(rt),
                    show_progress=show_progress,
                    tags=("compare",),
                )
            )
    comparison = ProgramComparison(results[0], results[1], tolerance=tolerance)
    files = write_comparison_report(comparison, report_dir(rt.settings, "compare", served[1].name, report))
    return comparison, files


def print_comparison(
    console: Console, comparison: ProgramComparison, files: ReportFiles, data: Dataset
) -> None:
    """The comparison table, the verdict in colour, and where the report is."""
    headers, rows = comparison_table(comparison)
    title = f"{comparison.baseline.metric} on {data.id} ({len(data)} examples)"
    print_table(console, headed_table(title, headers, rows, left=("", "program")))
    pairs = [(r.program, r) for r in (comparison.baseline, comparison.candidate)]
    for note in measurement_notes(pairs):
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    style = "bold green" if comparison.ready else "bold red"
    console.print(comparison.verdict, style=style, highlight=False)
    console.print(f"report: {files.html}", highlight=False)


def compare_command(
    baseline: str = typer.Argument(..., help=f"The baseline (usually the agent): {_REF_HELP}"),
    candidate: str = typer.Argument(..., help=f"The candidate (usually the workflow): {_REF_HELP}"),
    dataset: Path = LABELLED_DATASET_OPTION,
    metric: str = METRIC_OPTION,
    tolerance: float = typer.Option(
        2.0, "--tolerance", min=0.0, help="Points (of 100) the candidate may lose and still be ready."
    ),
    threads: int | None = THREADS_OPTION,
    report: Path | None = REPORT_DIR_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
    strict: bool = typer.Option(
        False, "--strict", help="Exit with status 1 when the candidate is not ready."
    ),
    lm: str | None = LM_OPTION,
    allow_cache: bool = ALLOW_CACHE_OPTION,
) -> None:
    """Run two programs on the same examples: quality, LM calls, tokens, latency p50/p95, cost, and a verdict.

    The candidate is ready only if its score is within --tolerance points of the baseline's. Example:
    geode compare geode.agents.inventory:agent workflow.json --dataset tasks.jsonl --metric numeric_match
    """
    if baseline == candidate:
        raise ConfigError("compare needs two different programs")
    data = load_data(dataset)
    data.require(1, purpose="compare programs")
    scorer = load_metric(metric)
    console = make_console(stderr=as_json)
    if not as_json:
        print_health(data.health(), console)
    with make_runtime(lm=lm, measure=True, allow_cache=allow_cache) as rt:
        comparison, files = run_comparison(
            rt,
            baseline,
            candidate,
            data,
            scorer,
            tolerance=tolerance,
            threads=threads,
            report=report,
            show_progress=not as_json,
        )
    if as_json:
        typer.echo(
            terminal_json_text(files.json.read_text(encoding="utf-8")) if files.json.exists() else "{}"
        )
    else:
        print_comparison(console, comparison, files, data)
    if strict and not comparison.ready:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``geode compare`` to the CLI."""
    app.command("compare")(compare_command)
