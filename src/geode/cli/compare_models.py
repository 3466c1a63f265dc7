"""``geode compare-models``: one program on several LMs: score, cost, latency and score per dollar."""

from __future__ import annotations

import contextlib
import sys
from contextlib import ExitStack
from pathlib import Path

import typer

from geode.cli._common import ALLOW_CACHE_OPTION, make_runtime
from geode.cli._console import make_console
from geode.cli._learning import (
    LABELLED_DATASET_OPTION,
    METRIC_OPTION,
    REPORT_DIR_OPTION,
    THREADS_OPTION,
    auto_budget,
    default_threads,
    headed_table,
    load_data,
    load_metric,
    optimizer_name,
    pricing_for,
    print_health,
    report_dir,
    say,
)
from geode.cli._tables import print_table
from geode.cli._text import terminal_json_text
from geode.errors import ConfigError
from geode.evals.dataset import MIN_HELDOUT, MIN_TRAIN
from geode.evals.model_selection import ModelRunner, compare_models
from geode.evals.report import models_table, write_models_report

__all__ = ["register"]


_PROGRAM = typer.Argument(..., help="'package.module:attribute', 'file.py:attribute' or a registered name.")
_MODELS = typer.Option(
    ..., "--models", help="Comma-separated LMs: 'local' and/or litellm strings (openai/gpt-4o-mini,...)."
)
_OPTIMIZER = typer.Option(
    None, "--optimizer", "-o", help="Also recompile for each model: bootstrap, mipro or gepa."
)
_AUTO = typer.Option("light", "--auto", help="MIPROv2 / GEPA budget.")
_HELDOUT = typer.Option(0.3, "--heldout", help="With --optimizer: share of the dataset held out.")
_SEED = typer.Option(0, "--seed", help="With --optimizer: split seed.")
_MIN_TRAIN = typer.Option(MIN_TRAIN, "--min-train", help="With --optimizer: fewest training examples.")
_MIN_HELDOUT = typer.Option(MIN_HELDOUT, "--min-heldout", help="With --optimizer: fewest held out.")
_JSON = typer.Option(False, "--json", help="Print the comparison as JSON.")


def compare_models_command(
    program: str = _PROGRAM,
    models: str = _MODELS,
    dataset: Path = LABELLED_DATASET_OPTION,
    metric: str = METRIC_OPTION,
    optimizer: str | None = _OPTIMIZER,
    auto: str = _AUTO,
    heldout: float = _HELDOUT,
    seed: int = _SEED,
    min_train: int = _MIN_TRAIN,
    min_heldout: int = _MIN_HELDOUT,
    threads: int | None = THREADS_OPTION,
    report: Path | None = REPORT_DIR_OPTION,
    as_json: bool = _JSON,
    allow_cache: bool = ALLOW_CACHE_OPTION,
) -> None:
    """Score a program on several models (optionally recompiled for each): a small model plus an optimizer vs a large one.

    Example: geode compare-models geode.examples.qa:program --models local,openai/gpt-4o-mini
    --dataset qa.jsonl --metric exact_match --optimizer bootstrap
    """
    names = _model_names(models)
    chosen = optimizer_name(optimizer) if optimizer is not None else None
    budget = auto_budget(auto)
    data = load_data(dataset)
    scorer = load_metric(metric)
    console = make_console(stderr=as_json)
    print_health(data.health(), console, compiling=optimizer is not None)
    data.require(1, purpose="compare models")
    if optimizer is not None:
        data.split(heldout_fraction=heldout, seed=seed).require(min_train=min_train, min_heldout=min_heldout)
    with ExitStack() as stack:
        runtimes = {
            name: stack.enter_context(make_runtime(lm=name, measure=True, allow_cache=allow_cache))
            for name in names
        }
        first = runtimes[names[0]]
        served = first.serve(program)
        runners = [
            ModelRunner(
                name=name, scope=rt.batch, pricing=pricing_for(rt), num_threads=default_threads(rt, threads)
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
            optimizer=chosen,
            auto=budget,
            heldout_fraction=heldout,
            seed=seed,
            min_train=min_train,
            min_heldout=min_heldout,
            show_progress=not as_json,
            log=say,
        )
        directory = report_dir(first.settings, "models", served.name, report)
        files = write_models_report(
            rows, directory, program=served.name, metric=rows[0].baseline.metric, dataset_id=data.id
        )
    if as_json:
        typer.echo(terminal_json_text(files.json.read_text(encoding="utf-8")))
        return
    headers, table_rows = models_table(rows)
    title = f"{served.name}: {rows[0].baseline.metric} per model"
    print_table(console, headed_table(title, headers, table_rows, left=("model", "program")))
    console.print(f"report: {files.html}", highlight=False)


def _model_names(models: str) -> list[str]:
    """``--models`` as a list: at least one, none twice."""
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise ConfigError("--models needs at least one model")
    if len(set(names)) != len(names):
        raise ConfigError("--models lists a model twice")
    return names


def register(app: typer.Typer) -> None:
    """Add ``geode compare-models`` to the CLI."""
    app.command("compare-models")(compare_models_command)
