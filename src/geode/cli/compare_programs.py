"""``geode compare``: two programs (an agent and its crystallized workflow) on the same eval set.

(``geode compare-versions`` compares a program's served versions on live traffic, ``geode compare-models``
the LMs under one program; the scoring and report shared with ``geode crystallize`` are in ``_learning``.)
"""

from __future__ import annotations

from pathlib import Path

import typer

from geode.cli._common import ALLOW_CACHE_OPTION, LM_OPTION, make_runtime
from geode.cli._console import make_console
from geode.cli._learning import (
    LABELLED_DATASET_OPTION,
    METRIC_OPTION,
    REPORT_DIR_OPTION,
    THREADS_OPTION,
    load_data,
    load_metric,
    print_comparison,
    print_health,
    run_comparison,
)
from geode.cli._text import terminal_json_text
from geode.errors import ConfigError

__all__ = ["compare_command", "register"]

_REF_HELP = "'package.module:attribute', 'file.py:attribute', a registered name, or a workflow spec (.json)."


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
    geode compare geode.examples.inventory:agent workflow.json --dataset tasks.jsonl --metric numeric_match
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
