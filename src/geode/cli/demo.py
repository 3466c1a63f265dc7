"""``geode demo``: the whole learning loop, offline, on the bundled helpdesk application."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar

from geode.cli._common import make_settings
from geode.cli._console import make_console
from geode.cli._tables import print_table
from geode.demo.pipeline import run_demo
from geode.demo.report import by_hand_commands, summary_table, write_demo_report
from geode.demo.result import (
    DEFAULT_HELD_OUT,
    DEFAULT_QUESTIONS,
    DEFAULT_VALIDATION,
    QUICK,
    DemoOptions,
    DemoResult,
    Progress,
)

__all__ = ["ConsoleProgress", "demo", "register"]


class ConsoleProgress(Progress):
    """Stage headers, detail lines and progress bars on a rich console."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.started = time.monotonic()

    def stage(self, number: int, title: str) -> None:
        """A stage header with the time since the start."""
        elapsed = time.monotonic() - self.started
        self.console.print(f"\n[bold]{number}. {title}[/bold] [dim]({elapsed:.0f} s)[/dim]", highlight=False)

    def info(self, message: str) -> None:
        """A detail line."""
        self.console.print(f"   [dim]·[/dim] {message}", highlight=False)

    def warn(self, message: str) -> None:
        """A warning line."""
        self.console.print(f"   [yellow]warning:[/yellow] {message}", highlight=False)

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int, str], None]]:
        """A progress bar with a status text."""
        bar = RichBar(
            SpinnerColumn(),
            TextColumn("   {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        with bar:
            task = bar.add_task(description, total=total, status="")

            def update(done: int, status: str) -> None:
                bar.update(task, completed=done, status=status)

            yield update


_FRESH = typer.Option(False, "--fresh", help="Start over: drop the demo's collection, runs and versions.")
_QUICK = typer.Option(
    False,
    "--quick",
    help=f"A smaller run ({QUICK.questions} training, {QUICK.validation} validation, "
    f"{QUICK.held_out} held-out questions); the size options override it.",
)
_QUESTIONS = typer.Option(
    None,
    "--questions",
    "-n",
    min=2,
    help=f"Training questions the agent answers (traced). Default: {DEFAULT_QUESTIONS}.",
)
_HELD_OUT = typer.Option(
    None,
    "--held-out",
    min=1,
    help=f"Held-out questions every program is evaluated on. Default: {DEFAULT_HELD_OUT} (all).",
)
_VALIDATION = typer.Option(
    None,
    "--validation",
    min=1,
    help=f"Training questions the promotion gate decides on. Default: {DEFAULT_VALIDATION}.",
)
_LM = typer.Option(
    None,
    "--lm",
    help="Any litellm model (e.g. openai/gpt-4o-mini; needs its API key). Default: the embedded local model.",
)
_NO_PHOENIX = typer.Option(False, "--no-phoenix", help="Do not start Phoenix (spans still go to a file).")
_NO_DOCS = typer.Option(False, "--no-docs", help="Leave Geode's own docs out of the corpus.")
_FINETUNE = typer.Option(
    False, "--finetune", help="Also try a LoRA fine-tune of the embedded model (finetune extra; minutes)."
)
_JSON = typer.Option(
    False, "--json", help="Print the summary as one JSON document (progress goes to stderr)."
)


def demo(
    fresh: bool = _FRESH,
    quick: bool = _QUICK,
    questions: int | None = _QUESTIONS,
    held_out: int | None = _HELD_OUT,
    validation: int | None = _VALIDATION,
    lm: str | None = _LM,
    no_phoenix: bool = _NO_PHOENIX,
    no_docs: bool = _NO_DOCS,
    finetune: bool = _FINETUNE,
    as_json: bool = _JSON,
) -> None:
    """Run the whole loop offline: Phoenix, ingest, agent runs, mine, crystallize, recompile, evaluate, promote.

    Re-running reuses the store and Phoenix; --fresh starts over. Everything is kept under the Geode home
    (GEODE_HOME, default .geode). Example: geode demo --quick
    """
    # With --json, stdout carries the JSON document only; everything a person reads goes to stderr.
    console = make_console(stderr=as_json)
    settings = make_settings(lm=lm)
    sizes = QUICK if quick else DemoOptions()
    options = DemoOptions(
        questions=questions or sizes.questions,
        held_out=held_out or sizes.held_out,
        validation=validation or sizes.validation,
        fresh=fresh,
        phoenix=not no_phoenix,
        include_docs=not no_docs,
        finetune=finetune,
    )
    console.print(
        f"[bold]geode demo[/bold]: {options.questions} training, {options.validation} validation and "
        f"{options.held_out} held-out questions on {settings.lm.model} (home {settings.home})",
        highlight=False,
    )
    progress = ConsoleProgress(console)
    # The stages print their own progress; DSPy's per-evaluation INFO lines would interleave with it.
    logging.getLogger("dspy").setLevel(logging.WARNING)
    # The demo caps the embedded model's answers on purpose (a small model rambles until the cap), so
    # DSPy's "response was truncated" warning is expected here and only interrupts the progress bars.
    logging.getLogger("dspy.clients.lm").setLevel(logging.ERROR)
    # Libraries print to stdout too (DSPy's optimizers do); with --json only the document may go there.
    quiet = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    with quiet:
        result = run_demo(settings, options, progress=progress, write_report=write_demo_report)
    _print_result(console, result)
    if as_json:
        typer.echo(json.dumps(result.summary(), indent=2, default=str))


def _print_result(console: Console, result: DemoResult) -> None:
    """The summary table, what was skipped, where everything is, and the by-hand commands."""
    console.print()
    print_table(console, summary_table(result))  # never squeezed to 80 columns off a terminal
    if result.promotion:
        console.print(f"gate: {result.promotion}", highlight=False)
    for stage, why in result.skipped.items():
        console.print(f"[yellow]skipped {stage}:[/yellow] {why}", highlight=False)
    if result.phoenix is not None:
        console.print(f"Phoenix: {result.phoenix.url} (project geode-demo)", highlight=False)
    if result.report is not None:
        console.print(f"report:  {result.report}", highlight=False)
    console.print(f"run:     {result.run_dir}", highlight=False)
    console.print(f"took {result.total_seconds:.0f} s\n\n[bold]By hand[/bold]", highlight=False)
    for what, command in by_hand_commands(result):
        console.print(f"  [dim]# {what}[/dim]\n  {command}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``geode demo`` to the CLI."""
    app.command("demo")(demo)
