"""``geode crystallize``: turn an agent's recorded runs into a fixed-order workflow spec (and Python)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
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
from geode.evals.report import comparison_markdown
from geode.runtime.programs import resolve
from geode.runtime.serving.feedback import FeedbackRecord
from geode.traces.records import TraceRecord
from geode.traces.sources import TraceFilter

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


def crystallize_command(
    program: str = typer.Argument(
        ..., help="The agent: 'package.module:attribute', 'file.py:attribute' or a registered name."
    ),
    source: str = SOURCE_OPTION,
    out: Path = _OUT,
    emit_py: Path | None = _EMIT_PYTHON,
    report: Path | None = _REPORT,
    min_share: float = typer.Option(
        0.6, "--min-share", help="One route when the top pattern covers this share of successful runs."
    ),
    max_routes: int = typer.Option(3, "--max-routes", min=1, help="At most this many routes."),
    min_route_runs: int = typer.Option(
        2, "--min-route-runs", min=1, help="Successful runs a pattern needs to become a route."
    ),
    success_threshold: float = typer.Option(
        0.5, "--success-threshold", help="A scored run succeeds at this score or above."
    ),
    trust_unscored: bool = _TRUST_UNSCORED,
    labels: Path | None = _LABELS,
    agreement: float = typer.Option(
        0.8,
        "--agreement",
        help="Share of a pattern's runs an argument rule must reproduce (else an LM step).",
    ),
    project: str | None = PROJECT_OPTION,
    name: str | None = typer.Option(
        None, "--program-name", help="Runs with this geode.program.name (default: REF as given)."
    ),
    any_program: bool = typer.Option(
        False, "--any-program", help="Read every agent run, whatever its program name."
    ),
    since: str | None = typer.Option(None, "--since", help="Only runs from the last 30m, 1h, 7d..."),
    limit: int = typer.Option(5000, "--limit", min=1, help="At most this many traces (newest first)."),
    dataset: Path | None = _DATASET,
    metric: str | None = typer.Option(
        None,
        "--metric",
        "-m",
        help="With --dataset or --labels: the metric, 'module:function' or a built-in name.",
    ),
    tolerance: float = typer.Option(
        2.0,
        "--tolerance",
        min=0.0,
        help="With --dataset: points (of 100) the workflow may lose and be ready.",
    ),
    threads: int | None = THREADS_OPTION,
    report_dir: Path | None = REPORT_DIR_OPTION,
    lm: str | None = LM_OPTION,
    allow_cache: bool = ALLOW_CACHE_OPTION,
) -> None:
    """Derive a fixed-order workflow from an agent's recorded runs (patterns, argument rules, demos).

    It learns from runs scored correct: by feedback (rt.feedback, POST /feedback, Phoenix
    annotations), by --metric against --labels, or in an evaluation. A run nobody scored is unknown
    and left out, unless --trust-unscored. Example: geode crystallize geode.agents.inventory:agent
    --source phoenix --labels tasks.jsonl --metric numeric_match --out workflow.json. Serve or
    evaluate the result as `workflow.json`. With --dataset and --metric the same command then runs
    agent and workflow on that eval set (as `geode compare` does), prints the verdict and adds it to
    the report.
    """
    if metric is None and (dataset is not None or labels is not None):
        raise ConfigError(
            "--dataset and --labels need --metric", hint="give --metric exact_match, or another metric"
        )
    if metric is not None and dataset is None and labels is None:
        raise ConfigError("--metric goes with --dataset or --labels")
    data = load_data(dataset) if dataset is not None else None
    if data is not None:
        data.require(1, purpose="compare agent and workflow")
    scorer = load_metric(metric) if metric is not None else None
    console = make_console(stderr=True)
    settings = make_settings()
    resolved = resolve(program)
    agent = resolved.module
    # The agent's runs are filed under its one name, however they were started (by this reference,
    # as an instance, or served); --program-name picks another name or alias.
    program_name = None if any_program else (name or resolved.name)
    start = datetime.now(UTC) - parse_since(since) if since else None
    with open_source(settings, source, project) as reader:
        with console.status(f"reading runs from {reader.description}"):
            wanted = TraceFilter(program=program_name, start=start, limit=limit)
            traces: list[TraceRecord] = list(reader.traces(wanted))
            if program_name is not None:
                traces = one_program(traces, program_name)
            feedback = run_feedback(settings, reader, traces)
            if not traces:
                raise CrystallizeError(
                    f"no runs of {program_name or 'any program'!r} in {reader.description}",
                    hint=no_runs_hint(reader),
                )
        console.print(f"[dim]·[/dim] {len(traces)} traces from {reader.description}", highlight=False)
        with console.status("finding patterns"):
            result = crystallize(
                agent,
                traces,
                agent_ref=program,
                program=program_name,
                scores=_judgements(traces, feedback, labels, scorer),
                description=reader.description,
                options=CrystallizeOptions(
                    min_share=min_share,
                    max_routes=max_routes,
                    min_route_runs=min_route_runs,
                    success_threshold=success_threshold,
                    unscored_ok=trust_unscored,
                    agreement=agreement,
                ),
            )
    spec = result.spec
    spec.save(out)
    report_path = report or out.with_suffix(".md")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(render_report(spec), encoding="utf-8")
    if emit_py is not None:
        emit_py.parent.mkdir(parents=True, exist_ok=True)
        emit_py.write_text(emit_python(spec), encoding="utf-8")
    stdout = make_console()
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
    if data is None or scorer is None:
        stdout.print(
            f"next: geode compare {program} {out} --dataset DATA --metric METRIC",
            highlight=False,
            style="dim",
        )
        return
    with make_runtime(lm=lm, measure=True, allow_cache=allow_cache) as rt:
        comparison, files = run_comparison(
            rt, program, str(out), data, scorer, tolerance=tolerance, threads=threads, report=report_dir
        )
    print_comparison(stdout, comparison, files, data)
    # The report says which pattern was taken and why; with the verdict it also says whether it held up.
    with report_path.open("a", encoding="utf-8") as handle:
        handle.write(
            f"\n## Comparison with the agent\n\n{comparison_markdown(comparison)}\nFull report: {files.html}\n"
        )


def register(app: typer.Typer) -> None:
    """Add ``geode crystallize`` to the CLI."""
    app.command("crystallize")(crystallize_command)
