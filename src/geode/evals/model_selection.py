"""Model selection: the same program and data on several LMs, optionally recompiled for each.

This answers "a small model plus an optimizer, or a large model?" with numbers: score, cost,
latency and score per dollar per model, every model scored on the same examples. Each model runs
inside the context its :class:`ModelRunner` provides (the CLI builds one runtime per model), so this
module needs no runtime of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

import dspy

from geode.evals.compile import AutoBudget, CompileOptions, OptimizerName, compile_program
from geode.evals.dataset import MIN_HELDOUT, MIN_TRAIN, Dataset
from geode.evals.evaluate import EvalOptions, Pricing, evaluate
from geode.evals.report import ModelRow

__all__ = ["ModelRunner", "compare_models"]


@dataclass(frozen=True)
class ModelRunner:
    """How to run one candidate model."""

    name: str
    scope: Callable[[], AbstractContextManager[Any]]
    """A context in which DSPy calls use this model (e.g. ``runtime.batch``)."""
    pricing: Pricing = field(default_factory=Pricing)
    num_threads: int = 1


def compare_models(
    program: dspy.Module,
    dataset: Dataset,
    metric: Callable[..., Any],
    runners: Sequence[ModelRunner],
    *,
    program_name: str | None = None,
    version: str | None = None,
    optimizer: OptimizerName | None = None,
    auto: AutoBudget = "light",
    heldout_fraction: float = 0.3,
    seed: int = 0,
    min_train: int = MIN_TRAIN,
    min_heldout: int = MIN_HELDOUT,
    show_progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[ModelRow]:
    """Score ``program`` on every model; with ``optimizer``, also recompile it for each model.

    Without an optimizer every model is scored on the whole dataset. With one, each model compiles on
    the train split and both variants are scored on the held-out split (the same examples for all).

    Args:
        program: The program (not modified).
        dataset: Labelled examples.
        metric: A DSPy metric.
        runners: The models to compare.
        program_name: Name for spans and results.
        version: The program's version, stamped on spans.
        optimizer: Also recompile per model with this optimizer.
        auto: MIPROv2 / GEPA budget.
        heldout_fraction: With an optimizer, the share held out.
        seed: With an optimizer, the split seed.
        min_train: With an optimizer, refuse with fewer training examples.
        min_heldout: With an optimizer, refuse with fewer held-out examples.
        show_progress: Progress bars.
        log: Receives one-line progress messages.

    Raises:
        DatasetError: The dataset is empty, or too small to split when an optimizer is asked for.
    """
    say = log or (lambda _message: None)
    dataset.require(1, purpose="compare models")
    if optimizer is not None:
        dataset.split(heldout_fraction=heldout_fraction, seed=seed).require(
            min_train=min_train, min_heldout=min_heldout, purpose="compare compiled models"
        )
    evaluation = EvalOptions(program_name=program_name, show_progress=show_progress)
    rows: list[ModelRow] = []
    for runner in runners:
        with runner.scope():
            if optimizer is None:
                say(f"{runner.name}: scoring on {len(dataset)} examples")
                scored = replace(evaluation, version=version, tags=("compare-models",))
                rows.append(_score(program, dataset, metric, runner, scored))
            else:
                say(f"{runner.name}: compiling with {optimizer}")
                options = CompileOptions(
                    optimizer=optimizer,
                    auto=auto,
                    heldout_fraction=heldout_fraction,
                    seed=seed,
                    min_train=min_train,
                    min_heldout=min_heldout,
                    log=lambda message, name=runner.name: say(f"{name}: {message}"),
                    evaluation=evaluation,
                )
                rows.append(_compile(program, dataset, metric, runner, options))
    return rows


def _score(
    program: dspy.Module,
    dataset: Dataset,
    metric: Callable[..., Any],
    runner: ModelRunner,
    evaluation: EvalOptions,
) -> ModelRow:
    """The program scored on the whole dataset with the runner's model."""
    on_model = replace(evaluation, model=runner.name, num_threads=runner.num_threads, pricing=runner.pricing)
    return ModelRow(model=runner.name, baseline=evaluate(program, dataset, metric, on_model))


def _compile(
    program: dspy.Module,
    dataset: Dataset,
    metric: Callable[..., Any],
    runner: ModelRunner,
    options: CompileOptions,
) -> ModelRow:
    """The program recompiled for the runner's model, both variants scored on the held-out split."""
    evaluation = replace(options.evaluation, num_threads=runner.num_threads, pricing=runner.pricing)
    compiled = compile_program(program, dataset, metric, replace(options, evaluation=evaluation))
    return ModelRow(
        model=runner.name,
        baseline=compiled.baseline,
        candidate=compiled.candidate,
        optimizer=options.optimizer,
        compile_seconds=compiled.compile_seconds,
    )
