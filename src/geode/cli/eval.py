"""``geode eval``: score a program on a dataset with a metric."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from geode.cli._common import ALLOW_CACHE_OPTION, LM_OPTION, make_runtime
from geode.cli._console import make_console
from geode.cli._learning import (
    METRIC_OPTION,
    THREADS_OPTION,
    default_threads,
    eval_summary_table,
    examples_table,
    load_data,
    load_metric,
    measurement_notes,
    phoenix_url,
    pricing_for,
    print_health,
    say,
)
from geode.cli._tables import print_table
from geode.cli._text import terminal_json
from geode.errors import ConfigError
from geode.evals.dataset import Dataset
from geode.evals.evaluate import EvalOptions, EvalResult, evaluate
from geode.evals.metrics import metric_name

__all__ = ["register"]

_DATASET = typer.Option(..., "--dataset", "-d", help="Dataset file (JSON Lines, one example per line).")
_OUT = typer.Option(None, "--out", help="Also write the full result (every example) as JSON here.")


def eval_command(
    program: str = typer.Argument(
        ..., help="'package.module:attribute', 'file.py:attribute' or a registered name."
    ),
    dataset: Path = _DATASET,
    metric: str = METRIC_OPTION,
    split: str = typer.Option(
        "all", "--split", help="Score 'all' examples, or only the 'train' or 'heldout' split (see --heldout)."
    ),
    heldout: float = typer.Option(
        0.3, "--heldout", help="Held-out fraction used by --split (as geode compile)."
    ),
    seed: int = typer.Option(0, "--seed", help="Split seed (as geode compile)."),
    threads: int | None = THREADS_OPTION,
    max_errors: int | None = typer.Option(
        None, "--max-errors", help="Skip the rest after this many failures."
    ),
    phoenix: bool = typer.Option(
        True, "--phoenix/--no-phoenix", help="Log the run to Phoenix as an experiment when Phoenix is up."
    ),
    experiment: str | None = typer.Option(None, "--experiment", help="Phoenix experiment name."),
    out: Path | None = _OUT,
    show: int = typer.Option(10, "--show", help="Show this many of the lowest-scoring examples."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the result as JSON (summary; --out for examples)."
    ),
    lm: str | None = LM_OPTION,
    allow_cache: bool = ALLOW_CACHE_OPTION,
) -> None:
    """Score a program on a dataset: score, latency, LM calls, tokens and cost, per example and overall.

    The program's active registry version is the one scored. Example:
    geode eval geode.examples.qa:program --dataset qa.jsonl --metric exact_match
    """
    data = load_data(dataset)
    data.require(1, purpose="evaluate")
    scorer = load_metric(metric)
    data = _split_data(data, split, heldout, seed)
    console = make_console(stderr=as_json)
    with make_runtime(lm=lm, measure=True, allow_cache=allow_cache) as rt:
        served = rt.serve(program)
        if not as_json:
            print_health(data.health(), console)
        if served.problem:
            console.print(f"[yellow]warning:[/yellow] {served.problem}", highlight=False)
        say(
            f"scoring {served.name} ({served.version or 'base program'}) on {len(data)} examples with "
            f"{metric_name(scorer)} on {getattr(rt.lm, 'model', '?')}"
        )
        options = EvalOptions(
            program_name=served.name,
            version=served.version,
            split=split,
            num_threads=default_threads(rt, threads),
            pricing=pricing_for(rt),
            max_errors=max_errors,
            show_progress=not as_json,
            phoenix_url=phoenix_url(rt.settings, phoenix),
            experiment_name=experiment,
        )
        with rt.batch():
            result = evaluate(served.module, data, scorer, options)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if as_json:
        typer.echo(terminal_json(result.to_dict(examples=False), indent=2))
    else:
        _print_result(console, served.name, result, show=show, out=out)


def _split_data(data: Dataset, split: str, heldout: float, seed: int) -> Dataset:
    """The examples ``--split`` asks for (the split ``geode compile`` makes with the same seed)."""
    if split not in ("all", "train", "heldout"):
        raise ConfigError(f"--split must be all, train or heldout, got {split!r}")
    if split != "all":
        parts = data.split(heldout_fraction=heldout, seed=seed)
        data = parts.train if split == "train" else parts.heldout
        data.require(1, purpose=f"evaluate the {split} split")
    return data


def _print_result(console: Console, name: str, result: EvalResult, *, show: int, out: Path | None) -> None:
    print_table(
        console,
        eval_summary_table([(name, result)], f"{result.metric} on {result.dataset_id} ({result.split})"),
    )
    for note in measurement_notes([(name, result)]):
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    worst = examples_table(result, show) if show > 0 else None
    if worst is not None:
        print_table(console, worst)
    if result.phoenix is not None:
        console.print(f"Phoenix experiment: {result.phoenix.url}", highlight=False)
    if out is not None:
        console.print(f"wrote {out}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``geode eval`` to the CLI."""
    app.command("eval")(eval_command)
