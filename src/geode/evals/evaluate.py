"""Evaluation: run a program over a dataset with ``dspy.Evaluate`` and measure score, latency and cost.

:func:`evaluate` runs in the caller's DSPy context (the runtime wraps it in ``rt.context()``, which
sets the LM and adapter; ``dspy.Evaluate``'s worker threads inherit it). Each example runs under its
own run identity, usage tracker and LM-call counter, so every example gets its own latency, LM calls,
tokens and cost, and its spans say which program version answered and which eval it belonged to.

An LM call DSPy answers from its response cache costs no tokens and no time: it is counted in
``cache_hits``, never in ``lm_calls`` (measuring commands turn the cache off; see ``--allow-cache``).
Examples without an expected output cannot be scored: they are left out (not run) and counted in
``unlabelled``.

A program error or a metric error on one example scores that example 0 and is recorded on it; it
never aborts the evaluation (unless ``max_errors`` is reached, after which the rest are skipped).

With ``phoenix_url`` the run is also logged to Phoenix as an experiment (dataset, one run per example,
one evaluation per run). Phoenix being down, missing or slow never fails the evaluation.

The parts, one module each: ``pricing`` (token prices), ``eval_results`` (what an evaluation produced),
``eval_runner`` (one example's measured run), ``eval_phoenix`` (the Phoenix experiment); this module
holds :class:`EvalOptions` and :func:`evaluate`, and re-exports the others' public names.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any, cast

import dspy

from geode.errors import DatasetError
from geode.evals.dataset import Dataset
from geode.evals.eval_phoenix import log_to_phoenix
from geode.evals.eval_results import EvalResult, ExampleResult, PhoenixLink, percentile
from geode.evals.eval_runner import _outputs_of, _Run
from geode.evals.metrics import FieldMetric, metric_name
from geode.evals.pricing import Price, Pricing
from geode.traces.context import RunIdentity
from geode.traces.vocab import GeodeAttributes

__all__ = [
    "EvalOptions",
    "EvalResult",
    "ExampleResult",
    "PhoenixLink",
    "Price",
    "Pricing",
    "evaluate",
    "log_to_phoenix",
    "percentile",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalOptions:
    """How :func:`evaluate` runs and records an evaluation (the Python API and ``geode eval`` share it).

    Example:
        >>> EvalOptions(program_name="qa", split="heldout", num_threads=2).split
        'heldout'
    """

    program_name: str | None = None
    """Name on the spans and in the result; default: the program's class name."""
    version: str | None = None
    """The program version being evaluated (stamped on spans)."""
    split: str = "all"
    """Which split the data is (``train``, ``heldout``, ``all``), for the record."""
    model: str | None = None
    """The LM's name, for the record; default: the context LM's ``model``."""
    num_threads: int = 1
    """Parallel examples (keep 1 for the embedded model: it runs one call at a time)."""
    pricing: Pricing | None = None
    """Token prices; default: litellm's list for ``provider/model`` names."""
    max_errors: int | None = None
    """After this many failed examples, skip the rest (default: never)."""
    show_progress: bool = False
    """Show a rich progress bar with the running score."""
    tracer: Any = None
    """An OpenTelemetry tracer for one span per example (its trace id is recorded and linked from
    Phoenix experiments). Default: none."""
    phoenix_url: str | None = None
    """Log the evaluation to this Phoenix as an experiment (best effort)."""
    experiment_name: str | None = None
    """The Phoenix experiment's name."""
    tags: Sequence[str] = ()
    """Tags on each example's run identity."""


def _progress(
    show: bool, total: int, description: str
) -> tuple[AbstractContextManager[Any], Callable[[float | None], None]]:
    if not show:
        return nullcontext(), lambda _score: None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # On stderr, so stdout keeps only results; and only on a terminal: elsewhere nothing redraws a bar,
    # and its last frame would be a line cut at 80 columns among the results.
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("score {task.fields[score]}"),
        TimeElapsedColumn(),
        transient=False,
        console=console,
        disable=not console.is_terminal,
    )
    task = progress.add_task(description, total=total, score="-")
    totals = {"sum": 0.0, "n": 0}
    lock = threading.Lock()

    def advance(score: float | None) -> None:
        with lock:
            totals["n"] += 1
            totals["sum"] += score or 0.0
            mean = totals["sum"] / totals["n"]
        progress.update(task, advance=1, score=f"{mean:.1%}")

    return progress, advance


def _labelled_only(dataset: Dataset, metric: Callable[..., Any]) -> tuple[Dataset, int]:
    """The records a label metric can score, and how many were left out for having no expected output.

    Only Geode's field metrics are known to need labels; a custom metric may judge without them, so
    it gets every record.

    Raises:
        DatasetError: No record has an expected output for the metric.
    """
    if not isinstance(metric, FieldMetric):
        return dataset, 0
    labelled = [r for r in dataset.records if metric.labelled(r.outputs)]
    missing = len(dataset.records) - len(labelled)
    if not missing:
        return dataset, 0
    if not labelled:
        where = f" {dataset.source!r}" if dataset.source else ""
        raise DatasetError(
            f"cannot evaluate: none of the {missing} records of the dataset{where} has an expected output "
            f"for {metric.name}",
            hint="fill in their outputs (geode mine keeps the traced outputs of runs not known to be bad)",
        )
    logger.info("%d record(s) without an expected output left out of the evaluation", missing)
    return dataset.with_records(labelled), missing


def evaluate(
    program: Callable[..., Any],
    data: Dataset | Sequence[dspy.Example],
    metric: Callable[..., Any],
    options: EvalOptions | None = None,
    *,
    program_name: str | None = None,
    version: str | None = None,
    split: str = "all",
    model: str | None = None,
    num_threads: int = 1,
    pricing: Pricing | None = None,
    max_errors: int | None = None,
    show_progress: bool = False,
    tracer: Any = None,
    phoenix_url: str | None = None,
    experiment_name: str | None = None,
    tags: Sequence[str] = (),
) -> EvalResult:
    """Evaluate ``program`` on ``data`` with ``metric`` through ``dspy.Evaluate``.

    Runs in the caller's DSPy context: wrap the call in ``rt.context()`` (or ``dspy.context(lm=...)``).
    Give either ``options`` or the keyword arguments, which build the same :class:`EvalOptions`.

    Args:
        program: A ``dspy.Module`` (or any callable taking the inputs as keywords).
        data: A :class:`Dataset` or ``dspy.Example`` objects with declared inputs.
        metric: ``metric(example, pred, trace=None)`` returning a number, a bool or
            ``dspy.Prediction(score=..., feedback=...)``.
        options: How to run and record it (each field is documented on :class:`EvalOptions`).
        program_name: Name on the spans and in the result; default: the program's class name.
        version: The program version being evaluated (stamped on spans).
        split: Which split ``data`` is (``train``, ``heldout``, ``all``), for the record.
        model: The LM's name, for the record; default: the context LM's ``model``.
        num_threads: Parallel examples (keep 1 for the embedded model: it runs one call at a time).
        pricing: Token prices; default: litellm's list for ``provider/model`` names.
        max_errors: After this many failed examples, skip the rest (default: never).
        show_progress: Show a rich progress bar with the running score.
        tracer: An OpenTelemetry tracer for one span per example. Default: none.
        phoenix_url: Log the evaluation to this Phoenix as an experiment (best effort).
        experiment_name: The Phoenix experiment's name.
        tags: Tags on each example's run identity.

    Returns:
        The :class:`EvalResult`, per-example results in dataset order.

    Raises:
        DatasetError: ``data`` is empty, or the metric needs labels and no record has any.
        TypeError: Both ``options`` and keyword arguments were given.
    """
    keywords = EvalOptions(
        program_name=program_name,
        version=version,
        split=split,
        model=model,
        num_threads=num_threads,
        pricing=pricing,
        max_errors=max_errors,
        show_progress=show_progress,
        tracer=tracer,
        phoenix_url=phoenix_url,
        experiment_name=experiment_name,
        tags=tags,
    )
    if options is not None and keywords != EvalOptions():
        raise TypeError("evaluate takes options or keyword arguments, not both")
    return _evaluate(program, data, metric, options or keywords)


def _evaluate(
    program: Callable[..., Any],
    data: Dataset | Sequence[dspy.Example],
    metric: Callable[..., Any],
    options: EvalOptions,
) -> EvalResult:
    dataset = data if isinstance(data, Dataset) else Dataset.from_examples(data)
    dataset.require(1, purpose="evaluate")
    source_id = dataset.id
    dataset, unlabelled = _labelled_only(dataset, metric)
    examples = dataset.examples()
    keys = [r.key for r in dataset.records]
    name = options.program_name or type(program).__name__
    identity = RunIdentity(
        program=name,
        version=options.version,
        metadata={GeodeAttributes.EVAL_DATASET_ID: source_id, "geode.eval.split": options.split},
        tags=("geode.eval", *options.tags),
    )
    progress_cm, advance = _progress(options.show_progress, len(examples), f"eval {name}")
    run = _Run(
        program=program,
        metric=metric,
        examples=examples,
        keys=keys,
        identity=identity,
        dataset_id=source_id,
        pricing=options.pricing or Pricing(),
        tracer=options.tracer,
        max_errors=options.max_errors,
        advance=advance,
    )
    evaluator = dspy.Evaluate(
        devset=examples,
        metric=run.score,
        num_threads=max(1, options.num_threads),
        display_progress=False,
        display_table=False,
        # Errors are caught per example and scored 0; dspy's own error budget must never cancel the run.
        max_errors=len(examples) + 1,
        provide_traceback=False,
    )
    started = _dt.datetime.now(_dt.UTC)
    t0 = time.perf_counter()
    with progress_cm:
        outcome = evaluator(cast(Any, run.run_program))
    duration = time.perf_counter() - t0
    result = _result(run, outcome.results, keys, options, name=name, dataset=dataset)
    result = replace(
        result,
        dataset_id=source_id,
        duration_s=duration,
        started_at=started.isoformat(timespec="seconds"),
        unlabelled=unlabelled,
    )
    if options.phoenix_url:
        link = log_to_phoenix(result, dataset, options.phoenix_url, experiment_name=options.experiment_name)
        if link is not None:
            result = replace(result, phoenix=link)
    return result


def _model_name(options: EvalOptions) -> str | None:
    if options.model is not None:
        return options.model
    lm = dspy.settings.lm
    return (str(getattr(lm, "model", "")) or None) if lm is not None else None


def _result(
    run: _Run,
    outcomes: Sequence[tuple[dspy.Example, Any, Any]],
    keys: Sequence[str],
    options: EvalOptions,
    *,
    name: str,
    dataset: Dataset,
) -> EvalResult:
    """The evaluation's result from the examples' records (its timing and dataset id set by the caller)."""
    per_example: list[ExampleResult] = []
    for i, (example, pred, score) in enumerate(outcomes):
        recorded = run.results.get(i)
        if recorded is None:  # dspy dropped it (cancelled); record that honestly
            recorded = ExampleResult(
                index=i,
                example_id=keys[i],
                inputs=dict(example.inputs().items()),
                expected={k: v for k, v in example.labels().items() if not k.startswith("geode_")},
                outputs=_outputs_of(pred),
                score=float(score or 0.0),
                latency_s=0.0,
                error="not run",
            )
        per_example.append(recorded)
    latencies = [e.latency_s for e in per_example if e.error is None or not e.error.startswith("skipped:")]
    costs = [e.cost_usd for e in per_example]
    return EvalResult(
        program=name,
        version=options.version,
        metric=metric_name(run.metric),
        dataset_id=dataset.id,
        dataset_name=dataset.name,
        split=options.split,
        model=_model_name(options),
        score=sum(e.score for e in per_example) / len(per_example),
        n=len(per_example),
        errors=run.errors,
        latency_p50_s=percentile(latencies, 50),
        latency_p95_s=percentile(latencies, 95),
        lm_calls=sum(e.lm_calls for e in per_example),
        prompt_tokens=sum(e.prompt_tokens for e in per_example),
        completion_tokens=sum(e.completion_tokens for e in per_example),
        cost_usd=None if any(c is None for c in costs) else float(sum(c for c in costs if c is not None)),
        duration_s=0.0,
        num_threads=max(1, options.num_threads),
        started_at="",
        examples=tuple(per_example),
        skipped=run.skipped,
        cache_hits=sum(e.cache_hits for e in per_example),
    )
