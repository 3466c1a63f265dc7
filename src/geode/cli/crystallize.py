"""``geode crystallize``: turn an agent's recorded runs into a fixed-order workflow spec (and Python)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from geode.agents.crystallize import (
    Crystallization,
    CrystallizeError,
    CrystallizeOptions,
    RunScore,
    crystallize,
    emit_python,
    runs_from_traces,
    score_runs,
)
from geode.agents.crystallize.cost import check_cost
from geode.agents.crystallize.report import learned_from_text, pattern_rows, render_report, route_lm_calls
from geode.cli._common import (
    ALLOW_CACHE_OPTION,
    LM_OPTION,
    PROJECT_OPTION,
    SOURCE_OPTION,
    make_runtime,
    make_settings,
    open_source,
    parse_since,
    run_feedback,
)
from geode.cli._console import make_console
from geode.cli._learning import (
    REPORT_DIR_OPTION,
    THREADS_OPTION,
    load_data,
    load_metric,
    print_comparison,
    run_comparison,
)
from geode.cli._names import no_runs_hint, one_program
from geode.cli._tables import print_table
from geode.errors import ConfigError
from geode.evals.dataset import Dataset
from geode.evals.report import comparison_markdown
from geode.runtime.programs import resolve
from geode.runtime.serving.feedback import FeedbackRecord
from geode.runtime.settings import Settings
from geode.traces.records import TraceRecord
from geode.traces.sources import TraceFilter, TraceSource

__all__ = ["register"]

_OUT = typer.Option(Path("workflow.json"), "--out", "-o", help="Where to write the workflow spec.")
_EMIT_PYTHON = typer.Option(
    None, "--emit-python", help="Also write an equivalent Python module here (yours to edit)."
)
_DATASET = typer.Option(
    None,
    "--dataset",
    "-d",
    help="Then compare agent and workflow on this labelled dataset (JSON Lines); needs --metric.",
)
_LABELS = typer.Option(
    None,
    "--labels",
    help="Score the recorded runs against this labelled dataset (JSON Lines) with --metric: runs whose "
    "inputs match a record and score at least --success-threshold are learned from.",
)
_TRUST_UNSCORED = typer.Option(
    False,
    "--trust-unscored",
    help="Learn from completed runs nobody scored, too. Off by default: an unscored run may have "
    "answered wrongly, so only runs scored correct (feedback, --labels, an evaluation) are used.",
)
_REPORT = typer.Option(
    None, "--report", help="Where to write the Markdown report (default: next to --out, .md)."
)


def _scores(feedback: list[FeedbackRecord]) -> dict[str, RunScore]:
    """One judgement per trace: the mean score of its feedback, the labels joined."""
    grouped: dict[str, list[FeedbackRecord]] = defaultdict(list)
    for record in feedback:
        grouped[record.trace_id].append(record)
    scores: dict[str, RunScore] = {}
    for trace_id, records in grouped.items():
        values = [r.score for r in records if r.score is not None]
        labels = [text for r in records if (text := r.explanation or r.label)]
        scores[trace_id] = RunScore(
            score=sum(values) / len(values) if values else None,
            feedback="; ".join(labels) or None,
            source="feedback",
        )
    return scores


def _judgements(
    traces: list[TraceRecord],
    feedback: list[FeedbackRecord],
    labels: Path | None,
    scorer: Callable[..., Any] | None,
) -> dict[str, RunScore]:
    """Feedback by trace id, plus metric scores (by agent span id) of runs feedback did not score."""
    scores = _scores(feedback)
    if labels is None or scorer is None:
        return scores
    scored = {tid for tid, s in scores.items() if s.score is not None}
    runs = [r for r in runs_from_traces(traces) if r.trace_id not in scored]
    scores.update(score_runs(runs, load_data(labels), scorer))
    return scores


def _summary(result: Crystallization) -> Table:
    spec = result.spec
    headers, rows = pattern_rows(spec)
    table = Table(title=f"{spec.name}: patterns in {spec.source.runs} runs", title_justify="left")
    for header in headers:
        table.add_column(header, justify="left" if header == "pattern" else "right")
    for row in rows:
        table.add_row(*row, style="bold" if row[-1] else "dim")
    return table


_PROGRAM = typer.Argument(
    ..., help="The agent: 'package.module:attribute', 'file.py:attribute' or a registered name."
)
_MIN_SHARE = typer.Option(
    0.6, "--min-share", help="One route when the top pattern covers this share of successful runs."
)
_MAX_ROUTES = typer.Option(3, "--max-routes", min=1, help="At most this many routes.")
_MIN_ROUTE_RUNS = typer.Option(
    2, "--min-route-runs", min=1, help="Successful runs a pattern needs to become a route."
)
_SUCCESS_THRESHOLD = typer.Option(
    0.5, "--success-threshold", help="A scored run succeeds at this score or above."
)
_AGREEMENT = typer.Option(
    0.8,
    "--agreement",
    help="Share of a pattern's runs an argument rule must reproduce (else an LM step).",
)
_PROGRAM_NAME = typer.Option(
    None, "--program-name", help="Runs with this geode.program.name (default: REF as given)."
)
_ANY_PROGRAM = typer.Option(False, "--any-program", help="Read every agent run, whatever its program name.")
_SINCE = typer.Option(None, "--since", help="Only runs from the last 30m, 1h, 7d...")
_LIMIT = typer.Option(5000, "--limit", min=1, help="At most this many traces (newest first).")
_METRIC = typer.Option(
    None,
    "--metric",
    "-m",
    help="With --dataset or --labels: the metric, 'module:function' or a built-in name.",
)
_TOLERANCE = typer.Option(
    2.0,
    "--tolerance",
    min=0.0,
    help="With --dataset: points (of 100) the workflow may lose and be ready.",
)


@dataclass(frozen=True)
class _Comparing:
    """``--dataset`` and what goes with it: agent and workflow are then run on that eval set."""

    data: Dataset
    scorer: Callable[..., Any]
    tolerance: float
    threads: int | None
    report_dir: Path | None
    lm: str | None
    allow_cache: bool


def crystallize_command(
    program: str = _PROGRAM,
    source: str = SOURCE_OPTION,
    out: Path = _OUT,
    emit_py: Path | None = _EMIT_PYTHON,
    report: Path | None = _REPORT,
    min_share: float = _MIN_SHARE,
    max_routes: int = _MAX_ROUTES,
    min_route_runs: int = _MIN_ROUTE_RUNS,
    success_threshold: float = _SUCCESS_THRESHOLD,
    trust_unscored: bool = _TRUST_UNSCORED,
    labels: Path | None = _LABELS,
    agreement: float = _AGREEMENT,
    project: str | None = PROJECT_OPTION,
    name: str | None = _PROGRAM_NAME,
    any_program: bool = _ANY_PROGRAM,
    since: str | None = _SINCE,
    limit: int = _LIMIT,
    dataset: Path | None = _DATASET,
    metric: str | None = _METRIC,
    tolerance: float = _TOLERANCE,
    threads: int | None = THREADS_OPTION,
    report_dir: Path | None = REPORT_DIR_OPTION,
    lm: str | None = LM_OPTION,
    allow_cache: bool = ALLOW_CACHE_OPTION,
) -> None:
    """Derive a fixed-order workflow from an agent's recorded runs (patterns, argument rules, demos).

    It learns from runs scored correct: by feedback (rt.feedback, POST /feedback, Phoenix
    annotations), by --metric against --labels, or in an evaluation. A run nobody scored is unknown
    and left out, unless --trust-unscored. Example: geode crystallize geode.examples.inventory:agent
    --source phoenix --labels tasks.jsonl --metric numeric_match --out workflow.json. Serve or
    evaluate the result as `workflow.json`. With --dataset and --metric the same command then runs
    agent and workflow on that eval set (as `geode compare` does), prints the verdict and adds it to
    the report.
    """
    _check_flags(metric, dataset, labels)
    data = _eval_set(dataset) if dataset is not None else None
    scorer = load_metric(metric) if metric is not None else None
    console = make_console(stderr=True)
    settings = make_settings()
    resolved = resolve(program)
    # The agent's runs are filed under its one name, however they were started (by this reference,
    # as an instance, or served); --program-name picks another name or alias.
    program_name = None if any_program else (name or resolved.name)
    start = datetime.now(UTC) - parse_since(since) if since else None
    options = CrystallizeOptions(
        min_share=min_share,
        max_routes=max_routes,
        min_route_runs=min_route_runs,
        success_threshold=success_threshold,
        unscored_ok=trust_unscored,
        agreement=agreement,
    )
    with open_source(settings, source, project) as reader:
        wanted = TraceFilter(program=program_name, start=start, limit=limit)
        traces, feedback = _read_runs(reader, settings, console, wanted)
        console.print(f"[dim]·[/dim] {len(traces)} traces from {reader.description}", highlight=False)
        with console.status("finding patterns"):
            result = crystallize(
                resolved.module,
                traces,
                agent_ref=program,
                program=program_name,
                scores=_judgements(traces, feedback, labels, scorer),
                description=reader.description,
                options=options,
            )
    report_path = _write_spec(result, out, report or out.with_suffix(".md"), emit_py)
    stdout = make_console()
    _print_summary(stdout, result, out, report_path, emit_py)
    if data is None or scorer is None:
        stdout.print(
            f"next: geode compare {program} {out} --dataset DATA --metric METRIC",
            highlight=False,
            style="dim",
        )
        return
    comparing = _Comparing(data, scorer, tolerance, threads, report_dir, lm, allow_cache)
    _compare_with_agent(stdout, program, out, report_path, comparing)


def _check_flags(metric: str | None, dataset: Path | None, labels: Path | None) -> None:
    if metric is None and (dataset is not None or labels is not None):
        raise ConfigError(
            "--dataset and --labels need --metric", hint="give --metric exact_match, or another metric"
        )
    if metric is not None and dataset is None and labels is None:
        raise ConfigError("--metric goes with --dataset or --labels")


def _eval_set(dataset: Path) -> Dataset:
    data = load_data(dataset)
    data.require(1, purpose="compare agent and workflow")
    return data


def _read_runs(
    reader: TraceSource, settings: Settings, console: Console, wanted: TraceFilter
) -> tuple[list[TraceRecord], list[FeedbackRecord]]:
    """The agent's recorded runs and the feedback on them; refuses when there are none."""
    with console.status(f"reading runs from {reader.description}"):
        traces: list[TraceRecord] = list(reader.traces(wanted))
        if wanted.program is not None:
            traces = one_program(traces, wanted.program)
        feedback = run_feedback(settings, reader, traces)
        if not traces:
            raise CrystallizeError(
                f"no runs of {wanted.program or 'any program'!r} in {reader.description}",
                hint=no_runs_hint(reader),
            )
    return traces, feedback


def _write_spec(result: Crystallization, out: Path, report_path: Path, emit_py: Path | None) -> Path:
    """Save the spec, its Markdown report and, if asked, the equivalent Python; returns the report's path."""
    spec = result.spec
    spec.save(out)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(render_report(spec), encoding="utf-8")
    if emit_py is not None:
        emit_py.parent.mkdir(parents=True, exist_ok=True)
        emit_py.write_text(emit_python(spec), encoding="utf-8")
    return report_path


def _print_summary(
    stdout: Console, result: Crystallization, out: Path, report_path: Path, emit_py: Path | None
) -> None:
    spec = result.spec
    print_table(stdout, _summary(result))
    stdout.print(f"[bold]learned from:[/bold] {learned_from_text(spec.source.learned_from)}", highlight=False)
    unscored = spec.source.failures.get("unscored", 0)
    if unscored:
        stdout.print(
            f"[yellow]note:[/yellow] {unscored} completed run(s) nobody scored were left out "
            "(give feedback, --labels with --metric, or --trust-unscored)",
            highlight=False,
        )
    stdout.print(f"[bold]decision:[/bold] {spec.source.decision}", highlight=False)
    for route in spec.routes:
        stdout.print(
            f"route [bold]{route.label}[/bold]: {len(route.steps) - 1} steps, "
            f"{route_lm_calls(spec, route)} LM call(s) per input",
            highlight=False,
        )
    # A workflow exists to be cheaper; say plainly when, on these runs, it would not be.
    cost = check_cost(result)
    if cost.cheaper:
        stdout.print(f"[bold]cost:[/bold] {cost.describe()}", highlight=False)
    else:
        stdout.print(f"[yellow]warning:[/yellow] {cost.describe()}: keep the agent", highlight=False)
    stdout.print(f"wrote {out} ({spec.content_hash[:19]}…), report {report_path}", highlight=False)
    if emit_py is not None:
        stdout.print(f"wrote {emit_py}", highlight=False)


def _compare_with_agent(
    stdout: Console, program: str, out: Path, report_path: Path, comparing: _Comparing
) -> None:
    """Run agent and workflow on ``--dataset``, print the verdict and add it to the report."""
    c = comparing
    with make_runtime(lm=c.lm, measure=True, allow_cache=c.allow_cache) as rt:
        comparison, files = run_comparison(
            rt,
            program,
            str(out),
            c.data,
            c.scorer,
            tolerance=c.tolerance,
            threads=c.threads,
            report=c.report_dir,
        )
    print_comparison(stdout, comparison, files, c.data)
    # The report says which pattern was taken and why; with the verdict it also says whether it held up.
    with report_path.open("a", encoding="utf-8") as handle:
        handle.write(
            f"\n## Comparison with the agent\n\n{comparison_markdown(comparison)}\nFull report: {files.html}\n"
        )


def register(app: typer.Typer) -> None:
    """Add ``geode crystallize`` to the CLI."""
    app.command("crystallize")(crystallize_command)
