"""Helpers shared by the learning-loop commands (eval, compile, versions, compare, compare-models)."""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, cast, get_args

import typer
from rich.console import Console
from rich.table import Table

from geode.cli._console import make_console
from geode.cli._tables import print_table
from geode.errors import ConfigError
from geode.evals.compile import AutoBudget, OptimizerName
from geode.evals.dataset import Dataset, HealthReport, load_dataset
from geode.evals.evaluate import EvalOptions, EvalResult, Pricing, evaluate
from geode.evals.metrics import resolve_metric
from geode.evals.report import (
    ProgramComparison,
    ReportFiles,
    comparison_table,
    fmt_cost,
    write_comparison_report,
)
from geode.runtime.lm import is_local
from geode.runtime.runtime import Runtime
from geode.runtime.settings import Settings

__all__ = [
    "LABELLED_DATASET_OPTION",
    "METRIC_HELP",
    "METRIC_OPTION",
    "REPORT_DIR_OPTION",
    "THREADS_OPTION",
    "auto_budget",
    "calls_cell",
    "default_threads",
    "err_console",
    "eval_summary_table",
    "examples_table",
    "headed_table",
    "load_data",
    "load_metric",
    "measurement_notes",
    "optimizer_name",
    "phoenix_url",
    "pricing_for",
    "print_comparison",
    "print_health",
    "report_dir",
    "run_comparison",
    "say",
]

METRIC_HELP = (
    "Metric: a shipped one (exact_match, contains, f1, numeric_match; 'exact_match:answer' for one field) "
    "or 'package.module:function' / 'file.py:function' with the signature metric(example, pred, trace=None)."
)
METRIC_OPTION = typer.Option(..., "--metric", "-m", help=METRIC_HELP)
LABELLED_DATASET_OPTION = typer.Option(..., "--dataset", "-d", help="Labelled dataset (JSON Lines).")
REPORT_DIR_OPTION = typer.Option(
    None, "--report-dir", help="Where to write the report (default: under the Geode home)."
)
THREADS_OPTION = typer.Option(
    None, "--threads", help="Parallel examples. Default: 1 for the embedded model, else 4."
)

err_console = make_console(stderr=True)


def say(message: str) -> None:
    """A progress line on stderr (stdout stays clean for --json)."""
    err_console.print(f"[dim]·[/dim] {message}", highlight=False)


def load_data(path: Path) -> Dataset:
    """Load a dataset file (errors are DatasetError with file and line)."""
    return load_dataset(path)


def load_metric(ref: str) -> Callable[..., Any]:
    """Resolve ``--metric``."""
    return resolve_metric(ref)


def pricing_for(rt: Runtime) -> Pricing:
    """Prices for this runtime's LM: the embedded model is free; others come from litellm's list."""
    lm = rt.lm
    free = {str(lm.model)} if is_local(lm) and getattr(lm, "model", None) else set()
    return Pricing(free=free)


def optimizer_name(text: str) -> OptimizerName:
    """Check ``--optimizer``."""
    if text not in get_args(OptimizerName):
        raise ConfigError(f"unknown optimizer {text!r}", hint="choose bootstrap, mipro, gepa or finetune")
    return cast(OptimizerName, text)


def auto_budget(text: str) -> AutoBudget:
    """Check ``--auto``."""
    if text not in get_args(AutoBudget):
        raise ConfigError(f"unknown --auto budget {text!r}", hint="choose light, medium or heavy")
    return cast(AutoBudget, text)


def default_threads(rt: Runtime, threads: int | None) -> int:
    """``--threads`` or a default: 1 for the embedded model (it answers one call at a time), else 4."""
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {threads}")
        return threads
    return 1 if is_local(rt.lm) else 4


def phoenix_url(settings: Settings, enabled: bool) -> str | None:
    """Where to log experiments: the configured collector, else a local Phoenix that is up now."""
    if not enabled:
        return None
    from geode.runtime.tracing import resolve_endpoint

    try:
        return resolve_endpoint(settings)
    except ConfigError:
        return None


def report_dir(settings: Settings, kind: str, name: str, explicit: Path | None) -> Path:
    """``--report-dir`` or ``<home>/reports/<kind>-<program>-<UTC timestamp>``."""
    if explicit is not None:
        return explicit
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:60] or "program"
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return settings.reports_dir / f"{kind}-{slug}-{stamp}"


def print_health(report: HealthReport, console: Console, *, compiling: bool = False) -> None:
    """The dataset's size and any health warnings, in a few lines.

    Args:
        report: The dataset's health.
        console: Where to print.
        compiling: The command recompiles on the data: also say when it is too small for that.
    """
    splits = ", ".join(f"{k} {v}" for k, v in sorted(report.splits.items()))
    console.print(
        f"dataset {report.dataset_id}: {report.size} examples ({splits}), {report.unique_inputs} distinct inputs, "
        f"outputs {', '.join(report.output_fields) or 'none'}",
        highlight=False,
    )
    warnings = [*report.warnings, *([report.compile_warning] if compiling and report.compile_warning else [])]
    for warning in warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


def eval_summary_table(results: Sequence[tuple[str, EvalResult]], title: str) -> Table:
    """One row per evaluation: score, errors, latency, LM calls, tokens and cost."""
    table = Table(title=title, title_justify="left")
    for column in ("", "version", "score", "errors", "p50", "p95", "LM calls", "tokens", "cost"):
        table.add_column(column, justify="left" if column in ("", "version") else "right")
    for label, r in results:
        table.add_row(
            label,
            r.version or "base",
            f"{100 * r.score:.1f}%",
            f"{r.errors}" + (f" (+{r.skipped} skipped)" if r.skipped else ""),
            f"{1000 * r.latency_p50_s:,.0f} ms",
            f"{1000 * r.latency_p95_s:,.0f} ms",
            calls_cell(r.lm_calls, r.cache_hits),
            f"{r.total_tokens:,}",
            fmt_cost(r.cost_usd),
        )
    return table


def calls_cell(lm_calls: int, cache_hits: int) -> str:
    """LM calls, with cache hits shown apart: they reached no model and cost nothing."""
    return f"{lm_calls} (+{cache_hits} cached)" if cache_hits else str(lm_calls)


def measurement_notes(results: Sequence[tuple[str, EvalResult]]) -> list[str]:
    """Lines that qualify the figures: cache hits, and examples left out for having no expected output."""
    notes: list[str] = []
    for label, r in results:
        if r.cache_hits:
            notes.append(
                f"{label}: {r.cache_hits} LM call(s) were answered from DSPy's response cache; they are not "
                "counted as LM calls and their examples' latency and tokens are not the model's "
                "(run without --allow-cache to measure every call)"
            )
        if r.unlabelled:
            notes.append(
                f"{label}: {r.unlabelled} example(s) without an expected output were left out of the score"
            )
    return notes


def headed_table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], *, left: Collection[str]
) -> Table:
    """A table of ready-made cells: the ``left`` columns left-aligned, the figures right-aligned."""
    table = Table(title=title, title_justify="left")
    for header in headers:
        table.add_column(header, justify="left" if header in left else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _cell(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else str(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def examples_table(result: EvalResult, limit: int) -> Table | None:
    """The lowest-scoring examples (up to ``limit``), with what was expected and what came back."""
    worst = sorted(result.examples, key=lambda e: (e.score, e.index))[:limit]
    worst = [e for e in worst if e.score < 1.0]
    if not worst:
        return None
    table = Table(title=f"lowest-scoring examples ({len(worst)} of {result.n})", title_justify="left")
    for column in ("#", "inputs", "expected", "got", "score"):
        table.add_column(column, justify="right" if column in ("#", "score") else "left")
    for e in worst:
        got = e.error or ", ".join(f"{k}={v}" for k, v in e.outputs.items())
        table.add_row(
            str(e.index),
            _cell(", ".join(f"{k}={v}" for k, v in e.inputs.items())),
            _cell(", ".join(f"{k}={v}" for k, v in e.expected.items())),
            _cell(got),
            f"{e.score:.2f}",
        )
    return table


def abort(message: str) -> None:
    """Print a one-line error and exit 2 (for refusals that follow a finished computation)."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


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
    """Score two program refs on the same examples and write the comparison report (``geode compare``)."""
    served = [rt.serve(baseline), rt.serve(candidate)]
    results = []
    with rt.batch():
        for program in served:
            say(f"scoring {program.name} on {len(data)} examples")
            options = EvalOptions(
                program_name=program.name,
                version=program.version,
                num_threads=default_threads(rt, threads),
                pricing=pricing_for(rt),
                show_progress=show_progress,
                tags=("compare",),
            )
            results.append(evaluate(program.module, data, scorer, options))
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
