"""``geode compare-models``: one program on several LMs: score, cost, latency and score per dollar."""

from __future__ import annotations

import contextlib
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import get_args

import typer
from rich.console import Console
from rich.table import Table

from geode.cli._common import make_runtime
from geode.cli._learning import (
    METRIC_HELP,
    default_threads,
    load_data,
    load_metric,
    pricing_for,
    print_health,
    report_dir,
    say,
)
from geode.errors import ConfigError
from geode.evals.compare import ModelRunner, compare_models
from geode.evals.compile import AutoBudget, OptimizerName
from geode.evals.dataset import MIN_HELDOUT, MIN_TRAIN
from geode.evals.report import models_table, write_models_report

__all__ = ["register"]

_DATASET = typer.Option(..., "--dataset", "-d", help="Labelled dataset (JSON Lines).")
_REPORT_DIR = typer.Option(
    None, "--report-dir", help="Where to write the report (default: under the Geode home)."
)


def compare_models_command(
    program: str = typer.Argument(
        ..., help="'package.module:attribute', 'file.py:attribute' or a registered name."
    ),
    models: str = typer.Option(
        ..., "--models", help="Comma-separated LMs: 'local' and/or litellm strings (openai/gpt-4o-mini,...)."
    ),
    dataset: Path = _DATASET,
    metric: str = typer.Option(..., "--metric", "-m", help=METRIC_HELP),
    optimizer: str | None = typer.Option(
        None, "--optimizer", "-o", help="Also recompile for each model: bootstrap, mipro or gepa."
    ),
    auto: str = typer.Option("light", "--auto", help="MIPROv2 / GEPA budget."),
    heldout: float = typer.Option(0.3, "--heldout", help="With --optimizer: share of the dataset held out."),
    seed: int = typer.Option(0, "--seed", help="With --optimizer: split seed."),
    min_train: int = typer.Option(
        MIN_TRAIN, "--min-train", help="With --optimizer: fewest training examples."
    ),
    min_heldout: int = typer.Option(MIN_HELDOUT, "--min-heldout", help="With --optimizer: fewest held out."),
    threads: int | None = typer.Option(
        None, "--threads", help="Parallel examples (default: 1 local, 4 remote)."
    ),
    report: Path | None = _REPORT_DIR,
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Score a program on several models (optionally recompiled for each): a small model plus an optimizer vs a large one.

    Example: geode compare-models geode.examples.qa:program --models local,openai/gpt-4o-mini
    --dataset qa.jsonl --metric exact_match --optimizer bootstrap
    """
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise ConfigError("--models needs at least one model")
    if len(set(names)) != len(names):
        raise ConfigError("--models lists a model twice")
    if optimizer is not None and optimizer not in get_args(OptimizerName):
        raise ConfigError(f"unknown optimizer {optimizer!r}", hint="choose bootstrap, mipro or gepa")
    if auto not in get_args(AutoBudget):
        raise ConfigError(f"unknown --auto budget {auto!r}", hint="choose light, medium or heavy")
    data = load_data(dataset)
    scorer = load_metric(metric)
    console = Console(stderr=as_json)
    print_health(data.health(), console)
    data.require(1, purpose="compare models")
    if optimizer is not None:
        data.split(heldout_fraction=heldout, seed=seed).require(min_train=min_train, min_heldout=min_heldout)
    with ExitStack() as stack:
        runtimes = {name: stack.enter_context(make_runtime(lm=name)) for name in names}
        first = runtimes[names[0]]
        served = first.serve(program)
        runners = [
            ModelRunner(
                name=name,
                scope=rt.batch,
                pricing=pricing_for(rt),
                num_threads=default_threads(rt, threads),
            )
            for name, rt in runtimes.items()
        ]
        # Optimizers print progress to stdout; keep stdout for results (--json).
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        rows = compare_models(
            served.module,
            data,
            scorer,
            runners,
            program_name=served.name,
            version=served.version,
            optimizer=optimizer,  # type: ignore[arg-type]  (checked above)
            auto=auto,  # type: ignore[arg-type]
            heldout_fraction=heldout,
            seed=seed,
            min_train=min_train,
            min_heldout=min_heldout,
            show_progress=not as_json,
            log=say,
        )
        files = write_models_report(
            rows,
            report_dir(first.settings, "models", served.name, report),
            program=served.name,
            metric=rows[0].baseline.metric,
            dataset_id=data.id,
        )
    if as_json:
        typer.echo(files.json.read_text(encoding="utf-8"))
        return
    headers, table_rows = models_table(rows)
    table = Table(title=f"{served.name}: {rows[0].baseline.metric} per model", title_justify="left")
    for header in headers:
        table.add_column(header, justify="left" if header in ("model", "program") else "right")
    for row in table_rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"report: {files.html}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``geode compare-models`` to the CLI."""
    app.command("compare-models")(compare_models_command)
