"""``geode mine``: turn a program's traced runs into an eval dataset (and per-predictor examples)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from geode.cli._common import PROJECT_OPTION, SOURCE_OPTION, make_settings, open_source, parse_since
from geode.cli._console import make_console
from geode.cli._learning import phoenix_url
from geode.cli._names import no_runs_hint, program_name, require_one_program
from geode.cli._tables import print_table
from geode.errors import InputError
from geode.evals.dataset import HealthReport
from geode.evals.mining import (
    MiningOptions,
    MiningProgress,
    MiningResult,
    OutputPolicy,
    PhoenixDatasetLink,
    mine,
    upload_to_phoenix,
)
from geode.runtime.feedback import feedback_annotations
from geode.runtime.settings import Settings
from geode.traces.sources import (
    PhoenixTraceSource,
    TraceFilter,
    TraceSource,
    normalize_trace_id,
    phoenix_base_url,
    programs_with_runs,
)

__all__ = ["health_table", "parse_where", "register"]

_OUTPUTS = ("auto", "traced", "none")
_OUT = typer.Option(..., "--out", "-o", help="Write the dataset here (JSON Lines).")
_PER_PREDICTOR = typer.Option(
    None, "--per-predictor", help="Also write one dataset per named predictor into this folder."
)


def parse_where(pairs: list[str]) -> dict[str, str]:
    """``key=value`` filters on the run's root span.

    Example:
        >>> parse_where(["geode.program.version=3f9c", "metadata.tier=gold"])
        {'geode.program.version': '3f9c', 'metadata.tier': 'gold'}
    """
    where: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(
                f"bad --where {pair!r}", hint="use --where key=value, e.g. --where geode.program.version=3f9c"
            )
        where[key.strip()] = value
    return where


def health_table(report: HealthReport) -> Table:
    """The dataset health report as a two-column table."""
    table = Table(title=f"dataset health ({report.dataset_id})", title_justify="left", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    splits = ", ".join(f"{k} {v}" for k, v in sorted(report.splits.items()))
    table.add_row("examples", f"{report.size} ({splits})" if report.size else "0")
    table.add_row("input fields", ", ".join(report.input_fields) or "-")
    table.add_row("output fields", ", ".join(report.output_fields) or "-")
    table.add_row("distinct inputs", str(report.unique_inputs))
    table.add_row("input diversity", f"{report.distinct_bigrams:.0%} distinct word pairs")
    table.add_row("duplicates left", f"{report.exact_duplicates} exact, {len(report.near_duplicates)} near")
    table.add_row("unlabelled", str(report.unlabelled))
    for balance in report.label_balance:
        if balance.categorical:
            top = ", ".join(f"{v!r} {n}" for v, n in balance.top[:3])
            table.add_row(f"labels: {balance.field}", f"{balance.distinct} distinct; {top}")
        else:
            table.add_row(f"labels: {balance.field}", f"{balance.distinct} distinct (free text)")
    spread = report.score_spread
    if spread is not None:
        table.add_row(
            "scores (difficulty)",
            f"{spread.count} scored; mean {spread.mean:.2f}, min {spread.minimum:g}, "
            f"median {spread.median:g}, max {spread.maximum:g}; histogram {list(spread.histogram)}",
        )
    else:
        table.add_row("scores (difficulty)", "no annotations")
    return table


def _accounting_table(result: MiningResult) -> Table:
    table = Table(title=f"mined {result.program}", title_justify="left")
    table.add_column("")
    table.add_column("traces", justify="right")
    table.add_row("read", str(result.traces_read))
    for reason, count in sorted(result.skipped.items(), key=lambda kv: -kv[1]):
        table.add_row(f"skipped: {reason}", str(count))
    for reason, count in sorted(result.filtered.items(), key=lambda kv: -kv[1]):
        table.add_row(f"filtered out: {reason}", str(count))
    table.add_row("dropped: same inputs as a kept run", str(result.exact_duplicates))
    table.add_row("dropped: near-duplicate inputs", str(result.near_duplicates))
    table.add_row("[bold]examples written[/bold]", f"[bold]{len(result.dataset)}[/bold]")
    for name, data in sorted(result.predictors.items()):
        table.add_row(f"predictor {name}", f"{len(data)} examples")
    for reason, count in sorted(result.predictor_skipped.items()):
        table.add_row(f"predictor calls left out: {reason}", str(count))
    return table


_PROGRAM = typer.Argument(
    ..., help="The program as traced (geode.program.name): 'package.module:attribute' or a registered name."
)
_SINCE = typer.Option(None, "--since", help="Only runs of the last 30m, 1h, 7d...")
_WHERE = typer.Option(
    [], "--where", help="Root-span attribute filter key=value (repeatable); metadata.KEY looks in metadata."
)
_FAILURES = typer.Option(False, "--failures", help="Only failed runs (with --max-score: or low-scored).")
_MAX_SCORE = typer.Option(None, "--max-score", help="Only runs whose annotation score is at most this.")
_SESSION = typer.Option(None, "--session", help="Only runs of this session id.")
_ANNOTATION = typer.Option(
    [], "--annotation", help="Annotation name(s) that give the score and label (default: all)."
)
_PHOENIX_DATASET = typer.Option(
    None, "--phoenix-dataset", help="Also create this Phoenix dataset, its examples linked to their spans."
)
_WAIT_FOR = typer.Option(
    [], "--wait-for", help="Trace id of a run that just happened (repeatable): wait for exactly these."
)
_WAIT_TIMEOUT = typer.Option(60.0, "--wait-timeout", min=0.0, help="Deadline for --wait-for, seconds.")
_OUTPUTS_OPTION = typer.Option(
    "auto",
    "--outputs",
    help="Expected outputs: 'auto' (traced outputs of runs not known bad), 'traced' (all), 'none'.",
)
_KEEP_NEAR = typer.Option(False, "--keep-near-duplicates", help="Keep near-duplicate inputs.")
_LOCAL_FEEDBACK = typer.Option(
    True, "--local-feedback/--no-local-feedback", help="Also read labels from the local feedback log."
)
_LIMIT = typer.Option(None, "--limit", min=1, help="At most this many examples (newest runs).")
_JSON = typer.Option(False, "--json", help="Print the summary and health as JSON.")


def mine_command(
    program: str = _PROGRAM,
    out: Path = _OUT,
    source: str = SOURCE_OPTION,
    project: str | None = PROJECT_OPTION,
    since: str | None = _SINCE,
    where: list[str] = _WHERE,
    failures: bool = _FAILURES,
    max_score: float | None = _MAX_SCORE,
    session: str | None = _SESSION,
    annotation: list[str] = _ANNOTATION,
    per_predictor: Path | None = _PER_PREDICTOR,
    phoenix_dataset: str | None = _PHOENIX_DATASET,
    wait_for: list[str] = _WAIT_FOR,
    wait_timeout: float = _WAIT_TIMEOUT,
    outputs: str = _OUTPUTS_OPTION,
    keep_near: bool = _KEEP_NEAR,
    local_feedback: bool = _LOCAL_FEEDBACK,
    limit: int | None = _LIMIT,
    as_json: bool = _JSON,
) -> None:
    """Mine a program's traced runs into an eval dataset, with labels from annotations and feedback.

    Example: geode mine geode.examples.qa:program --source .geode/traces/spans.jsonl --out mined.jsonl
    """
    if outputs not in _OUTPUTS:
        raise InputError(f"bad --outputs {outputs!r}", hint="use auto, traced or none")
    settings = make_settings()
    options = MiningOptions(
        TraceFilter(session_id=session, start=datetime.now(UTC) - parse_since(since) if since else None),
        where=parse_where(where),
        failures=failures,
        max_score=max_score,
        annotation_names=annotation or None,
        annotations=feedback_annotations(settings) if local_feedback else (),
        wait_for=[normalize_trace_id(t) for t in wait_for] or None,
        wait_timeout_s=wait_timeout,
        outputs=cast(OutputPolicy, outputs),
        near_duplicates=not keep_near,
        limit=limit,
    )
    result, reader = _mine_source(settings, program_name(program), options, source, project, quiet=as_json)
    written = result.save(out, predictors_dir=per_predictor)
    link = None
    if phoenix_dataset:
        url = reader.url if isinstance(reader, PhoenixTraceSource) else _phoenix_url(settings)
        link = upload_to_phoenix(result.dataset, phoenix_dataset, url)
    if as_json:
        summary = {**result.summary(), "files": [str(p) for p in written], "health": result.health.to_dict()}
        if link is not None:
            summary["phoenix_dataset"] = link.__dict__
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print_result(result, written, link)


def _mine_source(
    settings: Settings, name: str, options: MiningOptions, source: str, project: str | None, *, quiet: bool
) -> tuple[MiningResult, TraceSource]:
    """Mine ``name``'s runs in the source with a progress bar (unless ``quiet``); the source is closed after."""
    console = make_console(stderr=True)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[spans]} spans, {task.fields[records]} examples"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=True,
    )
    ids = options.wait_for or ()
    task = progress.add_task("mining traces", total=len(ids) or None, spans=0, records=0)

    def on_progress(p: MiningProgress) -> None:
        progress.update(task, completed=p.traces, total=p.expected, spans=p.spans, records=p.records)

    with open_source(settings, source, project) as reader:
        with progress:
            require_one_program(reader, name, replace(options.traces, limit=options.limit))
            if ids:
                progress.update(task, description=f"waiting for {len(ids)} trace(s)")
            result = mine(reader, name, replace(options, progress=on_progress))
        # Explained while the source is open: the hint lists the programs that do have runs there.
        if not result.dataset.records:
            _explain_empty(result, reader, console)
    return result, reader


def _print_result(result: MiningResult, written: list[Path], link: PhoenixDatasetLink | None) -> None:
    stdout = make_console()
    stdout.print(f"source: {result.source_used}", highlight=False)
    print_table(stdout, _accounting_table(result))
    print_table(stdout, health_table(result.health))
    for warning in result.health.warnings:
        stdout.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    for path in written:
        stdout.print(f"wrote {path}", highlight=False)
    if link is not None:
        stdout.print(
            f"Phoenix dataset {link.name!r}: {link.examples} examples, {link.linked_spans} linked to their "
            f"spans: {link.url}",
            highlight=False,
        )


def _phoenix_url(settings: Settings) -> str:
    endpoint = phoenix_url(settings, True)
    if endpoint is None:
        raise InputError(
            "--phoenix-dataset needs a Phoenix, and none is running or configured",
            hint="start one with `geode phoenix`, or leave out --phoenix-dataset",
        )
    return phoenix_base_url(endpoint)


def _explain_empty(result: MiningResult, reader: TraceSource, console: Console) -> None:
    """Say why nothing was mined; a run filter that matched nothing is not an error, a typo may be."""
    if result.traces_read == 0 and not result.skipped:
        if not programs_with_runs(reader, TraceFilter(program=result.program, limit=1)):
            raise InputError(
                f"no runs of {result.program!r} in {reader.description}",
                hint=f"check the name, the project or --since; {no_runs_hint(reader)}",
            )
        # The program has runs; the filters (--failures, --since, --session) left none of them.
        console.print(
            f"[yellow]warning:[/yellow] {result.program!r} has runs there, but none matched the filters",
            highlight=False,
        )
        return
    console.print("[yellow]warning:[/yellow] no example passed; see the table for why", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``geode mine`` to the CLI."""
    app.command("mine")(mine_command)
